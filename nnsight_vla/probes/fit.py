"""`fit_probes`: linear probes from activations to action targets, cross-validated by episode."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..sites import Site
from .report import ProbeResults, table_row

TASKS = ("regression", "classification")
MAX_CLASSES = 20  # numbers with at most this many whole values are inferred to be classes
MAX_LABELS = 100  # the most classes a classification target may have
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(5, -1, 7))  # strongest first: wins ties
CHUNK = 8192  # rows per Gram update


def fit_probes(
    features: Mapping[tuple[Site, int], Any],
    targets: Mapping[str, Any],
    episodes: Any,
    *,
    tasks: Mapping[str, str] | None = None,
    folds: int = 5,
    inner_folds: int = 3,
    alphas: Any = None,
    shuffles: int = 3,
    seed: int = 0,
    progress: bool = True,
) -> ProbeResults:
    """A linear probe per (site, call, target), scored on held-out episodes.

    Regression targets: ridge, scored by R². Classification targets: (multinomial) logistic
    regression, scored by balanced accuracy (mean recall over the classes in the held-out
    fold: always answering "open" scores 1/classes, not the share of open frames). Features
    are standardised on training rows only. Outer folds: `GroupKFold(folds)` by episode; in
    each outer training set the regularisation (ridge's alpha; 1/C for logistic) is chosen
    from ``alphas`` by an inner `GroupKFold(inner_folds)`, again by episode, on the mean inner
    score (ties: the strongest). ``score``: mean over outer folds, 95 % t-interval. ``alpha``
    and `ProbeResults.direction`: the same selection and a final fit on all rows. Ridge runs
    in closed form on Gram matrices (one pass over the rows per outer fold serves every inner
    fold, alpha, target and shuffle; memory grows with width², time with width³), equal to
    scikit-learn's ``Ridge`` to 1e-12 (benchmarks/probe_fit.py).

    Chance: the same procedure on targets shuffled across episodes, ``shuffles`` times. Each
    episode gets the target sequence of another episode (a random derangement of episodes;
    rows of an episode in array order, resampled in time to its length). What a target does
    within an episode (constant per episode, smooth in time, its class balance) survives;
    only the link between an episode's activations and its own targets is cut. Shuffling rows
    would break that structure and make chance too easy to beat. What episodes share at the
    same time step stays too: a gripper that closes mid-way in every episode has a high chance
    level, so a score above it means the activations carry this episode's target, beyond the
    common time course. ``chance``: mean over shuffles and folds, with a t-interval over the
    folds' means; ``shuffles=0``: NaN.

    Args:
        features: ``(Site, call) -> [rows, width]`` activations (numpy or torch).
        targets: ``name -> [rows]`` values, e.g. ``"action[0]"``, ``"gripper"``, ``"task"``.
        episodes: ``[rows]`` episode id of each row; folds never split an episode.
        tasks: ``name -> "regression" | "classification"``. Default: classification for
            bool or text values, and for numbers that are all whole with at most 20 distinct
            values (e.g. a gripper of -1/1, a task index); regression otherwise.
        folds, inner_folds: Outer and inner cross-validation folds (episodes >= folds).
        alphas: Regularisation grid (default 1e5 ... 0.1, 7 values).
        shuffles: Shuffled-target reruns for the chance level.
        seed: Seeds the shuffles.
        progress: Show a tqdm bar over (feature, target) fits.

    Example:
        >>> res = fit_probes({(Site(3), 0): acts}, {"gripper": grip}, episodes)
        >>> res.table[["layer", "target", "score", "chance"]]
        >>> res.direction(Site(3), "gripper")        # float32 [width], raw activation space
    """
    episodes = _check_episodes(episodes)
    features = _check_features(features, len(episodes))
    values, kinds = _check_targets(targets, len(episodes), tasks)
    if not isinstance(shuffles, int) or shuffles < 0:
        raise InputError(f"shuffles={shuffles!r} must be a whole number >= 0 (0: no chance).")
    plan = _Plan.make(episodes, folds, inner_folds, _check_alphas(alphas), shuffles, seed)
    regression = [t for t in values if kinds[t] == "regression"]
    rows, probes = [], {}
    total = len(features) * len(values)
    with tqdm(total=total, desc="probes", unit="fit", disable=not progress) as bar:
        for (site, call), x in features.items():
            fitted = _ridge_probes(x, {t: values[t] for t in regression}, plan) if regression \
                else {}
            bar.update(len(regression))
            for target in values:
                if target not in fitted:
                    fitted[target] = _logistic_probe(x, values[target], target, plan)
                    bar.update(1)
                scores, chance, alpha, probe = fitted[target]
                probes[(site, call, target)] = probe
                rows.append(table_row(site, call, target, kinds[target], scores, chance, alpha,
                                      episodes))
    if plan.stalled:
        warnings.warn(f"{plan.stalled} logistic fits stopped at max_iter; their held-out scores "
                      "still count.", stacklevel=2)
    settings = {"folds": folds, "inner_folds": inner_folds, "alphas": list(plan.alphas),
                "shuffles": shuffles, "seed": seed,
                "chance": "targets shuffled across episodes (a derangement, time-resampled)"}
    return ProbeResults.from_rows(rows, probes, settings)


# -- shuffles and splits ---------------------------------------------------------------


def episode_shuffle(episodes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices ``src`` such that ``y[src]`` gives every episode another episode's targets.

    Example:
        >>> episode_shuffle(np.array([0, 0, 1, 1]), np.random.default_rng(0))
        array([2, 3, 0, 1])
    """
    _, inverse = np.unique(episodes, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    perm = rng.permutation(len(members))
    while len(members) > 1 and (perm == np.arange(len(members))).any():
        perm = rng.permutation(len(members))
    src = np.empty(len(episodes), dtype=np.int64)
    for rows, other in zip(members, perm):
        donor = members[other]
        src[rows] = donor[np.arange(len(rows)) * len(donor) // len(rows)]
    return src


@dataclass
class _Plan:
    """The folds, alphas and shuffles that every (feature, target) fit shares."""

    outer: list  # (train rows, test rows, inner validation row sets)
    final: list  # inner validation row sets over all rows
    alphas: tuple[float, ...]
    sources: list  # per shuffle, the row each row takes its target from
    stalled: int = 0  # logistic fits that hit max_iter

    @classmethod
    def make(cls, episodes, folds, inner_folds, alphas, shuffles, seed) -> _Plan:
        from sklearn.model_selection import GroupKFold

        for name, k in (("folds", folds), ("inner_folds", inner_folds)):
            if not isinstance(k, int) or k < 2:
                raise InputError(f"{name}={k!r} must be a whole number >= 2.")
        count = len(np.unique(episodes))
        if count < folds:
            raise InputError(f"{count} episodes cannot fill folds={folds}; pass folds<={count} "
                             "or more episodes.")

        def validation(rows):
            if len(np.unique(episodes[rows])) < inner_folds:
                raise InputError(f"an outer training set holds fewer than inner_folds={inner_folds}"
                                 " episodes; pass fewer inner_folds or folds, or more episodes.")
            split = GroupKFold(inner_folds).split(rows, groups=episodes[rows])
            return [rows[v] for _, v in split]

        split = GroupKFold(folds).split(episodes, groups=episodes)
        outer = [(tr, te, validation(tr)) for tr, te in split]
        rng = np.random.default_rng(seed)
        sources = [episode_shuffle(episodes, rng) for _ in range(shuffles)]
        return cls(outer, validation(np.arange(len(episodes))), alphas, sources)


# -- ridge in closed form ---------------------------------------------------------------


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
    """Ridge on standardised rows for every alpha: raw-space weights ``[alphas, p, m]`` and
    intercepts ``[alphas, m]`` (in shifted coordinates)."""
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


def _ridge_probes(x: np.ndarray, ys: dict, plan: _Plan) -> dict:
    """Every regression target and its shuffles at one site, from shared Gram matrices."""
    Y = np.stack([y.astype(np.float64)[src] for y in ys.values()
                  for src in [slice(None), *plan.sources]], 1)
    Y -= Y.mean(0)
    shift, grid, cols = x.mean(0, dtype=np.float64), np.array(plan.alphas), np.arange(Y.shape[1])
    cells = [_Stats.of(x, Y, v, shift) for v in plan.final]
    total = sum(cells[1:], cells[0])
    best = _select(cells, total, grid, shift)
    A, _ = _ridge_fit(total, grid, shift)
    scores = np.empty((len(plan.outer), Y.shape[1]))
    for k, (_, _, inner) in enumerate(plan.outer):
        cells = [_Stats.of(x, Y, v, shift) for v in inner]
        train = sum(cells[1:], cells[0])
        chosen = _select(cells, train, grid, shift)
        scores[k] = _r2(total - train, *_ridge_fit(train, grid, shift))[chosen, cols]
    out, per = {}, 1 + len(plan.sources)
    for i, name in enumerate(ys):
        c = i * per
        weights = torch.from_numpy(A[best[c], :, c]).float()[None]
        chance = scores[:, c + 1 : c + per].T
        out[name] = (scores[:, c], chance, plan.alphas[best[c]], (weights, None))
    return out


# -- logistic regression ------------------------------------------------------------------


def _logistic(x, y, train, tests, alphas, target, plan):
    """Balanced accuracy ``[alphas, tests]`` of models fitted on ``train``; the last model and
    its scaler."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y[train])) < 2:
        raise InputError(f"target {target!r} has one class in the training episodes of a fold; "
                         "pass fewer folds or more episodes of each class.")
    scaler = StandardScaler().fit(x[train])
    xt, model = scaler.transform(x[train]), LogisticRegression(max_iter=500, warm_start=True)
    scores = np.empty((len(alphas), len(tests)))
    for a, alpha in enumerate(alphas):  # strongest first: each fit warm-starts the next
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.set_params(C=1 / alpha).fit(xt, y[train])
        plan.stalled += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        for j, te in enumerate(tests):
            with warnings.catch_warnings():  # a fold may lack a class: recall over those it has
                warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
                predicted = model.predict(scaler.transform(x[te]))
                scores[a, j] = balanced_accuracy_score(y[te], predicted)
    return scores, model, scaler


def _logistic_alpha(x, y, inner, target, plan) -> float:
    """The alpha with the best mean balanced accuracy over the validation sets ``inner``."""
    rows = np.concatenate(inner)
    scores = [_logistic(x, y, np.setdiff1d(rows, v), [v], plan.alphas, target, plan)[0][:, 0]
              for v in inner]
    return plan.alphas[int(np.mean(scores, 0).argmax())]


def _logistic_probe(x, y, target, plan):
    """Nested scores of ``y`` and its shuffles, the alpha chosen on all rows, the final probe."""
    def nested(y):
        return [_logistic(x, y, tr, [te], [_logistic_alpha(x, y, inner, target, plan)], target,
                          plan)[0][0, 0] for tr, te, inner in plan.outer]

    alpha = _logistic_alpha(x, y, plan.final, target, plan)
    _, model, scaler = _logistic(x, y, np.arange(len(y)), [], [alpha], target, plan)
    weights = torch.from_numpy(model.coef_ / scaler.scale_).float()
    chance = np.array([nested(y[src]) for src in plan.sources]).reshape(len(plan.sources), -1)
    return np.array(nested(y)), chance, alpha, (weights, model.classes_.tolist())


# -- input checks -----------------------------------------------------------------------


def _check_episodes(episodes) -> np.ndarray:
    episodes = np.asarray(episodes)
    if episodes.ndim != 1 or not len(episodes):
        raise InputError(f"episodes must be a 1-D array, one id per row; got {episodes.shape}.")
    if episodes.dtype.kind == "f" and np.isnan(episodes).any():
        raise InputError("episodes has NaNs; give every row its episode id.")
    return episodes


def _check_features(features, n) -> dict:
    if not features:
        raise InputError("features is empty; pass {(Site, call): [rows, width] array}.")
    out = {}
    for key, x in features.items():
        if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], Site)
                and isinstance(key[1], (int, np.integer))):
            raise InputError(f"feature key {key!r} is not (Site, call), e.g. (Site(12), 0).")
        x = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        where = f"features at {key[0]}, call {key[1]}"
        if x.ndim != 2 or len(x) != n:
            raise InputError(f"{where} have shape {x.shape}; expected [{n} rows, width] like "
                             "episodes (flatten calls and positions into rows first).")
        if not np.isfinite(x).all():
            raise InputError(f"{where} hold NaN or inf; drop or fill those rows first.")
        out[key] = x
    return out


def _check_targets(targets, n, tasks) -> tuple[dict, dict]:
    if not targets:
        raise InputError("targets is empty; pass {name: [rows] array}, e.g. {'gripper': grip}.")
    tasks = dict(tasks or {})
    if set(tasks) - set(targets):
        raise InputError(f"tasks names {sorted(set(tasks) - set(targets))}, which are not in "
                         f"targets {list(targets)}.")
    values, kinds = {}, {}
    for name, y in targets.items():
        y = np.asarray(y)
        if y.shape != (n,):
            raise InputError(f"target {name!r} has shape {y.shape}; expected [{n}] (one value "
                             "per row, like episodes).")
        numeric = y.dtype.kind in "iufb"
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise InputError(f"target {name!r} holds NaN or inf; drop those rows (from features "
                             "and episodes too).")
        count = len(np.unique(y))
        if count < 2:
            raise InputError(f"target {name!r} is constant; drop it (nothing to probe).")
        whole = not numeric or y.dtype.kind == "b" or (count <= MAX_CLASSES
                                                         and (y == y.round()).all())
        kinds[name] = kind = tasks.get(name, "classification" if whole else "regression")
        if kind not in TASKS:
            raise InputError(f"task {kind!r} of target {name!r} is not one of {list(TASKS)}.")
        if kind == "regression" and not numeric:
            raise InputError(f"target {name!r} is not numeric; pass tasks={{{name!r}: "
                             "'classification'}.")
        if kind == "classification" and count > MAX_LABELS:
            raise InputError(f"target {name!r} has {count} distinct values; pass tasks={{{name!r}"
                             f": 'regression'}} or bin it into at most {MAX_LABELS} classes.")
        values[name] = y
    return values, kinds


def _check_alphas(alphas) -> tuple[float, ...]:
    if alphas is None:
        return DEFAULT_ALPHAS
    grid = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    if grid.ndim != 1 or not len(grid) or not (np.isfinite(grid) & (grid > 0)).all():
        raise InputError(f"alphas={alphas!r} must be positive finite numbers, e.g. "
                         "np.logspace(5, -1, 7).")
    return tuple(float(a) for a in sorted(set(grid.tolist()), reverse=True))
