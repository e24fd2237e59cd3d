"""Concept clusters: value vectors nearest to a word, by the paper's softmax-weighted embeddings."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..neurons import NeuronCluster, display
from .table import ValueVectorTable

#: Tokens per value vector that make up its embedding (the paper's top-5).
EMBED_TOP = 5
#: Gathered embedding values per chunk when computing vector norms.
CHUNK_VALUES = 2**24


def concept_similarity(table: ValueVectorTable, concept: str) -> np.ndarray:
    """Cosine between each value vector's embedding and the concept's, ``[layers, d_mlp]``.

    A value vector's embedding is the softmax-weighted (over its scores) sum of the unembedding
    rows of its top-5 tokens. The concept's embedding is the mean of the rows of the tokens
    whose text is ``concept`` (whitespace around it ignored: ``" up"`` and ``"up"``).

    Example:
        >>> concept_similarity(table, "up").shape
        (30, 1536)
    """
    if table.embeddings is None:
        raise InputError(
            "this table holds no token embeddings; build it with project_value_vectors "
            "(or give a hand-built table embeddings=[vocab, d_model])."
        )
    k = min(EMBED_TOP, table.top_k)
    store = table.embeddings
    target = store[table.token_mask(concept, "exact")].astype(np.float32).mean(0)
    target /= max(float(np.linalg.norm(target)), np.finfo(np.float32).tiny)

    ids = table.ids[..., :k]
    weights = _softmax(table.scores[..., :k])
    step = max(1, CHUNK_VALUES // store.shape[1])
    token_dots = np.concatenate(
        [store[a : a + step].astype(np.float32) @ target for a in range(0, len(store), step)]
    )
    dots = (weights * token_dots[ids]).sum(-1)
    return dots / _embedding_norms(table, ids, weights)


def cluster(
    table: ValueVectorTable, concept: str, size: int = 10, *, allow_unmatched: bool = False
) -> NeuronCluster:
    """The ``size`` value vectors whose embeddings are nearest (cosine) to ``concept``'s.

    The paper's clusters have sizes 10, 20 and 40. Ties go to the lower flat index.

    The nearest vectors are only about the concept when some value vector lists it: if no
    vector of the table has a token reading ``concept`` (``" up"`` or ``"up"``) among its top
    ``table.top_k`` tokens, this raises `InputError` (on a random model the nearest vectors
    are action tokens, not "up"), unless ``allow_unmatched=True`` asks for the nearest ones
    anyway. Either way the cluster's ``description`` (the first line of ``describe()``) says
    which tokens read the concept and how many of its vectors, and of the table's, list them.

    Example:
        >>> up = cluster(table, "up", size=10)
        >>> print(up.description)
        up_10: the 10 value vectors nearest to 'up' (tokens ▁up, up); 8 of them list it among their top 10 tokens (82 in the table)
        >>> up.to_yaml("dictionaries.yaml")
    """
    total = table.ids.shape[0] * table.d_mlp
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= total:
        raise InputError(f"size={size!r} must be an int in 1..{total} (the neurons in the table).")
    word = str(concept).strip()
    reads = table.token_mask(word, "exact")
    tokens = ", ".join(display(table.vocab[i]) for i in np.flatnonzero(reads)[:8])
    listed = reads[table.ids].any(-1).ravel()  # [layers * d_mlp]: lists the concept in its top-k
    if not listed.any() and not allow_unmatched:
        raise InputError(
            f"no value vector in this table lists {word!r} (tokens {tokens}) among its top "
            f"{table.top_k} tokens, so the vectors nearest to it are not about it (on a random "
            "model they are action tokens). Project more tokens (project_value_vectors(top_k=...)) "
            "or more layers, look for another word (table.find(word, match='nocase')), or pass "
            "allow_unmatched=True (CLI: --allow-unmatched) to take the nearest vectors anyway."
        )
    similarity = concept_similarity(table, word).ravel()
    order = np.argsort(-similarity, kind="stable")[:size]
    rows, neurons = np.divmod(order, table.d_mlp)
    name = f"{word}_{size}"
    found = table.cluster_of(zip(rows.tolist(), neurons.tolist()), name=name)
    hits = int(listed[order].sum())
    found.description = (
        f"{name}: the {size} value vectors nearest to {word!r} (tokens {tokens}); {hits} of them "
        f"list it among their top {table.top_k} tokens ({int(listed.sum())} in the table)"
        + ("" if listed.any() else "; none does: allow_unmatched=True took the nearest anyway")
    )
    return found


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def _embedding_norms(table: ValueVectorTable, ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``|sum_j w_j E[t_j]|`` per value vector, computed in chunks and cached on the table."""
    k = ids.shape[-1]
    if k not in table._norms:
        store = table.embeddings
        flat_ids, flat_w = ids.reshape(-1, k), weights.reshape(-1, k)
        norms = np.empty(len(flat_ids), dtype=np.float32)
        step = max(1, CHUNK_VALUES // (k * store.shape[1]))
        for a in range(0, len(flat_ids), step):
            rows = store[flat_ids[a : a + step]].astype(np.float32)  # [n, k, d_model]
            vectors = np.matmul(flat_w[a : a + step, None, :], rows)[:, 0]
            norms[a : a + step] = np.linalg.norm(vectors, axis=-1)
        table._norms[k] = np.maximum(norms.reshape(ids.shape[:-1]), np.finfo(np.float32).tiny)
    return table._norms[k]
