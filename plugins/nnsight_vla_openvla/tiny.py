"""The built-in ``tiny-openvla``: OpenVLA's architecture scaled down, random weights, offline."""

from __future__ import annotations

import torch

from .config import OpenVLAConfig
from .tokenizer import build_tiny_tokenizer

NAME = "tiny-openvla"
SEED = 0
# Random weights rarely pick action tokens over 1,000 others; scaling their unembedding rows
# makes the tiny model emit actions that depend on its input, as a trained one does.
ACTION_ROW_SCALE = 4.0

TINY_STATS = {
    "tiny_robot": {
        "action": {
            "q01": [-0.7, -0.9, -0.8, -0.1, -0.15, -0.2, 0.0],
            "q99": [0.8, 0.85, 0.9, 0.12, 0.1, 0.25, 1.0],
            "mask": [True, True, True, True, True, True, False],
        },
        "num_transitions": 0,
        "num_trajectories": 0,
    }
}


def tiny_config() -> OpenVLAConfig:
    """Two small timm ViTs (DINOv2-reg4 and SigLIP ids) and a 2-layer Llama on the tiny tokenizer."""
    tokenizer = build_tiny_tokenizer()
    base = tokenizer.pad_token_id  # <PAD> comes right after the base vocabulary
    vocab = -(-(base + 1) // 64) * 64
    text = dict(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=vocab,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        pad_token_id=base,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return OpenVLAConfig(
        text_config=text,
        norm_stats=TINY_STATS,
        pad_token_id=base,
        timm_overrides=[
            {"embed_dim": 32, "depth": 3, "num_heads": 2},
            {"embed_dim": 48, "depth": 3, "num_heads": 2},
        ],
        raw={"llm_backbone_id": "tiny-llama", "hf_llm_id": None},
    )


def init_tiny(net: torch.nn.Module, action_ids: range) -> None:
    """Make the freshly initialised tiny network emit action tokens (see ACTION_ROW_SCALE)."""
    with torch.no_grad():
        net.language_model.lm_head.weight[action_ids.start : action_ids.stop] *= ACTION_ROW_SCALE
