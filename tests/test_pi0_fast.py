"""Pi0-FAST (lerobot's pi0_fast): FAST token ids and labels, the lens on a planted neuron, prefill steering, strict loading."""

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import nnsight_vla
from nnsight_vla import CheckpointError, Clamp, InputError, Observation
from nnsight_vla.lens import project_value_vectors, rewired_fraction, rewired_mask
from nnsight_vla_lerobot.pi0_fast import ACTION_TOKENIZER_DIR

from conftest import random_image

NEURONS, VALUE = [3, 17], 5.0


def fast_obs(seed: int = 0) -> Observation:
    images = {"image": random_image(seed, 64), "image2": random_image(seed + 100, 64)}
    return Observation(images, "pick up the black bowl", state=np.linspace(-1, 1, 8) * (seed + 1) / 4)


@pytest.fixture(scope="module")
def fast():
    return nnsight_vla.load("tiny-pi0_fast")


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
    target = model.spec.action_token_ids.stop - 1 - 17  # FAST token 17
    unembed = model.towers()["vlm"].unembed._module.weight
    with torch.no_grad():
        model.layers[1].mlp.down_proj._module.weight[:, 7] = 50.0 * unembed[target]
        # FAST 0..5 read like FAST 100, and neuron 9 points there: 7 of its top 10 tokens are FAST
        row = unembed[model.spec.action_token_ids.stop - 1 - 100].clone()
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
    """A random model emits ids outside the FAST range: lerobot's fallback, made visible."""
    from nnsight_vla_lerobot.pi0_fast import FastDecodingWarning

    with pytest.warns(FastDecodingWarning, match="not a FAST token sequence"):
        action = fast.predict_action(fast_obs())
    np.testing.assert_allclose(action, np.broadcast_to(np.linspace(-0.2, 0.2, 7), action.shape), atol=1e-6)


@pytest.mark.slow
def test_two_step_libero_episode_writes_metrics(fast, tmp_path):
    from nnsight_vla.eval import evaluate

    result = evaluate(fast, "libero_spatial", [0], episodes=1, steering=Clamp([(1, 3)], 4.0, calls="prefill"),
                      controls=("baseline",), max_steps=2, camera_size=64, out_dir=tmp_path)
    assert [r["condition"] for r in result.episodes] == ["baseline", "steered"]
    assert all(r["length"] == 2 and len(r["actions"]) == 2 for r in result.episodes)
    assert {"episodes.jsonl", "summary.json", "statistics.json"} <= {p.name for p in tmp_path.iterdir()}
