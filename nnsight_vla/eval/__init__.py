"""Closed-loop evaluation in LIBERO: paired conditions, episode metrics, statistics, plots.

Names are imported on first use (PEP 562), so `EvalConfig` (which the command line's options
are built from) loads without torch or LIBERO.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from ..lazy import LazyPackage

_EXPORTS = {
    "EvalConfig": "config", "EvalResult": "evaluate", "evaluate": "evaluate", "EpisodeMetrics": "metrics",
    "episode_metrics": "metrics", "Simulators": "rollout", "PairedComparison": "stats",
    "paired_comparison": "stats",
}
__all__ = sorted([*_EXPORTS, "random_control"])


sys.modules[__name__].__class__ = LazyPackage  # keeps `evaluate` when its submodule is imported


def __getattr__(name: str) -> Any:
    if name == "random_control":
        from ..steering import random_control

        return random_control
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
