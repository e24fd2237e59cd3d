"""Pi0-FAST (lerobot's pi0_fast): the tiny policy acts as taught, FAST token ids and labels, the lens on a
planted neuron, prefill steering, strict loading, the fallback made visible, the shipped fit checked."""

import shutil
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import nnsight_vla
from nnsight_vla import CheckpointError, Clamp, InputError, Observation, SetupError
from nnsight_vla import cache
from nnsight_vla.lens import project_value_vectors, rewired_fraction, rewired_mask
from nnsight_vla_lerobot import fast_fit, fast_task
from nnsight_vla_lerobot.pi0_fast import ACTION_TOKENIZER_DIR, FastDecodingWarning

from conftest import random_image

pytestmark = pytest.mark.xdist_group("pi0_fast")  # one worker builds the module's fixtures

NEURONS, VALUE = [3, 17], 5.0


def fast_obs(seed: int = 0) -> Observation:
    images = {"image": random_image(seed, 64), "image2": random_image(seed + 100, 64)}
    return Observation(images, "pick up the black bowl", state=np.linspace(-1, 1, 8) * (seed + 1) / 4)


@pytest.fixture(scope="module")
def fast():
    return nnsight_vla.load("tiny-pi0_fast")


def acted(model, observations):
    """Actions of observations the tiny policy was taught: no decoding fallback allowed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastDecodingWarning)
        return np.asarray(model.predict_action(observations))


def test_it_emits_the_chunks_it_was_taught(fast):
    """Fresh observations of all 27 level triples: each gets its chunk (up to FAST's rounding)."""
    pairs = fast_task.samples(1, seed=(7,))
    got = acted(fast, [obs for obs, _ in pairs])
    want = np.stack([fast_task.actions(obs) for obs, _ in pairs])
    assert got.shape == (27, 10, 7) and np.abs(got - want).max() < 0.01
    assert len({a.tobytes() for a in got.round(3)}) == 27  # 27 different chunks


def test_image_instruction_and_state_each_change_the_actions(fast):
    """From a dark image, the first instruction and a low state, changing one of them moves
    only its own axis (x, y, z) by the taught amount."""
    rng = np.random.default_rng(3)
    base = fast_task.observation(rng, 0, 0, 0)
    bright = Observation({**base.images, "image": fast_task.observation(rng, 2, 0, 0).images["image"]},
                         base.instruction, base.state)
    other = Observation(base.images, fast_task.INSTRUCTIONS[1], base.state)
    state = base.state.copy()
    state[0] = fast_task.observation(rng, 0, 0, 2).state[0]
    high = Observation(base.images, base.instruction, state)
    actions = acted(fast, [base, bright, other, high])
    step = fast_task.TINY_STATS["action"]["std"].numpy()  # one level: 0.5 normalised
    for moved, axis in zip(actions[1:], range(3)):
        delta = (moved - actions[0]).mean(0)
        expected = np.zeros(7)
        expected[axis] = (2 if axis != 1 else 1) * 0.5 * step[axis]
        np.testing.assert_allclose(delta, expected, atol=0.01)


def test_a_strong_clamp_of_layer_0_changes_the_actions(fast):
    obs = fast_task.observation(np.random.default_rng(4), 1, 2, 1)
    base = acted(fast, obs)
    clamp = Clamp([(0, n) for n in range(8)], 50.0)
    with warnings.catch_warnings():  # what the clamped model emits need not be a FAST sequence
        warnings.simplefilter("ignore", FastDecodingWarning)
        with fast.steer(clamp):
            steered = np.asarray(fast.predict_action(obs))
        with fast.predict_action(obs) as tracer:
            for step in tracer.iter[:fast.policy_config.max_decoding_steps]:
                clamp.apply(fast, step)
            traced = tracer.result.save()
    assert np.abs(steered - base).max() > 0.05
    np.testing.assert_array_equal(np.asarray(traced), steered)


def test_fast_token_ids_follow_lerobots_mapping_and_are_labelled(fast):
    ids = fast.spec.action_token_ids
    vocab, skip = fast.tokenizer.vocab_size, fast.policy_config.fast_skip_tokens
    assert vocab == 257152 and ids == range(vocab - skip - 1024, vocab - skip)
    to_fast = fast._module._paligemma_tokens_to_act_tokens  # lerobot's own inverse mapping
    assert [int(to_fast(torch.tensor(i))) for i in (ids.stop - 1, ids.start)] == [0, 1023]
    plain = fast.tokenizer.convert_ids_to_tokens([5])[0]
    assert fast.token_strings([ids.stop - 1, ids.stop - 18, ids.start, 5]) == ["[FAST 0]", "[FAST 17]", "[FAST 1023]", plain]


def test_lens_labels_a_planted_value_vector_as_its_fast_token(fast):
    model = nnsight_vla.load("tiny-pi0_fast")  # a private copy to plant in
    target = model.spec.action_token_ids.stop - 1 - 17  # FAST 17
    unembed = model.towers()["vlm"].unembed._module.weight
    with torch.no_grad():
        # the fitted head rows are ~10x the seeded ones: planted rows get their scale
        unembed[target] *= 10
        model.layers[1].mlp.down_proj._module.weight[:, 7] = 50.0 * unembed[target]
        # FAST 0..5 read like FAST 100, and neuron 9 points there: most of its top 10 tokens are FAST
        row = 10 * unembed[model.spec.action_token_ids.stop - 1 - 100]
        unembed[model.spec.action_token_ids.stop - 6:model.spec.action_token_ids.stop] = row
        model.layers[1].mlp.down_proj._module.weight[:, 9] = 50.0 * row
    table = project_value_vectors(model, top_k=10, progress=False)
    assert table.top_ids(1, 7)[0] == target and table.top_tokens(1, 7)[0] == "[FAST 17]"
    assert table.action_token_ids == model.spec.action_token_ids
    assert rewired_mask(table)[1, 9] and rewired_fraction(table)[1] >= 1 / model.spec.d_mlp  # FAST tokens count


def test_every_forward_emits_a_token_and_prefill_steering_acts_on_the_first_only(fast):
    obs = fast_obs()
    site = fast.layers[1].mlp.down_proj

    def neurons(steering):
        with fast.predict_action(obs) as tracer:
            seen = list().save()
            for step in tracer.iter[:3]:
                if steering is not None:
                    steering.apply(fast, step)
                seen.append(site.input[0, -1, NEURONS].clone())
        return seen

    clamp = Clamp([(1, n) for n in NEURONS], VALUE, calls="prefill")
    clean, steered = neurons(None), neurons(clamp)
    assert len(steered) == 3 == len(clean)
    assert torch.equal(steered[0], torch.full((2,), VALUE)) and not torch.equal(clean[0], steered[0])
    assert not any(torch.equal(s, torch.full((2,), VALUE)) for s in steered[1:])  # later forwards unclamped
    assert fast.action_calls("vlm") == range(fast.policy_config.max_decoding_steps)


def test_steering_through_nnsight_steer_and_a_torch_hook_is_bit_equal(fast):
    obs = fast_obs(1)
    clamp = Clamp([(1, n) for n in NEURONS], VALUE)
    with fast.predict_action(obs) as tracer:
        for step in tracer.iter[:fast.policy_config.max_decoding_steps]:
            clamp.apply(fast, step)
        traced = tracer.result.save()
    with fast.steer(clamp):
        steered = fast.predict_action(obs)

    def hook(module, args):
        x = args[0].clone()
        x[..., NEURONS] = VALUE
        return (x,)

    handle = fast.layers[1].mlp.down_proj._module.register_forward_pre_hook(hook)
    try:
        hooked = fast.predict_action(obs)
    finally:
        handle.remove()
    np.testing.assert_array_equal(np.asarray(traced), steered)
    np.testing.assert_array_equal(steered, hooked)


def test_saved_checkpoint_reloads_identically_and_a_missing_weight_is_refused(fast, tmp_path):
    folder = fast.save_pretrained(tmp_path / "ckpt")
    assert (folder / ACTION_TOKENIZER_DIR / "tokenizer.json").is_file()
    loaded = nnsight_vla.load(folder)
    obs = fast_obs(2)
    np.testing.assert_array_equal(loaded.predict_action(obs), fast.predict_action(obs))
    assert loaded.spec.action_token_ids == fast.spec.action_token_ids
    tensors = load_file(folder / "model.safetensors")
    del tensors[next(k for k in tensors if "layers.1.mlp.down_proj" in k)]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="down_proj"):
        nnsight_vla.load(folder)


def test_a_checkpoint_without_its_fast_tokenizer_names_the_fix(fast, tmp_path):
    folder = fast.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(folder / ACTION_TOKENIZER_DIR)
    with pytest.raises(CheckpointError, match="FAST tokenizer"):
        nnsight_vla.load(folder, dispatch=False)


def test_predict_action_options(fast):
    with pytest.raises(InputError, match="no option 'num_steps'"):
        fast.predict_action(fast_obs(), num_steps=3)


def test_tokens_that_are_no_fast_sequence_decode_to_the_mean_action_with_a_warning(fast):
    """Forced to emit a word at every step (a hook on the head), the policy writes no FAST
    sequence: lerobot's fallback, the mean action, made visible."""
    word = fast.tokenizer.convert_tokens_to_ids("▁bowl")

    def force(module, args, logits):
        logits = logits.clone()
        logits[..., word] = 1e4
        return logits

    handle = fast.lm_head._module.register_forward_hook(force)
    try:
        with pytest.warns(FastDecodingWarning, match=r"1 decoded row\(s\) were not a FAST token sequence \(6 of 6 ids outside"):
            action = fast.predict_action(fast_obs())
    finally:
        handle.remove()
    np.testing.assert_allclose(action, np.broadcast_to(np.linspace(-0.2, 0.2, 7), action.shape), atol=1e-6)


def test_the_shipped_fit_is_current_and_files_are_checked(fast, tmp_path):
    """The shipped tensors are those of this code (else: rewrite them with `python -m
    nnsight_vla_lerobot.fast_fit`); a damaged file, one for another key and one of other
    shapes are refused; the seeded weights themselves do not act."""
    seeded = fast._build()  # the seeded policy, before the fit
    key = fast_fit.key(seeded, fast_fit.task_batch(fast.preprocessor, fast.cameras, 8, 1, (fast_fit.SEED, 0)))
    tensors, why = fast_fit.read(fast_fit.SHIPPED, key, seeded)
    assert why == "usable", f"{fast_fit.SHIPPED} is {why}: run `python -m nnsight_vla_lerobot.fast_fit`"
    assert fast_fit.read(fast_fit.SHIPPED, "0" * 64, seeded)[1].startswith("written for other")
    damaged = tmp_path / "damaged.safetensors"
    data = bytearray(fast_fit.SHIPPED.read_bytes())
    data[-100] ^= 0xFF  # a bit pattern inside the last tensor's values
    damaged.write_bytes(bytes(data))
    assert fast_fit.read(damaged, key, seeded) == (None, "damaged: its content does not match its digest")
    other = tmp_path / "other.safetensors"
    cache.write(other, key, {**tensors, fast_fit.ROWS: tensors[fast_fit.ROWS][:, :5].contiguous()})
    assert fast_fit.read(other, key, seeded) == (None, "not the policy's tensors by name and shape")
    with pytest.raises(SetupError, match="do not emit the task's FAST sequences"):
        fast_fit.check(seeded, fast.preprocessor, fast.cameras, 8)


def test_a_stale_shipped_fit_falls_back_to_the_cache(fast, tmp_path, monkeypatch):
    seeded = fast._build()
    key = fast_fit.key(seeded, fast_fit.task_batch(fast.preprocessor, fast.cameras, 8, 1, (fast_fit.SEED, 0)))
    tensors, _ = fast_fit.read(fast_fit.SHIPPED, key, seeded)
    monkeypatch.setattr(fast_fit, "SHIPPED", tmp_path / "absent.safetensors")
    monkeypatch.setenv("NNSIGHT_VLA_HOME", str(tmp_path / "home"))
    cached = tmp_path / "home" / "fits" / f"tiny-pi0_fast-{key[:16]}.safetensors"
    cache.write(cached, key, tensors)
    with pytest.warns(UserWarning, match="shipped tiny-pi0_fast fit .*absent.safetensors is absent"):
        assert fast_fit.fit_tiny(seeded, fast.preprocessor, fast.cameras, 8) == str(cached)
    obs = fast_task.observation(np.random.default_rng(5), 2, 1, 0)
    np.testing.assert_array_equal(seeded.predict_action_chunk(fast._inputs([obs]))[0],
                                  fast._module.predict_action_chunk(fast._inputs([obs]))[0])


@pytest.mark.slow
def test_two_step_libero_episode_writes_metrics(fast, tmp_path):
    from nnsight_vla.eval import evaluate

    result = evaluate(fast, "libero_spatial", [0], episodes=1, steering=Clamp([(1, 3)], 4.0, calls="prefill"),
                      controls=("baseline",), max_steps=2, camera_size=64, out_dir=tmp_path)
    assert [r["condition"] for r in result.episodes] == ["baseline", "steered"]
    assert all(r["length"] == 2 and len(r["actions"]) == 2 for r in result.episodes)
    assert {"episodes.jsonl", "summary.json", "statistics.json"} <= {p.name for p in tmp_path.iterdir()}
