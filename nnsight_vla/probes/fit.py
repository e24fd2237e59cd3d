"""`fit_probes`: linear probes from activations to action targets, cross-validated by episode."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..sites import Site
from .report import ProbeResults, table_row
from .ridge import ridge_probes

TASKS = ("regression", "classification")
MAX_CLASSES = 20  # numbers with at most this many whole values are inferred to be classes
MAX_LABELS = 100  # the most classes a classification target may have
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(5, -1, 7))  # strongest first: wins ties


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
    score (ties: the strongest). Classification targets use `StratifiedGroupKFold` (no
    shuffle) for both instead: still whole episodes, but each class's episodes spread over
    the folds, so a class pattern across episodes (task = episode % 3) does not leave a
    training set with one class; where it cannot split (e.g. it would leave a fold empty),
    `GroupKFold`. ``score``: mean over outer folds, 95 % t-interval. ``alpha`` and
    `ProbeResults.direction`: the same selection and a final fit on all rows. Ridge runs in
    closed form on Gram matrices (`.ridge`: one pass over the rows per outer fold serves
    every inner fold, alpha, target and shuffle; memory grows with width², time with
    width³), equal to scikit-learn's ``Ridge`` to 1e-12 (benchmarks/probe_fit.py).

    Chance: the same procedure on targets shuffled across episodes, ``shuffles`` times. Each
    episode gets the target sequence of another episode (a random derangement of episodes;
    rows of an episode in array order, resampled in time to its length). What a target does
    within an episode (constant per episode, smooth in time, its class balance) survives;
    only the link between an episode's activations and its own targets is cut. Shuffling rows
    would break that structure and make chance too easy to beat. What episodes share at the
    same time step stays too: a gripper that closes mid-way in every episode has a high chance
    level, so a score above it means the activations carry this episode's target, beyond the
    common time course. Stratified folds follow the shuffled classes, as for a real target.
    ``chance``: mean over shuffles and folds, with a t-interval over the folds' means;
    ``shuffles=0``: NaN.

    Args:
        features: ``(Site, call) -> [rows, width]`` activations (numpy or torch).
        targets: ``name -> [rows]`` values, e.g. ``"action[0]"``, ``"gripper"``, ``"task"``.
        episodes: ``[rows]`` episode id of each row; folds never split an episode.
        tasks: ``name -> "regression" | "classification"``. Default: classification for
            bool or text values, and for numbers that are all whole with at most 20 distinct
            values (e.g. a gripper of -1/1, a task index); regression otherwise.
        folds: Outer cross-validation folds (episodes >= folds).
        inner_folds: Inner cross-validation folds, which choose the regularisation in each
            outer training set (it must hold >= inner_folds episodes).
        alphas: Regularisation grid (default 1e5 ... 0.1, 7 values).
        shuffles: Shuffled-target reruns for the chance level.
        seed: Seeds the shuffles.
        progress: Show a tqdm bar over (feature, target) fits.

    Example:
        >>> res = fit_probes({(Site(3), 0): acts}, {"gripper": grip}, episodes)
        >>> res.table[["layer", "target", "score", "chance"]]
        >>> res.direction(Site(3), "gripper")        # float32 [width], raw activation space
    """
    import sklearn

    episodes = _check_episodes(episodes)
    features = _check_features(features, len(episodes))
    values, kinds = _check_targets(targets, len(episodes), tasks)
    if not isinstance(shuffles, int) or shuffles < 0:
        raise InputError(f"shuffles={shuffles!r} must be a whole number >= 0 (0: no chance).")
    plan = _Plan.make(episodes, folds, inner_folds, _check_alphas(alphas), shuffles, seed)
    regression = [t for t in values if kinds[t] == "regression"]
    rows, probes = [], {}
    total = len(features) * len(values)
    # inputs are checked above (finite, shapes), so scikit-learn's per-fit checks can go: they
    # took about a third of the logistic probes' time
    with tqdm(total=total, desc="probes", unit="fit", disable=not progress) as bar, \
            sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for (site, call), x in features.items():
            fitted = ridge_probes(x, {t: values[t] for t in regression}, plan.final,
                                  [inner for _, _, inner in plan.outer], plan.alphas,
                                  plan.sources) if regression else {}
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


def episode_folds(episodes: np.ndarray, k: int, labels: Any = None) -> list:
    """``k`` (train rows, test rows) splits that never split an episode.

    `GroupKFold(k)`; given class ``labels``, `StratifiedGroupKFold(k)` (no shuffle), which
    spreads each class's episodes over the folds, or `GroupKFold(k)` where it cannot (it
    refuses the labels or leaves a fold empty).

    Example:
        >>> episodes = np.repeat(np.arange(6), 2)
        >>> [np.unique(episodes[te]) for _, te in episode_folds(episodes, 2, episodes % 2)]
        [array([0, 3, 4]), array([1, 2, 5])]
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    rows = np.arange(len(episodes))
    if labels is not None:
        codes = np.unique(np.asarray(labels), return_inverse=True)[1]
        try:
            with warnings.catch_warnings():  # a rare class: its rows are in fewer than k folds
                warnings.filterwarnings("ignore", "The least populated class", UserWarning)
                split = list(StratifiedGroupKFold(k).split(rows, codes, groups=episodes))
            if all(len(te) for _, te in split):
                return split
        except ValueError:
            pass
    return list(GroupKFold(k).split(rows, groups=episodes))


@dataclass
class _Plan:
    """The folds, alphas and shuffles that every (feature, target) fit shares."""

    outer: list  # (train rows, test rows, inner validation row sets), by GroupKFold
    final: list  # inner validation row sets over all rows
    alphas: tuple[float, ...]
    sources: list  # per shuffle, the row each row takes its target from
    episodes: np.ndarray
    folds: int
    inner_folds: int
    stalled: int = 0  # logistic fits that hit max_iter
    strata: dict = field(default_factory=dict)  # class pattern -> each split's fold per episode

    @classmethod
    def make(cls, episodes, folds, inner_folds, alphas, shuffles, seed) -> _Plan:
        for name, k in (("folds", folds), ("inner_folds", inner_folds)):
            if not isinstance(k, int) or k < 2:
                raise InputError(f"{name}={k!r} must be a whole number >= 2.")
        count = len(np.unique(episodes))
        if count < 2:
            raise InputError(f"these rows come from {count} episode(s); episode-split probes hold out whole "
                             "episodes, so they need at least 2 (folds >= 2). Collect more episodes.")
        if count < folds:
            raise InputError(f"{count} episodes cannot fill folds={folds}; pass folds<={count} "
                             "or more episodes.")
        rng = np.random.default_rng(seed)
        sources = [episode_shuffle(episodes, rng) for _ in range(shuffles)]
        plan = cls([], [], alphas, sources, episodes, folds, inner_folds)
        plan.outer, plan.final = plan.splits()
        return plan

    def splits(self, y: Any = None) -> tuple[list, list]:
        """``(outer, final)`` as in the fields; for class labels ``y``, stratified by class.

        Stratified folds depend on ``y`` (each shuffle has its own); they are kept per class
        pattern as a fold per episode, so every feature reuses them at little memory.
        """
        if y is None:
            return self._make_splits(None)[0]
        labels = np.unique(y, return_inverse=True)[1]
        key = labels.tobytes()
        if key not in self.strata:
            self.strata[key] = self._make_splits(labels)[1]
        _, inverse = np.unique(self.episodes, return_inverse=True)
        outer, *inner, final = [ids[inverse] for ids in self.strata[key]]

        def sets(fold, k):
            return [np.flatnonzero(fold == j) for j in range(k)]

        return ([(np.flatnonzero(outer != i), te, sets(inner[i], self.inner_folds))
                 for i, te in enumerate(sets(outer, self.folds))], sets(final, self.inner_folds))

    def _make_splits(self, labels):
        """``(outer, final)`` and the same as a fold per episode: outer, each inner, final."""
        episodes, inner_folds = self.episodes, self.inner_folds
        first = np.unique(episodes, return_index=True)[1]
        per_episode = []

        def folds(rows, k):
            split = episode_folds(episodes[rows], k, None if labels is None else labels[rows])
            fold = np.full(len(episodes), -1)
            for j, (_, te) in enumerate(split):
                fold[rows[te]] = j
            per_episode.append(fold[first])
            return split

        def validation(rows):
            if len(np.unique(episodes[rows])) < inner_folds:
                raise InputError(f"an outer training set holds fewer than inner_folds={inner_folds}"
                                 " episodes; pass fewer inner_folds or folds, or more episodes.")
            return [rows[v] for _, v in folds(rows, inner_folds)]

        split = folds(np.arange(len(episodes)), self.folds)
        outer = [(tr, te, validation(tr)) for tr, te in split]
        return (outer, validation(np.arange(len(episodes)))), per_episode


# -- logistic regression ------------------------------------------------------------------


def _logistic(x, y, train, tests, alphas, target, plan):
    """Balanced accuracy ``[alphas, tests]`` of models fitted on ``train``.

    Also returns the last model and its scaler.
    """
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
                          plan)[0][0, 0] for tr, te, inner in plan.splits(y)[0]]

    alpha = _logistic_alpha(x, y, plan.splits(y)[1], target, plan)
    _, model, scaler = _logistic(x, y, np.arange(len(y)), [], [alpha], target, plan)
    weights = torch.from_numpy(model.coef_ / scaler.scale_).float()
    chance = np.array([nested(y[src]) for src in plan.sources]).reshape(len(plan.sources), len(plan.splits(y)[0]))
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
