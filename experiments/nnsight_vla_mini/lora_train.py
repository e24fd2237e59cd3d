"""Low-rank adapters trained in place on chosen Linear layers, stored in bf16 (merged on load by the OpenVLA plugin)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
from torch import nn


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
