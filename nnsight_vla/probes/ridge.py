"""Ridge regression in closed form from per-fold Gram matrices: every alpha, inner fold, target and shuffle from one pass over the rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

CHUNK = 8192  # rows per Gram update


def ridge_probes(
    x: np.ndarray,
    ys: dict,
    final: Sequence[np.ndarray],
    outer: Sequence[Sequence[np.ndarray]],
    alphas: tuple[float, ...],
    sources: Sequence[np.ndarray],
) -> dict:
    """Nested cross-validated ridge for every regression target and its shuffles at one site.

    Args:
        x: ``[rows, width]`` activations.
        ys: ``name -> [rows]`` regression targets.
        final: Validation row sets over all rows (selects the final alpha).
        outer: Per outer fold, its inner validation row sets; their union is the fold's
            training rows and every other row is its test rows.
        alphas: Regularisation grid, strongest first (wins ties).
        sources: Per shuffle, the row each row takes its target from.

    Returns:
        ``name -> (scores [folds], chance [shuffles, folds], alpha, (weights [1, width], None))``
        with R² scores and raw-space float32 weights.
    """
    Y = np.stack([y.astype(np.float64)[src] for y in ys.values()
                  for src in [slice(None), *sources]], 1)
    Y -= Y.mean(0)
    shift, grid, cols = x.mean(0, dtype=np.float64), np.array(alphas), np.arange(Y.shape[1])
    cells = [_Stats.of(x, Y, v, shift) for v in final]
    total = sum(cells[1:], cells[0])
    best = _select(cells, total, grid, shift)
    A, _ = _ridge_fit(total, grid, shift)
    scores = np.empty((len(outer), Y.shape[1]))
    for k, inner in enumerate(outer):
        cells = [_Stats.of(x, Y, v, shift) for v in inner]
        train = sum(cells[1:], cells[0])
        chosen = _select(cells, train, grid, shift)
        scores[k] = _r2(total - train, *_ridge_fit(train, grid, shift))[chosen, cols]
    out, per = {}, 1 + len(sources)
    for i, name in enumerate(ys):
        c = i * per
        weights = torch.from_numpy(A[best[c], :, c]).float()[None]
        chance = scores[:, c + 1 : c + per].T
        out[name] = (scores[:, c], chance, alphas[best[c]], (weights, None))
    return out


class _Stats:
    """Sums over a set of rows (after a shift): count, Σx, Σxxᵀ, ΣxYᵀ, ΣY, ΣY²."""

    def __init__(self, n, s, G, B, t, q):
        self.n, self.s, self.G, self.B, self.t, self.q = n, s, G, B, t, q

    @classmethod
    def of(cls, x: np.ndarray, Y: np.ndarray, rows: np.ndarray, shift: np.ndarray) -> _Stats:
        p, m = x.shape[1], Y.shape[1]
        st = cls(len(rows), np.zeros(p), np.zeros((p, p)), np.zeros((p, m)), np.zeros(m),
                 np.zeros(m))
        for a in range(0, len(rows), CHUNK):
            idx = rows[a : a + CHUNK]
            xc, yc = x[idx].astype(np.float64) - shift, Y[idx]
            st.G += xc.T @ xc
            st.B += xc.T @ yc
            st.s += xc.sum(0)
            st.t += yc.sum(0)
            st.q += (yc * yc).sum(0)
        return st

    def __add__(self, other):
        return _Stats(*(a + b for a, b in zip(vars(self).values(), vars(other).values())))

    def __sub__(self, other):
        return _Stats(*(a - b for a, b in zip(vars(self).values(), vars(other).values())))


def _ridge_fit(tr: _Stats, alphas: np.ndarray, shift: np.ndarray):
    """Ridge on standardised rows for every alpha.

    Returns raw-space weights ``[alphas, p, m]`` and intercepts ``[alphas, m]`` (in shifted
    coordinates).
    """
    mu, ybar = tr.s / tr.n, tr.t / tr.n
    Gc = tr.G - tr.n * np.outer(mu, mu)
    var = Gc.diagonal().clip(0) / tr.n
    eps = np.finfo(np.float64).eps  # StandardScaler's test for a constant column (scale 1)
    sd = np.where(var > tr.n * eps * var + (tr.n * (mu + shift) * eps) ** 2, np.sqrt(var), 1.0)
    lam, V = np.linalg.eigh(Gc / np.outer(sd, sd))
    Vb = V.T @ ((tr.B - tr.n * np.outer(mu, ybar)) / sd[:, None])
    A = (V @ (Vb / (lam[None, :, None] + alphas[:, None, None]))) / sd[:, None]
    return A, ybar - np.einsum("p,apm->am", mu, A)


def _r2(val: _Stats, A: np.ndarray, d: np.ndarray) -> np.ndarray:
    """R² ``[alphas, m]`` of ``x @ A + d`` on the rows summed in ``val`` (as r2_score)."""
    pred_sq = (A * (val.G @ A)).sum(1) + 2 * d * (val.s @ A) + val.n * d * d
    cross = (A * val.B).sum(1) + d * val.t
    ss_res, ss_tot = val.q - 2 * cross + pred_sq, val.q - val.t**2 / val.n
    constant = ss_tot <= 1e-12 * np.maximum(val.q, 1e-300)  # sklearn: a constant target scores 0
    return np.where(constant, 0.0, 1 - ss_res / np.where(constant, 1.0, ss_tot))


def _select(cells: list[_Stats], train: _Stats, alphas, shift) -> np.ndarray:
    """Per column, the index of the alpha with the best mean R² over the inner folds."""
    return np.mean([_r2(v, *_ridge_fit(train - v, alphas, shift)) for v in cells], 0).argmax(0)
