"""Built-in tiny lerobot policies: their config, normalisation statistics and word tokenizer."""

from __future__ import annotations

import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from nnsight_vla.family import build_word_tokenizer

from .kind import PolicyKind

SEED = 0

CAMERAS = ("image", "image2")  # lerobot's names for LIBERO's agent-view and wrist cameras
STATE_DIM, ACTION_DIM = 8, 7


def _stats(dim: int, scale: float) -> dict[str, torch.Tensor]:
    centre = torch.linspace(-0.2, 0.2, dim)
    spread = torch.full((dim,), scale)
    return {
        "mean": centre, "std": spread, "min": centre - 3 * spread, "max": centre + 3 * spread,
        "q01": centre - 2 * spread, "q99": centre + 2 * spread,
    }


TINY_STATS = {"observation.state": _stats(STATE_DIM, 0.5), "action": _stats(ACTION_DIM, 0.3)}


def build_tiny_tokenizer():
    """Gemma's special-token layout (``<pad>, <eos>, <bos>, <unk>``) over ordinary English words."""
    return build_word_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>"], bos="<bos>", eos="<eos>", unk="<unk>", pad="<pad>"
    )


def tiny_config(kind: PolicyKind, device: str = "cpu"):
    """The lerobot config of a tiny ``kind``: two 64-px cameras, an 8-D state, 7-D actions.

    Example:
        >>> tiny_config(PI0).chunk_size
        10
    """
    config = kind.config_class(device=device, chunk_size=10, n_action_steps=10, **kind.tiny_options)
    config.input_features = {
        **{f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, 64, 64)) for c in CAMERAS},
        "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
    }
    config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))}
    return config
