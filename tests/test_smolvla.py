"""SmolVLA (lerobot's smolvla): residual sites of layers that never run, inert sites, steering three ways, strict loading."""

import shutil
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import nnsight_vla
from nnsight_vla import Add, CheckpointError, Clamp, InertSiteWarning, InputError, Observation, Site, collect
from nnsight_vla_lerobot.smolvla import VLM_DIR

from conftest import random_image

pytestmark = pytest.mark.xdist_group("smolvla")  # one worker builds the module's fixtures

NEURONS, VALUE = [3, 17], 5.0
ALL = {"calls": "all", "positions": "all"}  # every forward, whole sequences


def intervention(model, tower: str, layer: int, kind: str):
    """A clamp of two neurons, or a shift of the residual stream along its first axis."""
    if kind == "neurons":
        return Clamp([(layer, n) for n in NEURONS], VALUE, tower=tower)
    return Add(torch.eye(model.towers()[tower].d_model)[0], layer, alpha=VALUE, tower=tower)


def smol_obs(seed: int = 0) -> Observation:
    images = {"image": random_image(seed, 64), "image2": random_image(seed + 100, 64)}
    return Observation(images, "pick up the black bowl", state=np.linspace(-1, 1, 8) * (seed + 1) / 4)


@pytest.fixture(scope="module")
def smol():
    return nnsight_vla.load("tiny-smolvla")


def _parts(model, tower: str, layer: int) -> dict:
    """Per call, copies of a layer's input (the previous residual), o_proj's and mlp's outputs
    as they are made (lerobot adds into both in place afterwards), by plain torch hooks."""
    block = model.towers()[tower].layers._module[layer]
    got = {"h": [], "o": [], "m": []}
    hooks = [
        block.input_layernorm.register_forward_pre_hook(lambda mod, args: got["h"].append(args[0].clone())),
        block.self_attn.o_proj.register_forward_hook(lambda mod, args, out: got["o"].append(out.clone())),
        block.mlp.register_forward_hook(lambda mod, args, out: got["m"].append(out.clone())),
    ]
    return got, hooks


@pytest.mark.parametrize("tower, layer", [("vlm", 1), ("expert", 1), ("expert", 2)])
def test_the_residual_after_a_layer_is_its_input_plus_attention_plus_mlp(smol, tower, layer):
    """Layers never run as modules: the residual site is the next layer's input-norm input, and
    equals lerobot's own sum h + o_proj + mlp of the layer, bit for bit, on every call."""
    got, hooks = _parts(smol, tower, layer)
    try:
        acts = collect(smol, smol_obs(), Site(layer, "resid", tower), seed=0, **ALL)[Site(layer, "resid", tower)]
    finally:
        for hook in hooks:
            hook.remove()
    want = torch.stack([m + (o + h) for h, o, m in zip(got["h"], got["o"], got["m"])], dim=1)
    assert acts.shape[1] == (1 if tower == "vlm" else smol.policy_config.num_steps)
    assert torch.equal(acts, want)
    mlp_out = collect(smol, smol_obs(), Site(layer, "mlp_out", tower), seed=0, **ALL)[Site(layer, "mlp_out", tower)]
    assert torch.equal(mlp_out, torch.stack(got["m"], dim=1))  # read as made, not after the in-place sum


@pytest.mark.parametrize("tower", ["vlm", "expert"])
def test_writing_a_residual_reaches_the_next_layers_residual_sum(smol, tower):
    """The write is in place: the next layer adds to the written residual, not only its norm reads it."""
    site = Site(1, "resid", tower)
    clean = collect(smol, smol_obs(), site, seed=0, **ALL)[site]
    with smol.steer(intervention(smol, tower, 1, "resid")):
        got, hooks = _parts(smol, tower, 2)  # after the steering hooks: they see the written residual
        try:
            acts = collect(smol, smol_obs(), [site, Site(2, "resid", tower)], seed=0, **ALL)
        finally:
            for hook in hooks:
                hook.remove()
    first, second = acts[site], acts[Site(2, "resid", tower)]
    x, ref = first[:, 0], clean[:, 0]  # the first call (the expert's later steps start elsewhere)
    assert torch.equal(x[..., 0], ref[..., 0] + VALUE) and torch.equal(x[..., 1:], ref[..., 1:])
    assert torch.equal(torch.stack(got["h"], dim=1), first)
    assert torch.equal(second, torch.stack([m + (o + h) for h, o, m in zip(got["h"], got["o"], got["m"])], dim=1))


@pytest.mark.parametrize("tower, layer, kind", [("vlm", 1, "neurons"), ("expert", 2, "neurons"), ("vlm", 1, "resid"),
                                                ("expert", 1, "resid")])
def test_steering_through_nnsight_steer_and_a_torch_hook_is_bit_equal(smol, tower, layer, kind):
    obs = smol_obs(1)
    clean = smol.predict_action(obs, seed=0)
    clamp = intervention(smol, tower, layer, kind)
    with smol.predict_action(obs, seed=0) as tracer:
        for step in tracer.iter[:smol.policy_config.num_steps]:
            clamp.apply(smol, step)
        traced = tracer.result.save()
    with smol.steer(clamp):
        steered = smol.predict_action(obs, seed=0)

    blocks = smol.towers()[tower].layers._module
    if kind == "neurons":
        module = blocks[layer].mlp.down_proj

        def hook(mod, args):
            x = args[0].clone()
            x[..., NEURONS] = VALUE
            return (x,)
    else:  # the residual: what the next layer adds to, changed where its input norm reads it
        module = blocks[layer + 1].input_layernorm

        def hook(mod, args):
            args[0][..., 0] += VALUE

    handle = module.register_forward_pre_hook(hook)
    try:
        hooked = smol.predict_action(obs, seed=0)
    finally:
        handle.remove()
    np.testing.assert_array_equal(np.asarray(traced), steered)
    np.testing.assert_array_equal(steered, hooked)
    assert not np.array_equal(steered, clean)
    np.testing.assert_array_equal(smol.predict_action(obs, seed=0), clean)  # nothing left behind


@pytest.mark.parametrize("kind", ["neurons", "resid"])
def test_inert_sites_change_actions_by_exactly_zero_and_warn(smol, kind):
    """The expert reads the VLM's keys and values: the last VLM layer's MLP and residual are inert."""
    obs, last = smol_obs(2), smol.towers()["vlm"].n_layers - 1
    clean = smol.predict_action(obs, seed=0)
    inert = intervention(smol, "vlm", last, kind)
    with pytest.warns(InertSiteWarning):
        with smol.predict_action(obs, seed=0):
            inert.apply(smol, 0)
    with pytest.warns(InertSiteWarning), smol.steer(inert):
        np.testing.assert_array_equal(smol.predict_action(obs, seed=0), clean)
    live = intervention(smol, "vlm", last - 1, kind)  # one layer earlier: its keys and values are read
    with warnings.catch_warnings():
        warnings.simplefilter("error", InertSiteWarning)
        with smol.steer(live):
            assert not np.array_equal(smol.predict_action(obs, seed=0), clean)


def test_modules_that_never_run_are_named_errors(smol):
    for envoy in (smol.lm_head, smol.layers[0], smol.expert.layers[1], smol.layers[0].self_attn):
        with pytest.raises(InputError, match="never runs"):
            with smol.predict_action(smol_obs()):
                envoy.output.save()


def test_denoising_steps_are_the_expert_calls(smol):
    site = Site(0, "neurons", "expert")
    for steps in (None, 3):
        acts = collect(smol, smol_obs(), site, seed=0, **ALL, **({} if steps is None else {"num_steps": steps}))[site]
        assert acts.shape[1] == (steps or smol.policy_config.num_steps)
    assert smol.action_calls("expert") == range(10) and smol.action_calls("vlm") is None
    assert smol.policy_config.num_steps == 10  # the option did not stick


def test_seeded_and_raw_lerobot_observations(smol):
    obs = smol_obs(3)
    a = smol.predict_action(obs, seed=4)
    np.testing.assert_array_equal(a, smol.predict_action(obs, seed=4))
    assert not np.array_equal(a, smol.predict_action(obs, seed=5))
    raw = {f"observation.images.{c}": torch.from_numpy(img).permute(2, 0, 1).float() / 255
           for c, img in obs.images.items()}
    raw |= {"observation.state": torch.from_numpy(obs.state).float(), "task": obs.instruction}
    np.testing.assert_array_equal(smol.predict_action(raw, seed=4), a)


def test_saved_checkpoint_reloads_identically_and_a_missing_weight_is_refused(smol, tmp_path):
    folder = smol.save_pretrained(tmp_path / "ckpt")
    assert (folder / VLM_DIR / "config.json").is_file()
    loaded = nnsight_vla.load(folder)
    assert type(loaded).__name__ == "SmolVLA" and loaded.towers()["expert"].d_model == 48
    obs = smol_obs(2)
    np.testing.assert_array_equal(loaded.predict_action(obs, seed=0), smol.predict_action(obs, seed=0))
    tensors = load_file(folder / "model.safetensors")
    del tensors[next(k for k in tensors if "lm_expert.layers.1.self_attn.k_proj" in k)]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="k_proj"):
        nnsight_vla.load(folder)


def test_a_checkpoint_without_its_vlm_config_names_the_fix(smol, tmp_path):
    folder = smol.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(folder / VLM_DIR)
    with pytest.raises(CheckpointError, match="VLM config"):
        nnsight_vla.load(folder, dispatch=False)


def test_sizes_for_a_type_that_cannot_resize_name_the_fix(smol, tmp_path):
    """SmolVLA has no `_resize` hook: a checkpoint claiming resized sizes is refused, not built at
    lerobot's sizes and loaded with mismatched weights."""
    folder = smol.save_pretrained(tmp_path / "ckpt")
    (folder / "nnsight_vla.json").write_text('{"sizes": {"vlm": {"width": 8}}}')
    with pytest.raises(CheckpointError, match=r"SmolVLA cannot resize; remove the checkpoint's nnsight_vla.json"):
        nnsight_vla.load(folder, dispatch=False)


@pytest.mark.slow
def test_two_step_libero_episode_writes_metrics(smol, tmp_path):
    from nnsight_vla.eval import evaluate

    result = evaluate(smol, "libero_spatial", [0], episodes=1, steering=Clamp([(1, 3)], 4.0, tower="expert"),
                      controls=("baseline",), max_steps=2, camera_size=64, out_dir=tmp_path)
    assert [r["condition"] for r in result.episodes] == ["baseline", "steered"]
    assert all(r["length"] == 2 and len(r["actions"]) == 2 for r in result.episodes)
    assert {"episodes.jsonl", "summary.json", "statistics.json"} <= {p.name for p in tmp_path.iterdir()}
