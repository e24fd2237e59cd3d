"""tiny-pi0 / tiny-pi05 (lerobot's policies at small widths) under nnsight."""

import json
import shutil
import subprocess
import sys
import warnings

import nnsight
import numpy as np
import pytest
import torch

import nnsight_vla
from nnsight_vla import CheckpointError, InertSiteWarning, InputError, Observation
from nnsight_vla_lerobot import sizing
from nnsight_vla_lerobot.pi0 import KINDS as VARIANTS, TINY_SIZES, resize_paligemma

from conftest import random_image

pytestmark = pytest.mark.xdist_group("pi0")  # one worker builds the module's fixtures

NEURONS, VALUE = [0, 5, 9, 17], 5.0


def pi_obs(seed: int, instruction: str = "pick up the black bowl") -> Observation:
    images = {"image": random_image(seed, 64), "image2": random_image(seed + 100, 64)}
    return Observation(images, instruction, state=np.linspace(-1, 1, 8) * (seed + 1) / 4)


@pytest.fixture(scope="module")
def pi0():
    return nnsight_vla.load("tiny-pi0")


@pytest.fixture(scope="module")
def pi05():
    return nnsight_vla.load("tiny-pi05")


@pytest.fixture(scope="module")
def obs():
    return pi_obs(0)


def test_spec_describes_both_towers_and_inputs(pi0):
    spec = pi0.spec
    assert (spec.family, spec.n_layers, spec.d_model, spec.d_mlp) == ("pi0", 3, 64, 128)
    expert = pi0.towers()["expert"]
    assert (expert.n_layers, expert.d_model, expert.d_mlp) == (3, 32, 64)
    assert spec.camera_names == ("image", "image2") and spec.state_dim == 8
    assert (spec.action_dim, spec.chunk_size, spec.action_token_ids) == (7, 10, None)
    assert spec.extra["num_inference_steps"] == 10


@pytest.mark.parametrize("name, extra", [("pi0", {"state_proj": "state_proj"}), ("pi05", {})])
def test_standard_names_alias_lerobot_modules(name, extra, request):
    model = request.getfixturevalue(name)
    pwe = model._module.model.paligemma_with_expert
    checks = {
        "vision": pwe.paligemma.model.vision_tower,
        "projector": pwe.paligemma.model.multi_modal_projector,
        "ln_final": pwe.paligemma.model.language_model.norm,
        "lm_head": pwe.paligemma.lm_head,
        "expert": pwe.gemma_expert.model,
        "action_in_proj": model._module.model.action_in_proj,
        "action_out_proj": model._module.model.action_out_proj,
        "time_mlp_in": getattr(model._module.model, "action_time_mlp_in" if name == "pi0" else "time_mlp_in"),
        **{k: getattr(model._module.model, v) for k, v in extra.items()},
    }
    for standard, module in checks.items():
        assert getattr(model, standard)._module is module, standard
    for i in range(3):
        assert model.layers[i]._module is pwe.paligemma.model.language_model.layers[i]
        assert model.expert.layers[i].mlp.down_proj._module is pwe.gemma_expert.model.layers[i].mlp.down_proj
    with pytest.raises(nnsight_vla.LayerIndexError):
        model.expert.layers[3]


def test_seeded_determinism(pi0, obs):
    a = pi0.predict_action(obs, seed=3)
    assert a.shape == (10, 7)
    np.testing.assert_array_equal(a, pi0.predict_action(obs, seed=3))
    assert not np.allclose(a, pi0.predict_action(obs, seed=4))
    np.testing.assert_array_equal(pi0.predict_action(obs), pi0.predict_action(obs, seed=0))


def test_iteration_walks_the_denoising_steps(pi0, obs):
    with pi0.predict_action(obs) as tracer:
        velocities = nnsight.save([])
        for step in tracer.iter[:]:
            velocities.append(pi0.action_out_proj.output.clone())
    assert len(velocities) == pi0.spec.extra["num_inference_steps"] == 10
    assert velocities[0].shape == (1, 10, 32)  # chunk x max_action_dim
    with pi0.predict_action(obs, num_steps=4) as tracer:
        count = nnsight.save([])
        for step in tracer.iter[:]:
            count.append(pi0.expert.layers[0].mlp.down_proj.input.shape)
    assert len(count) == 4


def _hook(module, calls=None):
    """The paper's clamp as a plain torch forward-pre-hook (on chosen calls only)."""
    seen = [0]

    def hook(mod, args):
        call = seen[0]
        seen[0] += 1
        if calls is not None and call not in calls:
            return None
        x = args[0].clone()
        x[..., NEURONS] = VALUE
        return (x,)

    return module.register_forward_pre_hook(hook)


def _run_with_hook(model, module, obs, calls=None):
    handle = _hook(module, calls)
    try:
        return model.predict_action(obs)
    finally:
        handle.remove()


def test_vlm_steering_equals_a_torch_hook(pi0, obs):
    base = pi0.predict_action(obs)
    with pi0.predict_action(obs) as tracer:
        pi0.layers[0].mlp.down_proj.input[..., NEURONS] = VALUE  # the VLM runs once (step 0)
        steered = tracer.result.save()
    reference = _run_with_hook(pi0, pi0.layers[0].mlp.down_proj._module, obs)
    np.testing.assert_array_equal(steered, reference)
    assert np.abs(steered - base).max() > 1e-3
    np.testing.assert_array_equal(pi0.predict_action(obs), base)


def test_expert_steering_on_all_and_on_chosen_steps(pi0, obs):
    base = pi0.predict_action(obs)
    site = pi0.expert.layers[1].mlp.down_proj
    with pi0.predict_action(obs) as tracer:
        for step in tracer.iter[:10]:
            site.input[..., NEURONS] = VALUE
        every = tracer.result.save()
    np.testing.assert_array_equal(every, _run_with_hook(pi0, site._module, obs))
    assert np.abs(every - base).max() > 1e-3
    with pi0.predict_action(obs) as tracer:
        for step in tracer.iter[[0, 3]]:
            site.input[..., NEURONS] = VALUE
        chosen = tracer.result.save()
    np.testing.assert_array_equal(chosen, _run_with_hook(pi0, site._module, obs, calls={0, 3}))
    assert not np.array_equal(chosen, every) and not np.array_equal(chosen, base)


def test_last_vlm_layer_cannot_change_actions_and_warns(pi0, obs):
    base = pi0.predict_action(obs)
    with pytest.warns(InertSiteWarning, match="cannot change the predicted actions"):
        with pi0.predict_action(obs) as tracer:
            pi0.layers[-1].mlp.down_proj.input[..., NEURONS] = VALUE
            steered = tracer.result.save()
    np.testing.assert_array_equal(steered, base)  # exactly zero change
    np.testing.assert_array_equal(_run_with_hook(pi0, pi0.layers[-1].mlp.down_proj._module, obs), base)
    with pytest.warns(InertSiteWarning):
        with pi0.predict_action(obs):
            pi0.ln_final.output.save()
    with warnings.catch_warnings():
        warnings.simplefilter("error", InertSiteWarning)
        with pi0.predict_action(obs):  # the last layer's keys/values do reach the expert
            pi0.layers[-1].self_attn.k_proj.output.save()


def _fired(model, run):
    """How often each standard module runs during ``run()`` (plain torch hooks)."""
    sites = {
        "vision": model.vision, "projector": model.projector, "layers[0]": model.layers[0],
        "layers[0].mlp": model.layers[0].mlp, "ln_final": model.ln_final, "lm_head": model.lm_head,
        "expert.layers[0]": model.expert.layers[0], "expert.layers[0].mlp": model.expert.layers[0].mlp,
        "action_in_proj": model.action_in_proj, "action_out_proj": model.action_out_proj,
        "time_mlp_in": model.time_mlp_in, "state_proj": model.state_proj,
    }
    counts = dict.fromkeys(sites, 0)
    handles = [
        envoy._module.register_forward_hook(lambda *a, name=name: counts.__setitem__(name, counts[name] + 1))
        for name, envoy in sites.items()
    ]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return counts


def test_which_names_fire_in_inference_and_training(pi0, obs):
    inference = _fired(pi0, lambda: pi0.predict_action(obs))
    assert inference == {
        "vision": 2, "projector": 2, "layers[0]": 1, "layers[0].mlp": 1, "ln_final": 1, "lm_head": 0,
        "expert.layers[0]": 10, "expert.layers[0].mlp": 10, "action_in_proj": 10,
        "action_out_proj": 10, "time_mlp_in": 10, "state_proj": 10,
    }
    batch = pi0._inputs([obs])
    batch["action"] = torch.zeros(1, 10, 7)
    training = _fired(pi0, lambda: pi0._module.forward(batch))
    # lerobot's training forward runs both towers layer by layer in one function that calls
    # the attention projections and the MLP directly: decoder layers never fire as modules.
    assert training == {
        "vision": 2, "projector": 2, "layers[0]": 0, "layers[0].mlp": 1, "ln_final": 1, "lm_head": 0,
        "expert.layers[0]": 0, "expert.layers[0].mlp": 1, "action_in_proj": 1,
        "action_out_proj": 1, "time_mlp_in": 1, "state_proj": 1,
    }


def test_invokes_batch_and_equal_separate_runs(pi0, obs):
    other = pi_obs(1, "open the top drawer of the cabinet")
    with pi0.trace() as tracer:
        with tracer.invoke(obs):
            first = pi0.action_out_proj.output.save()
        with tracer.invoke(other):
            second = pi0.action_out_proj.output.save()
    for o, batched in ((obs, first), (other, second)):
        with pi0.trace(o):
            alone = pi0.action_out_proj.output.save()
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    both = pi0.predict_action([obs, other])
    assert both.shape == (2, 10, 7)
    np.testing.assert_allclose(both[0], pi0.predict_action(obs), atol=1e-5)
    np.testing.assert_allclose(both[1], pi0.predict_action(other), atol=1e-5)


def test_lerobot_observation_dicts(pi0, obs):
    batch = {
        f"observation.images.{c}": torch.from_numpy(obs.images[c]).permute(2, 0, 1).float() / 255
        for c in ("image", "image2")
    }
    batch |= {"observation.state": torch.from_numpy(obs.state), "task": obs.instruction}
    np.testing.assert_array_equal(pi0.predict_action(batch), pi0.predict_action(obs))


def test_raw_libero_observations(pi0):
    """A LIBERO env observation goes through lerobot's own conversion (180-degree rotation,
    eef position + axis-angle + gripper joints as the state)."""
    rng = np.random.default_rng(3)
    pixels = {c: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for c in ("image", "image2")}
    robot = {"eef": {"pos": np.array([0.1, -0.2, 0.3]), "quat": np.array([0.0, 0.0, 0.0, 1.0])},
             "gripper": {"qpos": np.array([0.04, -0.04])}}
    raw = {"pixels": pixels, "robot_state": robot, "task": "pick up the black bowl"}
    by_hand = Observation({c: img[::-1, ::-1] for c, img in pixels.items()}, "pick up the black bowl",
                          state=[0.1, -0.2, 0.3, 0.0, 0.0, 0.0, 0.04, -0.04])
    np.testing.assert_allclose(pi0.predict_action(raw), pi0.predict_action(by_hand), atol=1e-6)
    with pytest.raises(InputError, match="needs its 'task'"):
        pi0.predict_action({"pixels": pixels, "robot_state": robot})


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Observation({"image": random_image(0, 64)}, "go", state=np.zeros(8)), r"missing \['image2'\]"),
        (lambda: Observation({"image": random_image(0, 64), "image2": random_image(1, 64), "wrist": random_image(2, 64)}, "go", state=np.zeros(8)), r"unexpected \['wrist'\]"),
        (lambda: Observation({"image": random_image(0, 64), "image2": random_image(1, 64)}, "go", state=np.zeros(6)), r"state of shape \(8,\), got \(6,\)"),
        (lambda: Observation({"image": random_image(0, 64), "image2": random_image(1, 64)}, "go"), r"state of shape \(8,\), got None"),
    ],
)
def test_bad_inputs(pi0, make, message):
    with pytest.raises(InputError, match=message):
        pi0.predict_action(make())


def test_wrong_image_shape_is_refused():
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        Observation({"image": np.zeros((64, 64, 4), np.uint8)}, "go")


def test_sizes_do_not_leak_into_lerobot():
    variant = VARIANTS["pi0"]
    original = variant.modeling.get_gemma_config, variant.modeling.PaliGemmaForConditionalGenerationWithPiGemma
    with pytest.raises(RuntimeError):
        with sizing.replaced(variant.modeling, resize_paligemma(variant.modeling, TINY_SIZES)):
            assert variant.modeling.get_gemma_config("gemma_2b").width == 64
            raise RuntimeError("boom")
    assert (variant.modeling.get_gemma_config, variant.modeling.PaliGemmaForConditionalGenerationWithPiGemma) == original
    assert variant.modeling.get_gemma_config("gemma_2b").width == 2048


@pytest.fixture(scope="module")
def saved_pi0(pi0, tmp_path_factory):
    return pi0.save_pretrained(tmp_path_factory.mktemp("pi0") / "tiny-pi0")


@pytest.mark.slow  # a fresh Python process (imports torch and lerobot): `make test`
def test_save_and_load_in_a_fresh_process(pi0, saved_pi0, obs, tmp_path):
    files = {p.name for p in saved_pi0.iterdir()}
    assert {"config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"} <= files
    assert json.loads((saved_pi0 / "config.json").read_text())["type"] == "pi0"
    np.save(tmp_path / "obs.npy", {"images": obs.images, "state": obs.state}, allow_pickle=True)
    script = (
        "import numpy as np, nnsight_vla\n"
        f"d = np.load({str(tmp_path / 'obs.npy')!r}, allow_pickle=True).item()\n"
        f"m = nnsight_vla.load({str(saved_pi0)!r})\n"
        f"a = m.predict_action(nnsight_vla.Observation(d['images'], {obs.instruction!r}, d['state']))\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, a)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={**__import__("os").environ})
    # identical weights; the float kernels may round differently on freshly loaded memory
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), pi0.predict_action(obs), atol=1e-6)
    loaded = nnsight_vla.load(saved_pi0)
    for key, value in pi0._module.state_dict().items():
        assert torch.equal(value, loaded._module.state_dict()[key]), key


def test_checkpoint_without_weights_is_refused(saved_pi0, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(saved_pi0, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="found no weights"):
        nnsight_vla.load(folder)


def test_checkpoint_with_a_missing_weight_is_refused(saved_pi0, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    shutil.copytree(saved_pi0, folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.action_out_proj.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing: \['model.action_out_proj.weight'\]"):
        nnsight_vla.load(folder)


def test_unused_expert_head_may_be_absent(saved_pi0, tmp_path, obs, pi0):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    shutil.copytree(saved_pi0, folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.paligemma_with_expert.gemma_expert.lm_head.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.warns(UserWarning, match="never used and is set to zeros"):
        model = nnsight_vla.load(folder)
    np.testing.assert_allclose(model.predict_action(obs), pi0.predict_action(obs), atol=1e-6)


def test_missing_tokenizer_offline_says_what_to_provide(saved_pi0, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(saved_pi0, folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(CheckpointError, match="Save the PaliGemma tokenizer into the checkpoint"):
        nnsight_vla.load(folder)


def test_pi05_predicts_and_steers_like_a_hook(pi05, obs):
    a = pi05.predict_action(obs, seed=1)
    assert a.shape == (10, 7)
    np.testing.assert_array_equal(a, pi05.predict_action(obs, seed=1))
    site = pi05.expert.layers[0].mlp.down_proj
    with pi05.predict_action(obs, seed=1) as tracer:
        for step in tracer.iter[:10]:
            site.input[..., NEURONS] = VALUE
        steered = tracer.result.save()
    handle = _hook(site._module)
    try:
        reference = pi05.predict_action(obs, seed=1)
    finally:
        handle.remove()
    np.testing.assert_array_equal(steered, reference)
    assert np.abs(steered - a).max() > 1e-3
