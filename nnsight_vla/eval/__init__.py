"""Closed-loop evaluation: episode metrics and paired statistics (LIBERO rollouts: in progress)."""

from .metrics import EpisodeMetrics, episode_metrics
from .stats import PairedComparison, paired_comparison

__all__ = ["EpisodeMetrics", "PairedComparison", "episode_metrics", "paired_comparison"]
