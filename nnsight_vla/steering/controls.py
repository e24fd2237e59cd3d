"""Random controls: the same steering at random sites of the same shape, and a shift scored against theirs."""

from __future__ import annotations

from typing import Any

import numpy as np

from .edits import as_list


def random_control(steering: Any, seed: int, model: Any) -> list:
    """The steering with every cluster replaced by a random one of the same size per layer
    (and every added direction by a random one of the same norm).

    Example:
        >>> control = random_control(Clamp(up, 4.0), seed=0, model=model)
    """
    rng = np.random.default_rng(seed)
    return [intervention.random_like(model, seed, rng) for intervention in as_list(steering)]


def z_against(shift: float, controls) -> tuple[float, float, float]:
    """``(mean, std, z)`` of ``shift`` among the controls' shifts: ``z = (shift - mean) / std``
    (ddof=1). NaN with fewer than two controls (or a NaN shift); ±inf (0 when equal) when the
    controls shifted alike, to float precision, and so did not give a spread to measure by.

    Example:
        >>> z_against(0.4, [0.0, 0.1, -0.1])
        (0.0, 0.1, 4.0)
    """
    values = np.asarray(controls, dtype=np.float64)
    values = values[np.isfinite(values)]
    mean = float(values.mean()) if len(values) else float("nan")
    std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    if len(values) < 2 or not np.isfinite(shift):
        return mean, std, float("nan")
    if std > 1e-12 * max(1.0, abs(mean), abs(shift)):  # a real spread, not float noise of equal shifts
        return mean, std, float((shift - mean) / std)
    return mean, std, 0.0 if shift == mean else float(np.inf * np.sign(shift - mean))
