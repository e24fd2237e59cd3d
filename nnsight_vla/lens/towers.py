"""What a lens reads from a model: a tower's layers, final norm and unembedding, and token labels."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..errors import InputError, LayerIndexError
from ..model import Tower


def get_tower(model: Any, name: str | None = None) -> Tower:
    """The tower ``name`` of ``model.towers()`` (default: the first, ``"vlm"``)."""
    towers = model.towers()
    if name is None:
        return next(iter(towers.values()))
    if name not in towers:
        raise InputError(
            f"{type(model).__name__} has no tower {name!r}; use one of {list(towers)}."
        )
    return towers[name]


def ensure_dispatched(model: Any) -> None:
    """Load the weights of a model built lazily (``dispatch=False``)."""
    if not getattr(model, "dispatched", True):
        model.dispatch()


def unembedding_matrix(tower: Tower, unembed: Any = None) -> torch.Tensor:
    """The ``[vocab, d_model]`` matrix that maps the residual stream to token logits.

    ``unembed`` overrides the tower's: a tensor, or a module (or envoy) with a ``weight``,
    e.g. a family's input embedding where it differs from ``lm_head``.
    """
    source = tower.unembed if unembed is None else unembed
    if source is None:
        raise InputError(
            f"tower {tower.name!r} has no vocabulary (no unembedding); pick a tower that has one "
            "(model.towers()) or pass unembed= a [vocab, d_model] matrix of the same width."
        )
    weight = getattr(getattr(source, "_module", source), "weight", source)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise InputError(
            f"unembed must be a [vocab, d_model] tensor or a module with such a weight, got "
            f"{type(source).__name__}."
        )
    return weight.detach()


def final_norm(tower: Tower) -> Callable[[torch.Tensor], torch.Tensor]:
    """The tower's final norm as a plain function of ``[..., d_model]`` tensors (norms that
    return a tuple, like Gemma's adaptive one in lerobot, give their first element)."""
    module = getattr(tower.norm, "_module", tower.norm)
    return lambda x: hidden(module(x))


def down_proj_weight(tower: Tower, layer: int) -> torch.Tensor:
    """``layers[layer].mlp.down_proj.weight``: ``[d_model, d_mlp]``, one value vector per column."""
    module = tower.layers[layer].mlp.down_proj
    return getattr(module, "_module", module).weight.detach()


def hidden(output: Any) -> torch.Tensor:
    """The residual stream from a decoder layer's output (a tensor, or a tuple led by one)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def layer_indices(layers: Iterable[int] | int | None, n_layers: int) -> list[int]:
    """Layer indices in range (negative ones count from the end), distinct, in the given order."""
    if layers is None:
        return list(range(n_layers))
    chosen = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for layer in chosen:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise InputError(f"layers must be ints, got {layer!r}.")
        if not -n_layers <= layer < n_layers:
            raise LayerIndexError(
                f"layer {layer} is out of range: the tower has {n_layers} layers "
                f"(0..{n_layers - 1}, or -1..-{n_layers} from the end)."
            )
        out.append(layer % n_layers)
    if len(set(out)) != len(out) or not out:
        raise InputError(f"layers {chosen} must be distinct and not empty.")
    return out


def token_labels(model: Any, n: int | None = None) -> list[str]:
    """Readable text of token ids ``0..n-1`` (default: the whole vocabulary).

    Each token is decoded on its own (``" up"``); the family's own labels win where it has
    them (OpenVLA's ``[action: 0.250]``); ids the tokenizer lacks (padding rows) read
    ``<unused ID>``.

    Example:
        >>> token_labels(model)[model.tokenizer.convert_tokens_to_ids("▁up")]
        'up'
    """
    n = model.spec.vocab_size if n is None else n
    ids = list(range(n))
    tokenizer = model.tokenizer
    family = model.token_strings(ids)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    texts = tokenizer.batch_decode([[i] for i in ids])
    out = []
    for i, label, piece, text in zip(ids, family, pieces, texts):
        if label is not None and label != piece:
            out.append(label)
        elif piece is None:
            out.append(f"<unused {i}>")
        else:
            out.append(text)
    return out
