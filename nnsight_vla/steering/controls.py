"""Random controls: the same steering at random sites of the same shape."""

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
