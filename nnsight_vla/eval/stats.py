"""Paired comparisons between conditions: differences, bootstrap intervals, tests, effect sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..steering.controls import z_against
from .metrics import METRICS


@dataclass
class PairedComparison:
    """``treatment - baseline`` over matched episodes (same task, init state and seed).

    Attributes:
        n: Number of pairs.
        mean_difference: Mean of the paired differences.
        ci_low, ci_high: Percentile bootstrap interval of the mean difference.
        t_pvalue: Two-sided paired t-test.
        wilcoxon_pvalue: Two-sided Wilcoxon signed-rank test (1.0 when every difference is 0).
        effect_size: Cohen's d_z = mean / standard deviation of the differences.
    """

    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    t_pvalue: float
    wilcoxon_pvalue: float
    effect_size: float

    def to_dict(self) -> dict:
        """The comparison's fields as a plain dict."""
        return asdict(self)


def paired_comparison(
    baseline, treatment, *, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> PairedComparison:
    """Compare two conditions measured on the same episodes.

    Example:
        >>> c = paired_comparison([1.0, 2.0, 3.0], [2.0, 3.5, 4.0])
        >>> round(c.mean_difference, 3)
        1.167
    """
    from scipy import stats

    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(treatment, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"paired samples must be two 1-D arrays of one length, got {a.shape} and {b.shape}.")
    if len(a) < 2:
        raise InputError("a paired comparison needs at least 2 episode pairs.")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie in (0, 1), got {confidence}.")
    d = b - a
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    tail = (1 - confidence) / 2
    sd = d.std(ddof=1)
    if sd > 0:
        t_pvalue = float(stats.ttest_rel(b, a).pvalue)
    else:  # every pair differs by the same amount: no shift at all, or a certain one
        t_pvalue = 1.0 if d[0] == 0 else 0.0
    return PairedComparison(
        n=len(d),
        mean_difference=float(d.mean()),
        ci_low=float(np.quantile(means, tail)),
        ci_high=float(np.quantile(means, 1 - tail)),
        t_pvalue=t_pvalue,
        wilcoxon_pvalue=1.0 if not d.any() else float(stats.wilcoxon(d).pvalue),
        effect_size=0.0 if sd == 0 else float(d.mean() / sd),
    )


def failed(row: dict) -> bool:
    """Whether an episode's row records an exception that ended it."""
    return row.get("error") is not None


def condition_means(rows: list[dict], conditions: list[str], tasks: list[int]) -> dict:
    """Per condition: each metric's mean, ``episodes``, ``failed``, and per-task counts.

    Success is averaged over every episode, failed ones as 0; the other metrics over the
    episodes that did not fail (None when none is left). Per task there are
    ``task<t>_success_rate``, ``task<t>_episodes`` and ``task<t>_failed``.
    """
    out = {}
    for condition in conditions:
        mine = [r for r in rows if r["condition"] == condition]
        finished = [r for r in mine if not failed(r)]
        means: dict[str, Any] = {}
        for metric in METRICS:
            used = mine if metric == "success" else finished
            means[metric] = float(np.mean([r[metric] for r in used])) if used else None
        means["episodes"], means["failed"] = len(mine), len(mine) - len(finished)
        for task in tasks:
            of_task = [r for r in mine if r["task"] == task]
            means[f"task{task}_success_rate"] = float(np.mean([r["success"] for r in of_task]))
            means[f"task{task}_episodes"] = len(of_task)
            means[f"task{task}_failed"] = sum(map(failed, of_task))
        out[condition] = means
    return out


def paired_statistics(rows: list[dict], conditions: list[str]) -> dict:
    """Paired comparisons with the baseline.

    Success uses every pair (a failed episode is a failure); the other metrics leave out the
    pairs where either episode failed, and then say how many (``failed_pairs_left_out``).
    """
    if "baseline" not in conditions:
        return {}
    by = {(r["task"], r["episode"], r["condition"]): r for r in rows}
    keys = sorted({(r["task"], r["episode"]) for r in rows})
    out = {}
    for condition in conditions:
        if condition == "baseline":
            continue
        out[condition] = {}
        intact = [k for k in keys if not failed(by[k + ("baseline",)]) and not failed(by[k + (condition,)])]
        for metric in METRICS:
            used = keys if metric == "success" else intact
            base = [float(by[k + ("baseline",)][metric]) for k in used]
            other = [float(by[k + (condition,)][metric]) for k in used]
            if len(used) >= 2:
                entry = paired_comparison(base, other).to_dict()
            elif used:
                entry = {"n": 1, "mean_difference": other[0] - base[0], "note": "one pair: no test"}
            else:
                entry = {"n": 0, "note": "no pair without a failed episode: no comparison"}
            if len(used) < len(keys):
                entry["failed_pairs_left_out"] = len(keys) - len(used)
            out[condition][metric] = entry
    return out


def versus_random(rows: list[dict], groups: dict[str, list[str]],
                  sides: dict[str, dict[str, int]] | None = None) -> dict:
    """Each steering's paired shift from the baseline against its random controls' shifts.

    Returns ``{steering: {metric: {"shift", "random_mean", "random_std", "z", "p", "p_min",
    "side", "controls", "pairs"}}}``.

    A shift is the mean of ``condition - baseline`` over the episodes where neither failed
    (success: over all); it is scored among the controls' shifts by `steering.z_against`: the
    z-score (which assumes normal controls) and the rank p-value, one-sided where ``sides``
    says which way a steering should move a metric (``{"up": {"z_displacement": 1}}``),
    two-sided elsewhere. Steerings without controls are left out.

    Example:
        >>> versus_random(rows, {"up": ["up/random0", "up/random1", "up/random2"]})["up"]["z_displacement"]["z"]
    """
    by = {(r["task"], r["episode"], r["condition"]): r for r in rows}
    keys = sorted({(r["task"], r["episode"]) for r in rows})

    def shift(condition: str, metric: str) -> tuple[float, int]:
        used = [k for k in keys if metric == "success"
                or not (failed(by[k + ("baseline",)]) or failed(by[k + (condition,)]))]
        if not used:
            return float("nan"), 0
        return float(np.mean([float(by[k + (condition,)][metric]) - float(by[k + ("baseline",)][metric])
                              for k in used])), len(used)

    out: dict = {}
    for name, labels in groups.items():
        if not labels:
            continue
        out[name] = {}
        for metric in METRICS:
            own, pairs = shift(name, metric)
            randoms = [shift(label, metric)[0] for label in labels]
            side = (sides or {}).get(name, {}).get(metric, 0)
            score = z_against(own, randoms, side)
            out[name][metric] = {"shift": own, "random_mean": score.mean, "random_std": score.std, "z": score.z,
                                 "p": score.p, "p_min": score.p_min, "side": side, "controls": score.n,
                                 "pairs": pairs}
    return out
