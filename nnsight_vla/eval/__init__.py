"""Closed-loop evaluation in LIBERO: paired conditions, episode metrics, statistics, plots."""

from .evaluate import EvalResult, evaluate, random_control
from .metrics import EpisodeMetrics, episode_metrics
from .stats import PairedComparison, paired_comparison

__all__ = [
    "EpisodeMetrics", "EvalResult", "PairedComparison", "episode_metrics", "evaluate",
    "paired_comparison", "random_control",
]
