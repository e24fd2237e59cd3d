"""Closed-loop evaluation in LIBERO: paired conditions, episode metrics, statistics, plots."""

from ..steering import random_control
from .evaluate import EvalResult, evaluate
from .metrics import EpisodeMetrics, episode_metrics
from .rollout import Simulators
from .stats import PairedComparison, paired_comparison

__all__ = [
    "EpisodeMetrics", "EvalResult", "PairedComparison", "episode_metrics", "evaluate",
    "paired_comparison", "random_control", "Simulators",
]
