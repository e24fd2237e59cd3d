"""The full-size OpenVLA architecture, built on the meta device, matches the Hub checkpoint."""

import json

import pytest
import torch

import nnsight_vla
from nnsight_vla import CheckpointError
from nnsight_vla_openvla.config import OpenVLAConfig
from nnsight_vla_openvla.checkpoint import to_checkpoint_key
from nnsight_vla_openvla.modeling import OpenVLANet
from nnsight_vla_openvla.tokenizer import build_tiny_tokenizer

# config.json of openvla/openvla-7b as the converter wrote it (text_config holds only non-defaults)
OFFICIAL = {
    "model_type": "openvla",
    "architectures": ["OpenVLAForActionPrediction"],
    "vision_backbone_id": "dinosiglip-vit-so-224px",
    "llm_backbone_id": "llama2-7b-pure",
    "arch_specifier": "no-align+fused-gelu-mlp",
    "use_fused_vision_backbone": True,
    "image_resize_strategy": "resize-naive",
    "llm_max_length": 2048,
    "pad_token_id": 32000,
    "pad_to_multiple_of": 64,
    "n_action_bins": 256,
    "norm_stats": {
        "libero_10": {
            "action": {"q01": [0.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]}
        }
    },
    "text_config": {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16", "vocab_size": 32064},
}


def test_full_size_state_dict_matches_the_checkpoint():
    with torch.device("meta"):
        net = OpenVLANet(OpenVLAConfig.from_dict(OFFICIAL))
    keys = {to_checkpoint_key(k): v.shape for k, v in net.state_dict().items()}
    assert len(keys) == 982
    assert sum(s.numel() for s in keys.values()) == 7_541_237_184
    expected = {
        "vision_backbone.featurizer.cls_token": (1, 1, 1024),
        "vision_backbone.featurizer.reg_token": (1, 4, 1024),
        "vision_backbone.featurizer.pos_embed": (1, 256, 1024),
        "vision_backbone.featurizer.patch_embed.proj.weight": (1024, 3, 14, 14),
        "vision_backbone.featurizer.blocks.0.attn.qkv.weight": (3072, 1024),
        "vision_backbone.featurizer.blocks.23.ls1.scale_factor": (1024,),
        "vision_backbone.featurizer.blocks.0.mlp.fc1.weight": (4096, 1024),
        "vision_backbone.fused_featurizer.pos_embed": (1, 256, 1152),
        "vision_backbone.fused_featurizer.blocks.26.attn.qkv.weight": (3456, 1152),
        "vision_backbone.fused_featurizer.blocks.26.mlp.fc1.weight": (4304, 1152),
        "projector.fc1.weight": (8704, 2176),
        "projector.fc2.weight": (4096, 8704),
        "projector.fc3.weight": (4096, 4096),
        "language_model.model.embed_tokens.weight": (32064, 4096),
        "language_model.model.layers.31.mlp.gate_proj.weight": (11008, 4096),
        "language_model.model.layers.31.mlp.down_proj.weight": (4096, 11008),
        "language_model.model.norm.weight": (4096,),
        "language_model.lm_head.weight": (32064, 4096),
    }
    for key, shape in expected.items():
        assert tuple(keys[key]) == shape, key
    assert sum(k.endswith(".scale_factor") for k in keys) == 48  # 24 DINOv2 blocks x ls1, ls2
    assert not any(".gamma" in k for k in keys)
    pool = "vision_backbone.fused_featurizer.attn_pool."
    assert pool + "latent" in keys
    for part in ("q", "kv", "proj", "norm", "mlp.fc1", "mlp.fc2"):
        assert pool + part + ".weight" in keys and pool + part + ".bias" in keys
    assert net.language_model.config.rms_norm_eps == 1e-6


@pytest.fixture
def official_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(OFFICIAL))
    build_tiny_tokenizer().save_pretrained(tmp_path)
    from nnsight_vla_openvla.processor import OpenVLAProcessor

    OpenVLAProcessor(build_tiny_tokenizer()).save(tmp_path)
    return tmp_path


def test_official_config_loads_lazily_and_refuses_missing_weights(official_folder):
    model = nnsight_vla.load(official_folder, dispatch=False)
    spec = model.spec
    assert (spec.n_layers, spec.d_model, spec.d_mlp, spec.vocab_size) == (32, 4096, 11008, 32064)
    assert spec.action_token_ids == range(31744, 32000)
    assert model.unnorm_key is None and spec.action_dim == 7
    assert model.layers[31].mlp.down_proj.weight.is_meta
    with pytest.raises(CheckpointError, match="found no weights"):
        model.dispatch()
