"""`project_value_vectors`: every FFN value vector onto the vocabulary, streamed in chunks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import cache
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
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    cached: bool = True,
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
        dtype: The matmuls' dtype: None (default) the unembedding's (the model's), or
            ``"bfloat16"`` (the paper's reference code), ``"float16"``, ``"float32"``. Scores
            come back as float32 either way. bf16 keeps 8 significant bits: scores closer
            than about ``2**-7 * |v| * |u|`` may swap or tie, so a bf16 table's order among
            near-equal tokens can differ from a float32 one (see `bf16_error_bound`). On a CPU
            without bf16/fp16 matmul units the rounded inputs are multiplied in float32
            (see `matmul_dtype`; ``table.info["matmul"]`` says which ran).
        device: Where the matmuls run (default: the unembedding's device, e.g. CUDA for a model
            there); chunks of vectors go there and only each chunk's top-k comes back to the
            CPU, so device memory follows the chunk too.
        progress: Show a tqdm bar.
        cached: On a CPU, keep the table's ids and scores in ``$NNSIGHT_VLA_HOME/lens`` (see
            `nnsight_vla.cache`), keyed by the weights' bytes, the settings, torch's version and
            this module's code: the same projection is then read back instead of redone. Tables
            with ``norm=True`` or on another device are always computed.

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
    compute = (_dtype(dtype) or weight_u.dtype, _device(device) or weight_u.device)
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

    kernel = matmul_dtype(*compute)

    def project() -> tuple[torch.Tensor, torch.Tensor]:
        total = len(chosen) * d_mlp
        ids = torch.empty(total, top_k, dtype=torch.int32)
        scores = torch.empty(total, top_k, dtype=torch.float32)
        unembedding = weight_u.to(compute[0]).to(dtype=kernel, device=compute[1])  # no copy when already there
        logits = torch.empty(min(batch, total), vocab, dtype=kernel, device=compute[1])
        with (
            torch.no_grad(),
            tqdm(total=total, desc="value vectors", unit="vec", disable=not progress) as bar,
        ):
            for start in range(0, total, batch):
                stop = min(start + batch, total)
                vectors = _value_vectors(weights, d_mlp, start, stop).to(weight_u.dtype)
                if normalize is not None:
                    vectors = normalize(vectors)  # where the norm's weights are, in their dtype
                vectors = vectors.to(compute[0]).to(dtype=kernel, device=compute[1])
                block = torch.mm(vectors, unembedding.T, out=logits[: stop - start])
                best = top_k_of(block, top_k)
                ids[start:stop] = best[1].cpu()
                scores[start:stop] = best[0].float().cpu()
                bar.update(stop - start)
        return ids, scores

    on_cpu = compute[1].type == "cpu" and weight_u.device.type == "cpu" and all(w.device.type == "cpu" for w in weights)
    if cached and not norm and on_cpu:
        inputs = _inputs_digest(weights, weight_u, [top_k, str(compute[0]), str(kernel), batch])
        key = hashlib.sha256(f"{inputs} {torch.__version__}".encode() + Path(__file__).read_bytes()).hexdigest()
        # named by the inputs only: a table made again after a code change replaces the old file
        ids, scores = _cached(cache.cache_dir("lens") / f"value-vectors-{inputs[:32]}.safetensors", key, project)
    else:
        ids, scores = project()

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
            "dtype": str(compute[0]).removeprefix("torch."),
            "matmul": str(kernel).removeprefix("torch."),
        },
        embeddings=weight_u.half().cpu().numpy(),
    )


def _inputs_digest(weights: list[torch.Tensor], unembedding: torch.Tensor, settings: list) -> str:
    """SHA-256 of what a table is projected from: the weights' bytes and the settings."""
    tensors = {"unembedding": unembedding, **{f"value_vectors.{i}": w for i, w in enumerate(weights)}}
    return hashlib.sha256(f"{settings} {cache.digest(tensors)}".encode()).hexdigest()


def _cached(path: Path, key: str, make: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``make()``'s ids and scores, read from ``path`` when it holds them for ``key``, else made and kept there."""
    with cache.locked(path, "the lens table") as writable:
        found, _, _ = cache.read(path, key) if writable else (None, {}, "absent")
        if found is not None:
            return found["ids"], found["scores"]
        ids, scores = make()
        if writable:
            cache.write(path, key, {"ids": ids, "scores": scores})
        return ids, scores


def top_k_of(block: torch.Tensor, k: int, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of each row's ``k`` largest entries, as ``block.topk(k, dim=1)``.

    Found in two cheap passes: the maximum of every run of ``width`` columns, then a top-k
    among the columns of the ``k`` runs with the largest maxima and the last columns that
    fill no run (each of a row's top ``k`` entries lies there: a run left out has ``k`` runs
    above its maximum, so ``k`` entries above each of its own). Equal values may come in
    another order.

    Example:
        >>> values, ids = top_k_of(torch.randn(4, 1000), 10)
    """
    rows, vocab = block.shape
    runs = vocab // width
    if runs <= 2 * k:  # too few runs to save work
        best = block.topk(k, dim=1)
        return best.values, best.indices
    chosen = _top_runs(block[:, : runs * width].reshape(rows, runs, width), k)  # [rows, k]
    columns = (chosen[..., None] * width + torch.arange(width, device=block.device)).flatten(1)
    if runs * width < vocab:  # the rest, always a candidate
        rest = torch.arange(runs * width, vocab, device=block.device).expand(rows, -1)
        columns = torch.cat([columns, rest], 1)
    best = block.gather(1, columns).topk(k, dim=1)
    return best.values, columns.gather(1, best.indices)


#: Integer types of the same width: a float's bits read as one of these keep the order of
#: non-negative floats, and a reduction over them is vectorised where a bf16/fp16 one is not.
_BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}


def _top_runs(runs: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` runs (``runs[row, run, :]``) with the largest maxima in each row.

    The maxima are taken over the floats' bits as integers: exact for every run holding a
    non-negative value (negative floats read as negative integers, below them all). A row whose
    ``k``-th run holds only negatives (rare: logits of ``k`` whole runs below zero) is redone
    on the floats.
    """
    bits = _BITS.get(runs.dtype)
    if bits is None:
        return runs.amax(-1).topk(k, dim=1).indices
    maxima = runs.view(bits).amax(-1)
    best = maxima.topk(k, dim=1)
    negative = best.values[:, -1] < 0
    if bool(negative.any()):
        best.indices[negative] = runs[negative].amax(-1).topk(k, dim=1).indices
    return best.indices


def matmul_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the projection's matmuls run in for inputs rounded to ``dtype`` on ``device``.

    ``dtype`` itself, except bf16/fp16 on a CPU that has no units for them (oneDNN says so;
    PyTorch then emulates them about 8x slower than float32 on an AVX2 CPU): there float32.
    The scores are the same up to rounding: each product of two bf16 (fp16) numbers is exact
    in float32 and a bf16 matmul sums in float32 too; only its last step, rounding each score
    to bf16, is left out.

    Example:
        >>> matmul_dtype(torch.bfloat16, torch.device("cuda"))
        torch.bfloat16
    """
    if device.type != "cpu" or dtype not in _CPU_UNITS:
        return dtype
    has_units = getattr(torch.ops.mkldnn, _CPU_UNITS[dtype], None)  # absent: assume the units
    return dtype if has_units is None or has_units() else torch.float32


#: oneDNN's check for each reduced dtype's matmul units on this CPU.
_CPU_UNITS = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}


#: The dtypes the projection may run in.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(value: Any) -> torch.dtype | None:
    if value is None:
        return None
    name = str(value).removeprefix("torch.")
    if name not in DTYPES:
        raise InputError(f"dtype={value!r}: use one of {sorted(DTYPES)} (or the torch dtypes), or None for the model's.")
    return DTYPES[name]


def _device(value: Any) -> torch.device | None:
    if value is None:
        return None
    try:
        device = torch.device(value)
        torch.empty(0, device=device)
    except (RuntimeError, TypeError, AssertionError) as error:
        raise InputError(f"device={value!r} cannot be used here ({error}); use 'cpu', 'cuda', 'cuda:1' or None "
                         "(the model's).") from error
    return device


def bf16_error_bound(vector_norms: Any, unembed_norm: float, scores: Any) -> Any:
    """A bound on how far a bf16 score can lie from the exact one.

    Inputs are rounded to 8 significant bits (relative error ``2**-8`` each, so
    ``2**-7 * |v| * |u|`` on the dot product by Cauchy-Schwarz, with float32 accumulation)
    and the result rounded once more (``2**-8 * |score|``). Two tokens whose exact scores
    differ by more than the sum of their bounds keep their order in bf16.

    Example:
        >>> bf16_error_bound(np.array([1.0]), 2.0, np.array([0.5]))   # 2**-7 * 2 + 2**-8 * 0.5
        array([0.01757812])
    """
    import numpy as np

    return 2.0**-7 * np.asarray(vector_norms) * unembed_norm + 2.0**-8 * np.abs(np.asarray(scores))
