"""Random controls: the same steering at random sites of the same shape, a shift scored against theirs, and Holm's correction over a grid of such scores."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from ..errors import InputError
from ..edits import as_list


def random_control(steering: Any, seed: int, model: Any) -> list:
    """The steering with every cluster replaced by a random one of the same size per layer.

    Every added direction is replaced too, by a random one of the same norm.

    Example:
        >>> control = random_control(Clamp(up, 4.0), seed=0, model=model)
    """
    rng = np.random.default_rng(seed)
    return [intervention.random_like(model, seed, rng) for intervention in as_list(steering)]


class ControlScore(NamedTuple):
    """A shift scored against the shifts of ``n`` random controls.

    ``z``: ``(shift - mean) / std``, meaningful only if the controls' shifts are normal.
    ``p``: the rank p-value, ``(1 + controls at least as far on the tested side) / (n + 1)``,
    which assumes nothing of their distribution; ``p_min = 1 / (n + 1)`` is the smallest p
    that ``n`` controls can give.
    """

    mean: float
    std: float
    z: float
    p: float
    p_min: float
    n: int


def z_against(shift: float, controls, side: int = 1) -> ControlScore:
    """``shift`` scored among the controls' shifts (non-finite ones left out).

    Returns their mean, standard deviation (ddof=1), the z-score, and the one-sided rank
    p-value on ``side`` (+1: the steering should raise the measure, -1: lower it; 0:
    two-sided, by distance from the controls' mean). Ties count against the steering.

    z is NaN with fewer than two controls (or a NaN shift). When the controls shifted alike, to
    float precision, they give no spread to measure by: z is 0 if ``shift`` equals theirs (to
    that precision too), else ±inf.

    Example:
        >>> z_against(0.4, [0.0, 0.1, -0.1])
        ControlScore(mean=0.0, std=0.1, z=4.0, p=0.25, p_min=0.25, n=3)
    """
    if side not in (-1, 0, 1):
        raise InputError(f"side={side!r} must be 1 (the steering should raise the measure), -1 (lower it) "
                         "or 0 (either way).")
    values = np.asarray(controls, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    std = float(values.std(ddof=1)) if n > 1 else float("nan")
    p_min = 1.0 / (n + 1)
    if not np.isfinite(shift):
        return ControlScore(mean, std, float("nan"), float("nan"), p_min, n)
    if side:
        beyond = int(np.sum(side * values >= side * shift))
    else:
        beyond = int(np.sum(np.abs(values - mean) >= abs(shift - mean))) if n else 0
    p = (1 + beyond) / (n + 1)
    return ControlScore(mean, std, z_score(shift, mean, std, n), p, p_min, n)


def z_score(shift: float, mean: float, std: float, n: int) -> float:
    """``(shift - mean) / std`` among ``n`` controls, by `z_against`'s rules for no spread.

    NaN with fewer than two controls; when the controls' spread is float rounding, 0 for a
    shift equal to their mean (to that precision), else ±inf. Reads stored rows back too.

    Example:
        >>> z_score(0.996078431372549, 0.9960784313725491, 1.1e-16, 99)
        0.0
    """
    noise = 1e-12 * max(1.0, abs(mean), abs(shift))  # float rounding of equal shifts, not a spread
    if n < 2 or not np.isfinite(shift):
        return float("nan")
    if std > noise:
        return float((shift - mean) / std)
    return 0.0 if abs(shift - mean) <= noise else float(np.inf * np.sign(shift - mean))


def check_sides(sides: Any, names, measures) -> dict:
    """``sides`` ({steering: {measure: +1, -1 or 0}}) checked against the steerings and measures.

    +1 expects a rise, -1 a fall, 0 either. Only steerings in ``names`` and measures in ``measures`` may appear. Returns it as a plain
    dict (``{}`` for None).
    """
    if sides is None:
        return {}
    if not isinstance(sides, Mapping):
        raise InputError(f"sides must be a dict {{steering: {{measure: 1 or -1}}}}, got {type(sides).__name__}.")
    names, measures = list(names), list(measures)
    for name, wanted in sides.items():
        if name not in names:
            raise InputError(f"sides names {name!r}, which is not a steering here ({names}).")
        if not isinstance(wanted, Mapping) or not wanted:
            raise InputError(f"sides[{name!r}] must be a dict {{measure: 1 or -1}}, got {wanted!r}.")
        for measure, side in wanted.items():
            if measure not in measures:
                raise InputError(f"sides[{name!r}] names the measure {measure!r}; the measures are {measures}.")
            if isinstance(side, bool) or side not in (-1, 0, 1):
                raise InputError(f"sides[{name!r}][{measure!r}]={side!r} must be 1 (raise), -1 (lower) or 0 (either).")
    return {name: dict(wanted) for name, wanted in sides.items()}


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaNs stay NaN and do not count).

    The i-th smallest of m becomes ``max over j <= i of min(1, (m - j + 1) p_(j))``. A cell
    holds at level alpha for the whole family when its adjusted p is at most alpha.

    Example:
        >>> holm([0.01, 0.04, 0.03, 0.005])
        array([0.03, 0.06, 0.06, 0.02])
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size and (np.any(p[finite] < 0) or np.any(p[finite] > 1)):
        raise InputError(f"p-values must lie in [0, 1], got {p[finite].min()}..{p[finite].max()}.")
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out
