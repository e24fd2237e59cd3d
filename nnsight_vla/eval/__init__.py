"""Closed-loop evaluation in LIBERO: paired conditions, episode metrics, statistics, plots.

Names are imported on first use (PEP 562), so `EvalConfig` (which the command line's options
are built from) loads without torch or LIBERO."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS = {
    "EvalConfig": "config", "EvalResult": "evaluate", "evaluate": "evaluate", "EpisodeMetrics": "metrics",
    "episode_metrics": "metrics", "Simulators": "rollout", "PairedComparison": "stats",
    "paired_comparison": "stats",
}
__all__ = sorted([*_EXPORTS, "random_control"])


class _Package(types.ModuleType):
    """Keeps the function `evaluate` when its submodule ``nnsight_vla.eval.evaluate`` is imported
    (the import would set the package's attribute to the module)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if _EXPORTS.get(name) == name and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name == "random_control":
        from ..steering import random_control

        return random_control
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
