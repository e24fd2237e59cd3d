"""Low-rank adapters on chosen Linear layers: trained in place, stored in bf16, merged into the weights strictly."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from nnsight_vla import CheckpointError

#: The projections the adapters train inside each chosen decoder layer (``down_proj``, the
#: norms and the tied embedding stay SmolLM2's, so its value vectors and the lens table do too).
TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj")


def target_paths(layers: range, prefix: str = "language_model.model.layers") -> list[str]:
    """Every adapted Linear's module path, layer by layer."""
    return [f"{prefix}.{layer}.{name}" for layer in layers for name in TARGETS]


class LoRALinear(nn.Module):
    """``base(x) + (x @ A.T @ B.T) * scale``; ``B`` starts at zero, so training starts at the base model."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.A = nn.Parameter(torch.randn(rank, base.in_features, generator=generator) / base.in_features ** 0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale


@contextlib.contextmanager
def adapted(net: nn.Module, paths: list[str], rank: int, alpha: float, seed: int) -> Iterator[dict[str, LoRALinear]]:
    """Within the block the Linears at ``paths`` are wrapped by fresh adapters (yielded by
    path); the originals come back after it, exceptions included."""
    generator = torch.Generator().manual_seed(seed)
    wrapped: dict[str, LoRALinear] = {}
    try:
        for path in paths:
            parent, name = net.get_submodule(path.rpartition(".")[0]), path.rpartition(".")[2]
            wrapped[path] = LoRALinear(getattr(parent, name), rank, alpha, generator)
            setattr(parent, name, wrapped[path])
        yield wrapped
    finally:
        for path, module in wrapped.items():
            setattr(net.get_submodule(path.rpartition(".")[0]), path.rpartition(".")[2], module.base)


def state(wrapped: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """The adapters as bf16 tensors ``<path>.lora_A`` / ``.lora_B``, with the scale folded into B."""
    out = {}
    for path, module in wrapped.items():
        out[f"{path}.lora_A"] = module.A.detach().to(torch.bfloat16).contiguous()
        out[f"{path}.lora_B"] = (module.B.detach() * module.scale).to(torch.bfloat16).contiguous()
    return out


def save(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    return Path(path)


def merged(weights: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], paths: list[str],
           where: str) -> dict[str, torch.Tensor]:
    """``weights`` with ``W + B @ A`` (float32, from the bf16 adapters) at every path; the
    adapters must hold exactly ``paths``' A and B, of matching shapes, or `CheckpointError`."""
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
