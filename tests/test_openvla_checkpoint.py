"""Loading and saving OpenVLA in the official Hugging Face layout, strictly."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import nnsight_vla
from nnsight_vla import CheckpointError, InputError


def test_official_layout(saved_tiny):
    names = sorted(p.name for p in saved_tiny.iterdir())
    assert "config.json" in names and "preprocessor_config.json" in names
    assert "model.safetensors.index.json" in names
    shards = [n for n in names if n.startswith("model-") and n.endswith(".safetensors")]
    assert len(shards) > 1
    config = json.loads((saved_tiny / "config.json").read_text())
    assert config["model_type"] == "openvla"
    assert config["architectures"] == ["OpenVLAForActionPrediction"]
    assert config["n_action_bins"] == 256 and "tiny_robot" in config["norm_stats"]
    assert config["timm_model_ids"] == [
        "vit_large_patch14_reg4_dinov2.lvd142m",
        "vit_so400m_patch14_siglip_224",
    ]
    keys = set(json.loads((saved_tiny / "model.safetensors.index.json").read_text())["weight_map"])
    # the official key names: LayerScale as scale_factor, the LLM under language_model.
    assert "vision_backbone.featurizer.blocks.0.ls1.scale_factor" in keys
    assert not any(k.endswith(".gamma") for k in keys)
    for key in (
        "vision_backbone.featurizer.reg_token",
        "vision_backbone.fused_featurizer.attn_pool.latent",
        "projector.fc1.weight",
        "projector.fc3.bias",
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.1.mlp.down_proj.weight",
        "language_model.model.norm.weight",
        "language_model.lm_head.weight",
    ):
        assert key in keys


def test_round_trip_gives_identical_weights_and_actions(tiny, saved_tiny, obs, obs_long):
    loaded = nnsight_vla.load(saved_tiny)
    want = tiny._module.state_dict()
    got = loaded._module.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    for o in (obs, obs_long):
        np.testing.assert_array_equal(loaded.predict_action(o), tiny.predict_action(o))


def test_bfloat16_and_device(saved_tiny, obs):
    model = nnsight_vla.load(saved_tiny, dtype="bfloat16", device="cpu")
    param = next(model._module.parameters())
    assert param.dtype == torch.bfloat16 and param.device.type == "cpu"
    assert model.predict_action(obs).shape == (7,)
    with pytest.raises(InputError, match="dtype 'int8' is not supported"):
        nnsight_vla.load(saved_tiny, dtype="int8")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "remove, message",
    [
        ("model-00002-of-*.safetensors", "missing shard.*model-00002"),
        ("model.safetensors.index.json", "found shards .* but no model.safetensors.index.json"),
        ("config.json", "no config.json"),
        ("preprocessor_config.json", "no preprocessor_config.json"),
        ("tokenizer.json", "no tokenizer"),
    ],
)
def test_incomplete_folder_is_refused(saved_tiny, tmp_path, remove, message):
    folder = _copy(saved_tiny, tmp_path / "ckpt")
    (path,) = folder.glob(remove)
    path.unlink()
    with pytest.raises(CheckpointError, match=message):
        nnsight_vla.load(folder)


def _rewrite_first_shard(folder, edit):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / sorted(set(index["weight_map"].values()))[0]
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, shard)
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard.name}
    index["weight_map"].update(dict.fromkeys(tensors, shard.name))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return tensors


def test_missing_weight_is_refused_not_randomised(saved_tiny, tmp_path):
    folder = _copy(saved_tiny, tmp_path / "ckpt")
    dropped = []

    def drop(tensors):
        dropped.append(sorted(tensors)[0])
        del tensors[dropped[0]]

    _rewrite_first_shard(folder, drop)
    with pytest.raises(CheckpointError, match=r"1 missing: \['" + dropped[0].replace(".", r"\.")):
        nnsight_vla.load(folder)


def test_unexpected_and_misshaped_weights(saved_tiny, tmp_path):
    folder = _copy(saved_tiny, tmp_path / "ckpt")

    changed = []

    def edit(tensors):
        changed.append(next(k for k in sorted(tensors) if tensors[k].ndim == 1))
        tensors[changed[0]] = torch.zeros(3)
        tensors["projector.fc9.weight"] = torch.zeros(2, 2)

    _rewrite_first_shard(folder, edit)
    with pytest.raises(CheckpointError) as info:
        nnsight_vla.load(folder)
    message = str(info.value)
    assert "1 unexpected: ['projector.fc9.weight']" in message
    assert f"{changed[0]}: checkpoint (3,) vs model (" in message


def test_single_file_checkpoint(tiny, tmp_path, obs):
    folder = tiny.save_pretrained(tmp_path / "single")
    assert (folder / "model.safetensors").is_file()
    assert not (folder / "model.safetensors.index.json").exists()
    np.testing.assert_array_equal(nnsight_vla.load(folder).predict_action(obs), tiny.predict_action(obs))
