"""X-VLA (lerobot's xvla): steering both towers, the tied-embedding lens, denoising steps, seeds, strict loading."""

import re

import nnsight
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import nnsight_vla
from nnsight_vla import CheckpointError, Clamp, InputError, Observation, Site, collect
from nnsight_vla.lens import logit_lens, project_value_vectors
from nnsight_vla_lerobot.xvla import EMBED, SHARED

from conftest import random_image

pytestmark = pytest.mark.xdist_group("xvla")  # one worker builds the module's fixtures

NEURONS, VALUE = [3, 17], 5.0
#: Per tower: the FFN output projection of layer 1 (its input: the neurons a clamp sets).
FFN_OUT = {"vlm": lambda m: m.layers[1].fc2, "expert": lambda m: m.expert.blocks[1].mlp.fc2}


def xvla_obs(seed: int = 0, task: str = "pick up the black bowl") -> Observation:
    images = {"image": random_image(seed, 64), "image2": random_image(seed + 100, 64)}
    return Observation(images, task, state=np.linspace(-1, 1, 8) * (seed + 1) / 4)


@pytest.fixture(scope="module")
def xvla():
    return nnsight_vla.load("tiny-xvla")


def test_spec_names_and_the_tied_vocabulary(xvla):
    spec, policy = xvla.spec, xvla._module
    assert (spec.n_layers, spec.d_model, spec.d_mlp, spec.vocab_size) == (2, 32, 64, 1024)
    assert (spec.action_dim, spec.chunk_size, spec.extra["num_denoising_steps"]) == (7, 10, 4)
    assert {n: (t.n_layers, t.d_mlp, xvla.schedule()[n].runs) for n, t in xvla.towers().items()} == {
        "vlm": (2, 64, 1), "expert": (2, 128, None)}
    lm = policy.model.vlm.language_model
    assert xvla.lm_head._module.weight is lm.shared.weight  # the tied embedding is the vocabulary
    assert isinstance(xvla.ln_final._module, torch.nn.Identity)  # BART is post-LN: no final norm
    assert not any("final_logits_bias" in k for k in policy.state_dict())  # lerobot builds no generation head
    assert len(xvla.tokenizer) == 1024 and xvla.tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == [
        "<s>", "<pad>", "</s>", "<unk>"]
    with pytest.raises(InputError, match="never runs"):
        with xvla.predict_action(xvla_obs()):
            xvla.lm_head.output.save()
    with pytest.raises(InputError, match="no TransformerLens part 'vlm'"):
        xvla.bridge_inputs("vlm", [xvla_obs()])  # no Florence-2 adapter under transformer-lens 3.5
    from nnsight_vla.transformer_lens import to_bridge

    with pytest.raises(InputError, match=r"\('tiny-xvla'\) has no TransformerLens bridge: no adapter maps its "
                                         r"architecture yet\. Trace it with nnsight instead"):
        to_bridge(xvla)


def test_the_layout_check_reads_the_ffn_output_projection_through_the_block_map():
    from dataclasses import replace

    from nnsight_vla import StandardNameError
    from nnsight_vla_lerobot.xvla import XVLA, XVLA_KIND

    vlm = XVLA_KIND.layout.towers[0]
    wrong = replace(vlm, block={**vlm.block, "mlp.out": "activation_fn"})  # no Linear
    kind = replace(XVLA_KIND, layout=replace(XVLA_KIND.layout, towers=(wrong, *XVLA_KIND.layout.towers[1:])))

    class Broken(XVLA):
        kinds = {"xvla": kind}

    with pytest.raises(StandardNameError, match=r"layers\[i\]\.activation_fn of tower 'vlm' should be one Linear"):
        Broken("tiny-xvla", dispatch=True)


def test_which_names_fire_per_prediction(xvla):
    names = {"vision": xvla.vision, "projector": xvla.projector, "layers[0]": xvla.layers[0],
             "layers[0].fc2": xvla.layers[0].fc2, "expert.blocks[0]": xvla.expert.blocks[0],
             "action_in_proj": xvla.action_in_proj, "action_out_proj": xvla.action_out_proj,
             "vlm_proj": xvla.vlm_proj, "aux_visual_proj": xvla.aux_visual_proj,
             "shared": xvla._module.model.vlm.language_model.shared, "ln_final": xvla.ln_final,
             "lm_head": xvla.lm_head}
    counts = dict.fromkeys(names, 0)
    handles = [getattr(e, "_module", e).register_forward_hook(lambda *a, n=n: counts.__setitem__(n, counts[n] + 1))
               for n, e in names.items()]
    try:
        xvla.predict_action(xvla_obs())
    finally:
        for handle in handles:
            handle.remove()
    assert counts == {"vision": 1, "projector": 1, "layers[0]": 1, "layers[0].fc2": 1, "expert.blocks[0]": 4,
                      "action_in_proj": 4, "action_out_proj": 4, "vlm_proj": 4, "aux_visual_proj": 4,
                      "shared": 1, "ln_final": 0, "lm_head": 0}


@pytest.mark.parametrize("tower", ["vlm", "expert"])
def test_steering_in_a_trace_with_steer_and_as_a_torch_hook_is_bit_equal(xvla, tower):
    obs = xvla_obs(1)
    clamp = Clamp([(1, n) for n in NEURONS], VALUE, tower=tower)
    with xvla.predict_action(obs) as tracer:
        for step in tracer.iter[:4]:
            clamp.apply(xvla, step)
        traced = tracer.result.save()
    with xvla.steer(clamp):
        steered = xvla.predict_action(obs)

    def hook(module, args):
        x = args[0].clone()
        x[..., NEURONS] = VALUE
        return (x,)

    handle = FFN_OUT[tower](xvla)._module.register_forward_pre_hook(hook)
    try:
        hooked = xvla.predict_action(obs)
    finally:
        handle.remove()
    np.testing.assert_array_equal(np.asarray(traced), steered)
    np.testing.assert_array_equal(steered, hooked)
    assert not np.array_equal(steered, xvla.predict_action(obs))


def test_steering_chosen_denoising_steps_equals_a_hook_on_those_calls(xvla):
    obs, seen = xvla_obs(7), [0]

    def hook(module, args):
        seen[0] += 1
        if seen[0] - 1 != 2:
            return None
        x = args[0].clone()
        x[..., NEURONS] = VALUE
        return (x,)

    handle = FFN_OUT["expert"](xvla)._module.register_forward_pre_hook(hook)
    try:
        hooked = xvla.predict_action(obs)
    finally:
        handle.remove()
    with xvla.steer(Clamp([(1, n) for n in NEURONS], VALUE, tower="expert", steps=(2,))):
        steered = xvla.predict_action(obs)
    np.testing.assert_array_equal(steered, hooked)
    assert seen[0] == 4 and not np.array_equal(steered, xvla.predict_action(obs))


def test_lens_labels_a_planted_value_vector_with_its_token(xvla):
    target = xvla.tokenizer.convert_tokens_to_ids("▁bowl")
    weight = xvla.layers[1].fc2._module.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[:, 7] = 50.0 * xvla.lm_head._module.weight[target]
        table = project_value_vectors(xvla, top_k=5, progress=False)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert table.top_ids(1, 7)[0] == target and table.top_tokens(1, 7)[0] == " bowl"
    assert table.action_token_ids is None  # X-VLA emits no tokens


def test_logit_lens_is_the_last_residual_times_the_embedding(xvla):
    obs, seen = xvla_obs(2), []
    handle = xvla.layers[-1]._module.register_forward_hook(lambda m, a, out: seen.append(out[:, -1].clone()))
    try:
        xvla.predict_action(obs)
    finally:
        handle.remove()
    by_hand = (seen[0] @ xvla.lm_head._module.weight.detach().T)[0]
    lens = logit_lens(xvla, obs)
    assert lens.rows == ["position -1"] and lens.layers == (0, 1)
    torch.testing.assert_close(lens.logits[0, 1], by_hand, rtol=1e-5, atol=1e-5)
    assert lens.top_tokens(layer=1)[0][0] == lens.vocab[int(by_hand.argmax())]
    unnormed = logit_lens(xvla, obs, norm=False).logits  # the final norm is the identity
    torch.testing.assert_close(unnormed, lens.logits, rtol=0, atol=0)


def test_the_action_head_runs_once_per_denoising_step(xvla):
    obs = xvla_obs()
    assert xvla.action_calls("expert") == range(4) and xvla.action_calls("vlm") is None
    sites = [Site(0, "resid", "vlm"), Site(0, "resid", "expert")]
    for steps, want in ((None, [1, 4]), (2, [1, 2])):
        acts = collect(xvla, obs, sites, calls="all", positions="last", num_steps=steps)
        assert [acts[s].shape[1] for s in sites] == want
    with xvla.predict_action(obs) as tracer:  # each step's chunk, as the head's output projection gives it
        chunks = nnsight.save([])
        for step in tracer.iter[:4]:
            chunks.append(xvla.action_out_proj.output.clone())
    assert [tuple(c.shape) for c in chunks] == [(1, 10, 20)] * 4  # max_action_dim; the first 7 are actions
    assert not torch.equal(chunks[0], chunks[-1])


def test_seeds_and_denoising_steps(xvla):
    obs = xvla_obs(3)
    a = xvla.predict_action(obs, seed=3)
    assert a.shape == (10, 7)
    np.testing.assert_array_equal(a, xvla.predict_action(obs, seed=3))
    assert not np.allclose(a, xvla.predict_action(obs, seed=4))
    np.testing.assert_array_equal(xvla.predict_action(obs), xvla.predict_action(obs, seed=0))
    assert not np.allclose(xvla.predict_action(obs, num_steps=2), xvla.predict_action(obs))
    with pytest.raises(InputError, match="no option 'temperature'"):
        xvla.predict_action(obs, temperature=1.0)


def test_lerobot_and_raw_libero_observations(xvla):
    obs = xvla_obs(4)
    batch = {f"observation.images.{c}": torch.from_numpy(img).permute(2, 0, 1).float() / 255
             for c, img in obs.images.items()}
    state = torch.from_numpy(np.asarray(obs.state, np.float32))
    batch |= {"observation.state": state, "task": obs.instruction}
    np.testing.assert_array_equal(xvla.predict_action(batch), xvla.predict_action(obs))
    robot = {"eef": {"pos": np.array([0.1, -0.2, 0.3]), "quat": np.array([0.0, 0.0, 0.0, 1.0])},
             "gripper": {"qpos": np.array([0.04, -0.04])}}
    raw = {"pixels": dict(obs.images), "robot_state": robot, "task": obs.instruction}
    by_hand = Observation({c: img[::-1, ::-1] for c, img in obs.images.items()}, obs.instruction,
                          state=[0.1, -0.2, 0.3, 0.0, 0.0, 0.0, 0.04, -0.04])
    np.testing.assert_allclose(xvla.predict_action(raw), xvla.predict_action(by_hand), atol=1e-6)


def test_saved_checkpoint_reloads_identically_and_a_missing_weight_is_refused(xvla, tmp_path):
    folder = xvla.save_pretrained(tmp_path / "ckpt")
    tensors = load_file(folder / "model.safetensors")
    assert (SHARED in tensors) != (EMBED in tensors)  # safetensors keeps one name of the tied matrix
    loaded = nnsight_vla.load(folder)
    obs = xvla_obs(5)
    np.testing.assert_array_equal(loaded.predict_action(obs), xvla.predict_action(obs))
    lm = loaded._module.model.vlm.language_model
    torch.testing.assert_close(lm.encoder.embed_tokens.weight, lm.shared.weight, rtol=0, atol=0)
    assert loaded.policy_config.florence_config["text_config"]["encoder_layers"] == 2
    key = "model.vlm.language_model.encoder.layers.1.fc2.weight"
    del tensors[key]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"1 missing: \['{re.escape(key)}'\]"):
        nnsight_vla.load(folder)


def test_old_vendored_florence_keys_and_a_missing_tokenizer(xvla, tmp_path):
    """Checkpoints saved with lerobot's former vendored Florence-2 keys load through lerobot's
    remap (language model under ``.model.``, the projection a transposed parameter, the
    generation bias dropped); a checkpoint without tokenizer files, offline, names the fix."""
    folder = xvla.save_pretrained(tmp_path / "ckpt")
    tensors, vendored = load_file(folder / "model.safetensors"), {}
    for key, value in tensors.items():
        if key == "model.vlm.multi_modal_projector.image_projection.weight":
            vendored["model.vlm.image_projection"] = value.T.contiguous()
        else:
            vendored[key.replace("model.vlm.language_model.", "model.vlm.language_model.model.")] = value
    vendored["model.vlm.language_model.final_logits_bias"] = torch.zeros(1, 1024)
    save_file(vendored, folder / "model.safetensors")
    obs = xvla_obs(6)
    np.testing.assert_array_equal(nnsight_vla.load(folder).predict_action(obs), xvla.predict_action(obs))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="facebook/bart-large.*Save the BART tokenizer"):
        nnsight_vla.load(folder, dispatch=False)


@pytest.mark.slow
def test_two_step_libero_episode_writes_metrics(xvla, tmp_path):
    from nnsight_vla.eval import evaluate

    result = evaluate(xvla, "libero_spatial", [0], episodes=1, steering=Clamp([(1, 3)], 4.0, tower="expert"),
                      controls=("baseline",), max_steps=2, camera_size=64, out_dir=tmp_path)
    assert [r["condition"] for r in result.episodes] == ["baseline", "steered"]
    assert all(r["length"] == 2 and len(r["actions"]) == 2 for r in result.episodes)
    assert {"episodes.jsonl", "summary.json", "statistics.json"} <= {p.name for p in tmp_path.iterdir()}
