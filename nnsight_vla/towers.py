"""`Tower`: one decoder stack of a loaded model, with its sizes, the one layer range check and hidden-state access."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import InputError, LayerIndexError
from .layout import TowerLayout


def module_of(envoy: Any) -> torch.nn.Module:
    """The torch module behind an nnsight envoy (a module passes through).

    This is the core's one reach into nnsight's private ``_module``.
    """
    return getattr(envoy, "_module", envoy)


def hidden(output: Any) -> torch.Tensor:
    """The hidden states in a module's output (a tensor, or a tuple led by one)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def with_hidden(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``output`` with ``fn`` applied to its hidden states, keeping the rest of a tuple."""
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    return fn(output)


def check_layer(index: Any, n: int, what: str) -> int:
    """``index`` as a layer of a stack of ``n`` (negative counts from the end): the one range check."""
    if not isinstance(index, int) or isinstance(index, bool):
        raise InputError(f"a layer must be an int, got {index!r}.")
    if not -n <= index < n:
        raise LayerIndexError(
            f"layer {index} is out of range: {what} has {n} layers (0..{n - 1}, or -1..-{n} from the end)."
        )
    return index % n


@dataclass(frozen=True, repr=False)
class Tower:
    """A stack of decoder layers of a loaded model, as `VLA.towers` gives it.

    Attributes:
        name: ``"vlm"`` (the language model) or a family's other tower (``"expert"``).
        layers: The envoy of its decoder-layer list (``layers[i].mlp.down_proj`` inside).
        norm: Its final norm envoy.
        unembed: The envoy of its unembedding Linear ``[vocab, d_model]``, or None.
        layout: Where its parts live (`TowerLayout`).

    Example:
        >>> vlm = model.towers()["vlm"]
        >>> vlm.n_layers, vlm.d_model, vlm.d_mlp
        (2, 64, 256)
    """

    name: str
    layers: Any = field(repr=False)
    norm: Any = field(repr=False)
    unembed: Any = field(repr=False)
    layout: TowerLayout = field(repr=False)

    def __repr__(self) -> str:
        return f"Tower({self.name!r}, n_layers={self.n_layers}, d_model={self.d_model}, d_mlp={self.d_mlp})"

    @property
    def n_layers(self) -> int:
        """How many decoder layers the tower has."""
        return len(self.layers)

    def _down_proj(self, layer: int = 0) -> torch.nn.Module:
        return module_of(self.layers[layer]).get_submodule(self.layout.block["mlp.out"])

    @property
    def d_model(self) -> int:
        """The residual stream's width: ``out_features`` of layer 0's FFN output projection."""
        return self._down_proj().out_features

    @property
    def d_mlp(self) -> int:
        """The FFN width: ``in_features`` of layer 0's FFN output projection."""
        return self._down_proj().in_features

    @property
    def vocab_size(self) -> int | None:
        """The rows of the unembedding, or None when the tower has none."""
        return None if self.unembed is None else module_of(self.unembed).weight.shape[0]

    def layer(self, index: Any) -> int:
        """``index`` as a layer of this tower (negative counts from the end)."""
        return check_layer(index, self.n_layers, f"tower {self.name!r}")

    def layer_indices(self, layers: Iterable[int] | int | None) -> list[int]:
        """Distinct layers in the given order (default: all)."""
        if layers is None:
            return list(range(self.n_layers))
        chosen = [layers] if isinstance(layers, int) else list(layers)
        out = [self.layer(layer) for layer in chosen]
        if len(set(out)) != len(out) or not out:
            raise InputError(f"layers {chosen} must be distinct and not empty.")
        return out

    def value_vectors(self, layer: int) -> torch.Tensor:
        """``down_proj.weight`` of a layer: ``[d_model, d_mlp]``, one value vector per column."""
        return self._down_proj(self.layer(layer)).weight.detach()

    def unembedding(self, unembed: Any = None) -> torch.Tensor:
        """The ``[vocab, d_model]`` matrix mapping the residual stream to token logits.

        ``unembed`` overrides the tower's: a tensor, or a module (or envoy) with a ``weight``.
        """
        source = self.unembed if unembed is None else unembed
        if source is None:
            raise InputError(
                f"tower {self.name!r} has no vocabulary (no unembedding); pick a tower that has one "
                "(model.towers()) or pass unembed= a [vocab, d_model] matrix of the same width."
            )
        weight = getattr(module_of(source), "weight", source)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise InputError(
                f"unembed must be a [vocab, d_model] tensor or a module with such a weight, got "
                f"{type(source).__name__}."
            )
        return weight.detach()

    def final_norm(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The final norm as a function of ``[..., d_model]`` tensors (tuple outputs give their first)."""
        module = module_of(self.norm)
        return lambda x: hidden(module(x))


def get_tower(model: Any, name: str | None = None) -> Tower:
    """The tower ``name`` of ``model.towers()`` (default: the first, ``"vlm"``)."""
    towers = model.towers()
    if name is None:
        return next(iter(towers.values()))
    if name not in towers:
        raise InputError(f"{type(model).__name__} has no tower {name!r}; use one of {list(towers)}.")
    return towers[name]
