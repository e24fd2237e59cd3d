"""Paired comparisons between conditions: differences, bootstrap intervals, tests, effect sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError


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
