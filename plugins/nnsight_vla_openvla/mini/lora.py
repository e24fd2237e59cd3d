"""Low-rank adapters: which Linear layers they adapt, and their strict merge into the weights (training: nnsight_vla_mini.lora_train)."""

from __future__ import annotations

import torch

from nnsight_vla.family import CheckpointError

#: The projections the adapters train inside each chosen decoder layer (``down_proj``, the
#: norms and the tied embedding stay SmolLM2's, so its value vectors and the lens table do too).
TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj")


def target_paths(layers: range, prefix: str = "language_model.model.layers") -> list[str]:
    """Every adapted Linear's module path, layer by layer."""
    return [f"{prefix}.{layer}.{name}" for layer in layers for name in TARGETS]


def merged(weights: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], paths: list[str],
           where: str) -> dict[str, torch.Tensor]:
    """``weights`` with ``W + B @ A`` (float32, from the bf16 adapters) at every path.

    The adapters must hold exactly ``paths``' A and B, of matching shapes, or `CheckpointError`
    (``where`` names them in it).
    """
    expected = {f"{p}.lora_{m}" for p in paths for m in "AB"}
    missing, extra = sorted(expected - set(adapters)), sorted(set(adapters) - expected)
    if missing or extra:
        raise CheckpointError(f"{where}: the adapters miss {missing[:4]} and have unexpected {extra[:4]} "
                              f"({len(missing)} missing, {len(extra)} unexpected); retrain them with the training script.")
    out = dict(weights)
    for path in paths:
        key, a, b = f"{path}.weight", adapters[f"{path}.lora_A"].float(), adapters[f"{path}.lora_B"].float()
        base = out.get(key)
        if base is None or a.ndim != 2 or b.ndim != 2 or (b.shape[0], a.shape[1]) != tuple(base.shape) or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"{where}: the adapter of {path} ({tuple(b.shape)} @ {tuple(a.shape)}) does not "
                                  f"fit its weight {None if base is None else tuple(base.shape)}.")
        out[key] = (base.float() + b @ a).to(base.dtype)
    return out
