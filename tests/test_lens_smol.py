"""smol-openvla: the real SmolLM2-135M inside OpenVLA, and what the lens finds in it."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import nnsight_vla
from nnsight_vla.lens import cluster, project_value_vectors

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lens_smol")]  # one worker builds the module's fixtures

# Neurons of SmolLM2-135M-Instruct with each token among the top 3 of their value vector
# (norm=False), as stated in the issue and counted independently with transformers' own loader.
TOP3_COUNTS = {" up": 82, " down": 36, " left": 33, " fast": 6}


@pytest.fixture(scope="module")
def smol():
    return nnsight_vla.load("smol-openvla")  # ~15 s: reads and de-quantizes the GGUF file once


@pytest.fixture(scope="module")
def smol_table(smol):
    return project_value_vectors(smol, top_k=10, progress=False)


def test_it_is_smollm2_with_real_weights(smol):
    spec = smol.spec
    assert (spec.n_layers, spec.d_model, spec.d_mlp, spec.vocab_size) == (30, 576, 1536, 49152)
    assert spec.action_token_ids == range(49152 - 256, 49152)
    # the official OpenVLA rule (text_config.vocab_size - pad_to_multiple_of) ends them there too
    assert smol.config.official_action_end == 49152 == len(smol.tokenizer)
    net = smol._module.language_model
    assert net.lm_head.weight is net.model.embed_tokens.weight  # tied
    ids = smol.tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0] == 1  # BOS first: OpenVLA puts the image patches after it
    with torch.no_grad():
        nxt = net(ids).logits[0, -1].argmax()
    assert smol.tokenizer.decode([nxt]) == " Paris"
    assert smol.token_strings([49151, 614]) == ["[action: -0.996]", "Ġup"]


def test_semantic_neuron_counts(smol, smol_table):
    for word, count in TOP3_COUNTS.items():
        (token,) = smol.tokenizer(word, add_special_tokens=False).input_ids
        assert smol_table.vocab[token] == word
        assert int((smol_table.ids[..., :3] == token).any(-1).sum()) == count, word
    # find() ignores the space: " up" and "up" both count
    assert len(smol_table.find("up", k=3)) >= TOP3_COUNTS[" up"]


def test_concept_clusters_are_about_the_concept(smol_table):
    for concept in ("up", "left"):
        found = cluster(smol_table, concept, size=10)
        about = [any(t.strip().lower() == concept for t in tokens[:5]) for tokens in found.tokens]
        assert sum(about) >= 8, found.describe()


def test_tied_model_saves_once_and_reloads(smol, obs, tmp_path):
    folder = smol.save_pretrained(tmp_path / "smol")
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert (
        "language_model.model.embed_tokens.weight" in keys
        and "language_model.lm_head.weight" not in keys
    )
    config = json.loads((folder / "config.json").read_text())
    assert config["unpadded_vocab_size"] == 49152 and config["text_config"]["tie_word_embeddings"]
    assert config["text_config"]["vocab_size"] - config["pad_to_multiple_of"] == 49152
    reloaded = nnsight_vla.load(folder)
    assert reloaded.spec == smol.spec
    net = reloaded._module.language_model
    assert net.lm_head.weight is net.model.embed_tokens.weight
    np.testing.assert_array_equal(reloaded.predict_action(obs), smol.predict_action(obs))
    assert (
        reloaded.tokenizer("pick up the bowl").input_ids
        == smol.tokenizer("pick up the bowl").input_ids
    )


def test_the_de_quantized_weights_are_cached_and_read_back_equal(tmp_path, monkeypatch):
    """The first read parses the GGUF file and caches it; the second reads the cache: the same
    tensors and a tokenizer that gives the same ids and special tokens."""
    from nnsight_vla_openvla import smol as smol_module

    monkeypatch.setenv("NNSIGHT_VLA_HOME", str(tmp_path))
    config = smol_module.smol_config()
    parsed = []
    monkeypatch.setattr(smol_module, "_read_file", lambda *a, real=smol_module._read_file: parsed.append(1) or real(*a))
    tokenizer, tensors = smol_module.read_gguf(config)
    again, cached = smol_module.read_gguf(config)
    assert parsed == [1] and len(list((tmp_path / "smollm2").glob("*.safetensors"))) == 1
    assert cached.keys() == tensors.keys() and all(torch.equal(cached[k], tensors[k]) for k in tensors)
    for text in ["In: What action should the robot take to pick up the black bowl?\nOut:", "héllo wörld 123 <|im_end|>"]:
        assert again(text).input_ids == tokenizer(text).input_ids
    assert [getattr(again, n) for n in smol_module.SPECIAL_TOKENS] == [getattr(tokenizer, n) for n in smol_module.SPECIAL_TOKENS]
    assert again.padding_side == tokenizer.padding_side == "left"
