"""Small Pi0 / Pi0.5 policies: lerobot's classes at reduced widths, built without touching lerobot's globals for long."""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Iterator

import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from nnsight_vla.testing.words import build_word_tokenizer

from .variants import Variant

SEED = 0

#: Widths for lerobot's two Gemma variant names and the SigLIP tower. lerobot hard-codes
#: 8 attention heads in its training forward, and the expert reads the VLM's keys/values
#: layer by layer, so heads, KV heads, head_dim and depth must agree between the two.
TINY_SIZES = {
    "gemma_2b": dict(width=64, depth=3, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    "gemma_300m": dict(width=32, depth=3, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16),
    "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=16),
}

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

_lock = threading.RLock()


@contextlib.contextmanager
def sized(variant: Variant, sizes: dict | None) -> Iterator[None]:
    """Within the block, lerobot builds ``variant`` at ``sizes`` (None: its own sizes).

    lerobot reads the Gemma widths from a module-level function and hard-codes SigLIP's;
    both are replaced only while the block runs, under a lock, and restored after it,
    exceptions included, so other code in the process keeps lerobot's sizes.
    """
    if sizes is None:
        yield
        return
    module = variant.modeling
    with _lock:
        get_config = module.get_gemma_config
        paligemma = module.PaliGemmaForConditionalGenerationWithPiGemma

        def sized_paligemma(config):
            for key, value in sizes["vision"].items():
                setattr(config.vision_config, key, value)
            config.vision_config.projection_dim = config.text_config.hidden_size
            return paligemma(config=config)

        module.get_gemma_config = lambda name: module.GemmaConfig(**sizes[name])
        module.PaliGemmaForConditionalGenerationWithPiGemma = sized_paligemma
        try:
            yield
        finally:
            module.get_gemma_config = get_config
            module.PaliGemmaForConditionalGenerationWithPiGemma = paligemma


@contextlib.contextmanager
def local_tokenizer(variant: Variant, tokenizer) -> Iterator[None]:
    """Within the block, ``variant``'s processor factory uses ``tokenizer`` instead of
    downloading the PaliGemma tokenizer by name (restored after the block)."""
    module = variant.processing
    with _lock:
        step = module.TokenizerProcessorStep
        module.TokenizerProcessorStep = functools.partial(step, tokenizer=tokenizer)
        try:
            yield
        finally:
            module.TokenizerProcessorStep = step


def build_tiny_tokenizer():
    """Gemma's special-token layout (``<pad>, <eos>, <bos>, <unk>``) over ordinary English words."""
    return build_word_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>"], bos="<bos>", eos="<eos>", unk="<unk>", pad="<pad>"
    )


def tiny_config(variant: Variant, device: str = "cpu"):
    """The lerobot config of a tiny policy: two 64-px cameras, an 8-D state, 7-D actions."""
    config = variant.config_class(
        device=device, image_resolution=(64, 64), chunk_size=10, n_action_steps=10
    )
    config.input_features = {
        **{f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, 64, 64)) for c in CAMERAS},
        "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
    }
    config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))}
    return config
