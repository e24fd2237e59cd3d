"""Rewired fraction: per layer, the share of value vectors whose top tokens are action tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..paths import writable_file, writing
from ..plotting import figure, save_png
from .table import ValueVectorTable


def rewired_mask(table: ValueVectorTable, k: int = 10, threshold: float = 0.5) -> np.ndarray:
    """``[layers, d_mlp]``: True where at least ``threshold`` of a vector's top ``k`` tokens are actions."""
    k = table._k(k)
    if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise InputError(f"threshold={threshold!r} must be a share in (0, 1], e.g. 0.5.")
    if table.action_token_ids is None:
        raise InputError(
            "this model has no action tokens, so no value vector can be rewired to them."
        )
    is_action = np.zeros(len(table.vocab), dtype=bool)
    ids = table.action_token_ids
    is_action[max(ids.start, 0) : min(ids.stop, len(table.vocab))] = True
    share = is_action[table.ids[..., :k]].mean(-1)
    return share >= threshold - 1e-9


def rewired_fraction(table: ValueVectorTable, k: int = 10, threshold: float = 0.5) -> np.ndarray:
    """Per layer of the table, the share of value vectors rewired for action prediction.

    A value vector counts as rewired when at least ``threshold`` of its top ``k`` tokens are
    action tokens (with ``k=10, threshold=0.5``: five or more of ten). The paper reports
    "less than 25 %" over all layers and plots the share per layer (its Fig. 2b).

    Example:
        >>> rewired_fraction(table, k=10, threshold=0.5)
        array([0.   , 0.002, ..., 0.31 ])
    """
    return rewired_mask(table, k, threshold).mean(-1)


def plot_rewired(
    table: ValueVectorTable, path: str | Path, k: int = 10, threshold: float = 0.5
) -> Path:
    """Bar chart of `rewired_fraction` per layer, written as a PNG; returns its path."""
    path = writable_file(path, "plot file")
    fraction = rewired_fraction(table, k, threshold)
    overall = float(rewired_mask(table, k, threshold).mean())
    fig = figure(max(6, 0.25 * len(fraction)), 3.5)
    ax = fig.subplots()
    ax.bar([str(layer) for layer in table.layers], 100 * fraction, color="tab:orange")
    ax.set_xlabel("layer")
    ax.set_ylabel("rewired value vectors (%)")
    ax.set_ylim(0, 100)
    ax.set_title(
        f"{table.info.get('model', '')}: rewired value vectors, all layers {100 * overall:.1f} %\n"
        f"(at least {threshold:g} of the top {k} tokens are action tokens)",
        fontsize=9,
    )
    ax.tick_params(axis="x", labelsize=7)
    with writing(path, "plot file"):
        return save_png(fig, path)
