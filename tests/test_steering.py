"""Interventions against ground truth: plain torch hooks and the activations each call records."""

import numpy as np
import pytest
import torch

import nnsight_vla
from nnsight_vla import InputError, LayerIndexError, NeuronCluster
from nnsight_vla.steering import (
    Ablate, Add, Clamp, Scale, apply, hook_points, load_direction, mean_activations, mean_difference,
    save_direction, unit,
)

from conftest import random_image
from test_pi0 import pi_obs

pytestmark = pytest.mark.xdist_group("steering")  # one worker builds the module's fixtures

CLUSTER = NeuronCluster([(1, 3), (1, 17), (0, 42)])


@pytest.fixture(scope="module")
def pi0():
    return nnsight_vla.load("tiny-pi0")


def _clamp_hooks(modules_neurons, value):
    handles = []
    for module, neurons in modules_neurons:
        def hook(mod, args, neurons=neurons):
            x = args[0].clone()
            x[..., neurons] = value
            return (x,)
        handles.append(module.register_forward_pre_hook(hook))
    return handles


def _with_handles(handles, run):
    try:
        return run()
    finally:
        for h in handles:
            h.remove()


def _record(module):
    """Record the input each call of ``module`` receives (registered after any steering hook)."""
    seen = []
    handle = module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen, handle


def test_clamp_equals_a_plain_hook_openvla(tiny, obs):
    base = tiny.predict_action(obs)
    layers = tiny._module.language_model.model.layers
    reference = _with_handles(
        _clamp_hooks([(layers[1].mlp.down_proj, [3, 17]), (layers[0].mlp.down_proj, [42])], 6.0),
        lambda: tiny.predict_action(obs),
    )
    with tiny.steer(nnsight_vla.Clamp(CLUSTER, 6.0)):
        steered = tiny.predict_action(obs)
    with tiny.predict_action(obs) as tracer:
        for step in tracer.iter[:7]:
            nnsight_vla.Clamp(CLUSTER, 6.0).apply(tiny, step)
        traced = tracer.result.save()
    np.testing.assert_array_equal(steered, reference)
    np.testing.assert_array_equal(traced, reference)
    assert np.abs(steered - base).max() > 0.05
    np.testing.assert_array_equal(tiny.predict_action(obs), base)


def test_clamp_equals_a_plain_hook_pi0(pi0):
    obs = pi_obs(0)
    base = pi0.predict_action(obs)
    vlm = [(0, 5), (1, 9)]
    expert = [(1, 3), (2, 7)]
    interventions = [Clamp(vlm, 5.0), Clamp(expert, 4.0, tower="expert")]
    pwe = pi0._module.model.paligemma_with_expert
    handles = _clamp_hooks(
        [(pwe.paligemma.model.language_model.layers[0].mlp.down_proj, [5]),
         (pwe.paligemma.model.language_model.layers[1].mlp.down_proj, [9])], 5.0
    ) + _clamp_hooks(
        [(pwe.gemma_expert.model.layers[1].mlp.down_proj, [3]),
         (pwe.gemma_expert.model.layers[2].mlp.down_proj, [7])], 4.0
    )
    reference = _with_handles(handles, lambda: pi0.predict_action(obs))
    with pi0.steer(interventions):
        steered = pi0.predict_action(obs)
    with pi0.predict_action(obs) as tracer:
        for step in tracer.iter[:10]:
            apply(pi0, interventions, step)
        traced = tracer.result.save()
    np.testing.assert_array_equal(steered, reference)
    np.testing.assert_array_equal(traced, reference)
    assert np.abs(steered - base).max() > 1e-3


def test_calls_prefill_touches_only_the_first_forward(tiny, obs):
    site = tiny._module.language_model.model.layers[1].mlp.down_proj
    with tiny.steer(Clamp([(1, 3)], 6.0, calls="prefill")):
        seen, handle = _record(site)
        _with_handles([handle], lambda: tiny.predict_action(obs))
    assert len(seen) == 7
    assert (seen[0][..., 3] == 6.0).all()
    assert all((x[..., 3] != 6.0).all() for x in seen[1:])


def test_positions(tiny, obs):
    site = tiny._module.language_model.model.layers[1].mlp.down_proj
    for positions, check in [
        ("last", lambda x: (x[:, -1, 3] == 6.0).all() and (x[:, :-1, 3] != 6.0).all()),
        ([0, 2], lambda x: (x[:, [0, 2], 3] == 6.0).all() and (x[:, 1, 3] != 6.0).all()),
    ]:
        with tiny.steer(Clamp([(1, 3)], 6.0, positions=positions, calls="prefill")):
            seen, handle = _record(site)
            _with_handles([handle], lambda: tiny.predict_action(obs))
        assert check(seen[0]), positions
    with tiny.steer(Clamp([(1, 3)], 6.0, positions="prefix")):
        seen, handle = _record(site)
        _with_handles([handle], lambda: tiny.predict_action(obs))
    assert (seen[0][..., 3] == 6.0).all() and all((x[..., 3] != 6.0).all() for x in seen[1:])


def test_steps_and_tower_on_pi0(pi0):
    obs = pi_obs(0)
    expert_site = pi0._module.model.paligemma_with_expert.gemma_expert.model.layers[1].mlp.down_proj
    vlm_site = pi0._module.model.paligemma_with_expert.paligemma.model.language_model.layers[1].mlp.down_proj
    with pi0.steer(Clamp([(1, 3)], 4.0, tower="expert", steps=[0, 2])):
        seen, h1 = _record(expert_site)
        vlm_seen, h2 = _record(vlm_site)
        _with_handles([h1, h2], lambda: pi0.predict_action(obs))
    assert len(seen) == 10
    assert [bool((x[..., 3] == 4.0).all()) for x in seen] == [i in (0, 2) for i in range(10)]
    assert len(vlm_seen) == 1 and not (vlm_seen[0][..., 3] == 4.0).any()


def test_nothing_remains_after_steer_even_on_exceptions(tiny, obs):
    base = tiny.predict_action(obs)
    modules = list(tiny._module.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with tiny.steer([Clamp(CLUSTER, 9.0), Add(torch.ones(64), layer=0, alpha=3.0)]):
            assert not np.array_equal(tiny.predict_action(obs), base)
            raise RuntimeError("boom")
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in modules)
    np.testing.assert_array_equal(tiny.predict_action(obs), base)


def test_scale_and_mean_ablation_by_hand(tiny, obs, obs_long):
    site = tiny._module.language_model.model.layers[1].mlp.down_proj
    seen, handle = _record(site)
    _with_handles([handle], lambda: tiny.predict_action(obs))
    clean = seen[0]
    with tiny.steer(Scale([(1, 3), (1, 17)], 2.5, calls="prefill")):
        seen, handle = _record(site)
        _with_handles([handle], lambda: tiny.predict_action(obs))
    torch.testing.assert_close(seen[0][..., [3, 17]], 2.5 * clean[..., [3, 17]])
    torch.testing.assert_close(seen[0][..., 4], clean[..., 4])

    means = mean_activations(tiny, [obs, obs_long], [1])[1]
    by_hand = []
    for o in (obs, obs_long):
        with tiny.trace(o):
            by_hand.append(tiny.layers[1].mlp.down_proj.input.mean(dim=(0, 1)).save())
    torch.testing.assert_close(means, (by_hand[0] + by_hand[1]).detach() / 2)
    with tiny.steer(Ablate([(1, 3)], "mean", reference=[obs, obs_long], calls="prefill")):
        seen, handle = _record(site)
        _with_handles([handle], lambda: tiny.predict_action(obs))
    torch.testing.assert_close(seen[0][..., 3], torch.full_like(seen[0][..., 3], float(means[3])))
    with tiny.steer(Ablate([(1, 3)], calls="prefill")):
        seen, handle = _record(site)
        _with_handles([handle], lambda: tiny.predict_action(obs))
    assert (seen[0][..., 3] == 0).all()


def test_add_direction_and_mean_difference(tiny, obs, obs_long, tmp_path):
    direction = mean_difference(tiny, [obs], [obs_long], layer=0)
    with tiny.trace(obs):
        a = tiny.layers[0].output[:, -1].save()
    with tiny.trace(obs_long):
        b = tiny.layers[0].output[:, -1].save()
    torch.testing.assert_close(direction, (a - b)[0].detach())
    path = save_direction(tmp_path / "d.safetensors", unit(direction), layer=0, tower="vlm")
    loaded, meta = load_direction(path)
    torch.testing.assert_close(loaded, unit(direction)) and None
    assert meta == {"layer": 0, "tower": "vlm"} and float(loaded.norm()) == pytest.approx(1.0)
    with tiny.trace(obs):
        Add(loaded, layer=0, alpha=3.0).apply(tiny)
        shifted = tiny.layers[0].output[:, -1].save()
    torch.testing.assert_close(shifted, a + 3.0 * loaded)


def test_transformer_lens_hook_points(tiny):
    pairs = hook_points(tiny, [Clamp([(1, 3)], 6.0, calls="prefill"), Add(torch.ones(64), layer=0, alpha=2.0)])
    names = [name for name, _ in pairs]
    assert names == ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]
    fn = dict(pairs)["blocks.1.mlp.hook_post"]
    x = torch.zeros(1, 5, 256)
    assert (fn(x, None)[..., 3] == 6.0).all() and not (fn(x, None)[..., 3] == 6.0).any()  # call 0, then 1
    torch.testing.assert_close(dict(pairs)["blocks.0.hook_resid_post"](torch.zeros(1, 2, 64), None), torch.full((1, 2, 64), 2.0))


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: Clamp([(1, 256)], 1.0), InputError, r"neurons \[256\] of layer 1 are out of range.*d_mlp=256"),
        (lambda: Clamp([(2, 0)], 1.0), LayerIndexError, "layer 2 is out of range"),
        (lambda: Add(torch.ones(63), layer=0), InputError, "direction has width 63.*width 64"),
        (lambda: Clamp([(0, 1)], 1.0, positions="middle"), InputError, r"positions='middle' is not one of"),
        (lambda: Clamp([], 1.0), InputError, "the cluster is empty"),
        (lambda: Clamp([(0, 1)], 1.0, steps=[1]), InputError, "steps= selects denoising steps"),
        (lambda: Clamp([(0, 1)], 1.0, tower="expert"), InputError, "has no tower 'expert'"),
        (lambda: Ablate([(0, 1)], "mean"), InputError, "needs reference= observations"),
    ],
)
def test_bad_inputs(tiny, obs, make, error, message):
    with pytest.raises(error, match=message):
        with tiny.steer(make()):
            tiny.predict_action(obs)


def test_pi0_expert_has_no_prefill(pi0):
    with pytest.raises(InputError, match="no prefill call"):
        with pi0.steer(Clamp([(0, 1)], 1.0, tower="expert", calls="prefill")):
            pass


def test_random_like_matches_per_layer_counts_and_excludes_the_cluster():
    cluster = NeuronCluster([(0, 1), (0, 2), (3, 7)], name="up", d_mlp=10)
    control = cluster.random_like(seed=4)
    assert {k: len(v) for k, v in control.by_layer().items()} == {0: 2, 3: 1}
    assert not set(control) & set(cluster)
    assert control == cluster.random_like(seed=4) and control != cluster.random_like(seed=5)
    with pytest.raises(InputError, match="d_mlp="):
        NeuronCluster([(0, 1)]).random_like(0)
    with pytest.raises(InputError, match="too few are left"):
        NeuronCluster([(0, n) for n in range(6)], d_mlp=10).random_like(0)


def test_steering_an_inert_site_warns_and_changes_nothing(pi0):
    obs = pi_obs(0)
    base = pi0.predict_action(obs)
    with pytest.warns(nnsight_vla.InertSiteWarning):
        with pi0.steer([Clamp([(2, 0), (2, 5)], 4.0), Add(torch.ones(64), layer=2, alpha=3.0)]):
            steered = pi0.predict_action(obs)
    np.testing.assert_array_equal(steered, base)


def test_open_loop_table_scores_a_shift_against_its_random_controls(tmp_path):
    """Hand-computed: baseline z 0; the steering moves z by +0.5; three controls by 0, 0.1, 0.2."""
    from nnsight_vla.steering import OpenLoopResult

    base = np.zeros((2, 7))

    def moved(dz):
        out = base.copy()
        out[:, 2] = dz
        return out

    actions = {"baseline": base, "up": moved(0.5), "up/random0": moved(0.0), "up/random1": moved(0.1),
               "up/random2": moved(0.2)}
    result = OpenLoopResult(actions, ["up"], 3)
    row = next(r for r in result.table() if r["measure"] == "dz")
    assert row["shift"] == 0.5 and abs(row["random_mean"] - 0.1) < 1e-12 and abs(row["random_std"] - 0.1) < 1e-12
    assert abs(row["z"] - 4.0) < 1e-9
    speed = next(r for r in result.table() if r["measure"] == "speed")
    assert speed["shift"] == 0.5
    assert result.save(tmp_path).read_text().splitlines()[0].startswith("steering,measure,shift")
