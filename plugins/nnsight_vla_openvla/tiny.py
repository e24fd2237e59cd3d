"""The built-in ``tiny-openvla``: OpenVLA's architecture scaled down, random weights, offline."""

from __future__ import annotations

import torch

from . import TINY as NAME
from .checkpoint import save_checkpoint
from .config import OpenVLAConfig
from .tokenizer import PAD_TO_MULTIPLE_OF, build_tiny_tokenizer

__all__ = ["NAME", "tiny_config", "random_net", "write_random_checkpoint"]
SEED = 0
# Random weights rarely pick action tokens over 1,000 others; scaling their unembedding rows
# makes the tiny model emit actions that depend on its input, as a trained one does.
ACTION_ROW_SCALE = 4.0

# Two small timm ViTs with the real DINOv2-reg4 / SigLIP ids (keyword overrides of timm.create_model).
TINY_VISION = (
    {"embed_dim": 32, "depth": 3, "num_heads": 2},
    {"embed_dim": 48, "depth": 3, "num_heads": 2},
)

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


def tiny_config(**text_overrides) -> OpenVLAConfig:
    """A config of two small timm ViTs (DINOv2-reg4 and SigLIP ids) and a 2-layer Llama.

    The Llama runs on the tiny tokenizer; ``text_overrides`` resize it (e.g.
    ``num_hidden_layers=8, hidden_size=1024``).
    """
    tokenizer = build_tiny_tokenizer()
    base = tokenizer.pad_token_id  # <PAD> comes right after the base vocabulary
    # Padded as OpenVLA pads Llama-2 (32001 tokens -> 32064): with a base that is a multiple of
    # 64, the official rule `vocab_size - pad_to_multiple_of` gives back `base`, where action ids end.
    vocab = -(-(base + 1) // PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
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
    text.update(text_overrides)
    return OpenVLAConfig(
        text_config=text,
        norm_stats=TINY_STATS,
        pad_token_id=base,
        pad_to_multiple_of=PAD_TO_MULTIPLE_OF,
        timm_overrides=[dict(o) for o in TINY_VISION],
        raw={"llm_backbone_id": "tiny-llama", "hf_llm_id": None},
    )


def random_net(config: OpenVLAConfig, seed: int = SEED) -> torch.nn.Module:
    """A seeded random-weight network of ``config`` that emits action tokens (see ACTION_ROW_SCALE)."""
    from .actions import ActionTokenizer
    from .modeling import OpenVLANet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = OpenVLANet(config)
    ids = ActionTokenizer(config.tokenizer_vocab_size, config.n_action_bins).token_ids
    with torch.no_grad():
        net.language_model.lm_head.weight[ids.start : ids.stop] *= ACTION_ROW_SCALE
    return net


def write_random_checkpoint(folder, config: OpenVLAConfig, seed: int = SEED):
    """Write a random-weight OpenVLA of ``config`` (on the tiny tokenizer) in the official layout.

    Example:
        >>> write_random_checkpoint(tmp / "mid", tiny_config(num_hidden_layers=8, hidden_size=1024))
    """
    from pathlib import Path

    from .processor import OpenVLAProcessor

    tokenizer = build_tiny_tokenizer()
    net = random_net(config, seed)
    save_checkpoint(Path(folder), config, net, tokenizer, OpenVLAProcessor(tokenizer))
    return Path(folder)
