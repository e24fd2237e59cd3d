"""`project_value_vectors`: every FFN value vector onto the vocabulary, streamed in chunks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..towers import get_tower
from .labels import ensure_dispatched, token_labels
from .table import ValueVectorTable

#: Logits computed per chunk when ``batch_size`` is not given (256 MiB in float32).
CHUNK_LOGITS = 2**26


def _value_vectors(weights: list[torch.Tensor], d_mlp: int, start: int, stop: int) -> torch.Tensor:
    """Value vectors ``start:stop`` of the layers' concatenation, ``[stop - start, d_model]``."""
    parts = []
    for row in range(start // d_mlp, (stop - 1) // d_mlp + 1):
        a, b = max(start - row * d_mlp, 0), min(stop - row * d_mlp, d_mlp)
        parts.append(weights[row][:, a:b].T)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def project_value_vectors(
    model: Any,
    *,
    top_k: int = 10,
    norm: bool = False,
    layers: Iterable[int] | None = None,
    batch_size: int | None = None,
    tower: str | None = None,
    unembed: Any = None,
    progress: bool = True,
) -> ValueVectorTable:
    """Project the FFN value vectors of a model's layers onto its vocabulary.

    A value vector is a column of a layer's ``down_proj`` weight: what neuron ``n`` adds to the
    residual stream per unit of activation. Each is multiplied with the unembedding and its
    ``top_k`` tokens (ids, labels, scores) are kept. Chunks of ``batch_size`` vectors (across
    layer boundaries) are projected at a time into one reused ``[batch_size, vocab]`` block of
    logits, so peak memory follows the chunk size, not the number of layers.

    Args:
        model: A loaded `nnsight_vla.VLA` (weights are loaded first if it was lazy).
        top_k: Tokens kept per value vector.
        norm: Apply the tower's final norm to each vector first (nnterp's rule); the default
            ``False`` is the paper's rule (raw vectors).
        layers: Layer indices (default: all).
        batch_size: Vectors per chunk (default: ``2**26 // vocab``, 256 MiB of float32 logits).
        tower: Which of ``model.towers()`` (default ``"vlm"``).
        unembed: Another ``[vocab, d_model]`` matrix (or a module with one) instead of the
            tower's unembedding, e.g. a family's input embedding.
        progress: Show a tqdm bar.

    Example:
        >>> table = project_value_vectors(nnsight_vla.load("smol-openvla"), top_k=10)
        >>> table.find("up", k=3)
    """
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise InputError(
            f"batch_size={batch_size!r} must be a positive int (value vectors per chunk), or None "
            "for chunks of 256 MiB of logits."
        )
    ensure_dispatched(model)
    tw = get_tower(model, tower)
    weight_u = tw.unembedding(unembed)
    vocab, d_model = weight_u.shape
    if not isinstance(top_k, int) or not 1 <= top_k <= vocab:
        raise InputError(f"top_k={top_k!r} must be an int in 1..{vocab} (the vocabulary size).")
    chosen = tw.layer_indices(layers)
    weights = [tw.value_vectors(i) for i in chosen]
    if weights[0].shape[0] != d_model:
        raise InputError(
            f"the unembedding is {tuple(weight_u.shape)} but tower {tw.name!r} has width "
            f"{weights[0].shape[0]}; pass unembed= a matrix with {weights[0].shape[0]} columns."
        )
    d_mlp = weights[0].shape[1]
    if any(w.shape != (d_model, d_mlp) for w in weights):
        raise InputError(
            f"down_proj weights differ in shape across layers {chosen}; project them separately."
        )
    batch = batch_size if batch_size is not None else max(1, CHUNK_LOGITS // vocab)
    normalize = tw.final_norm() if norm else None

    total = len(chosen) * d_mlp
    ids = torch.empty(total, top_k, dtype=torch.int32)
    scores = torch.empty(total, top_k, dtype=torch.float32)
    logits = torch.empty(min(batch, total), vocab, dtype=weight_u.dtype, device=weight_u.device)
    with (
        torch.no_grad(),
        tqdm(total=total, desc="value vectors", unit="vec", disable=not progress) as bar,
    ):
        for start in range(0, total, batch):
            stop = min(start + batch, total)
            vectors = _value_vectors(weights, d_mlp, start, stop).to(weight_u.dtype)
            if normalize is not None:
                vectors = normalize(vectors)
            block = torch.mm(vectors, weight_u.T, out=logits[: stop - start])
            best = block.topk(top_k, dim=1)
            ids[start:stop] = best.indices.cpu()
            scores[start:stop] = best.values.float().cpu()
            bar.update(stop - start)

    spec = model.spec
    actions = spec.action_token_ids if vocab == spec.vocab_size else None
    shape = (len(chosen), d_mlp, top_k)
    return ValueVectorTable(
        ids.reshape(shape).numpy(),
        scores.reshape(shape).numpy(),
        tuple(chosen),
        token_labels(model, vocab),
        action_token_ids=actions,
        n_layers=tw.n_layers,
        info={
            "model": getattr(model, "name_or_path", type(model).__name__),
            "tower": tw.name,
            "norm": bool(norm),
            "unembed": "tower" if unembed is None else "custom",
        },
        embeddings=weight_u.half().cpu().numpy(),
    )
