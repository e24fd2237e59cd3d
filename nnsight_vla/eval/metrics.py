"""Behavioural metrics of one episode, from its end-effector path and actions."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InputError

AXES = ("x", "y", "z")

#: Per-episode metrics summarised, compared and plotted by `evaluate`.
METRICS = ("success", "length", "path_length", "displacement_per_step", "z_displacement", "mean_speed", "max_speed",
           "min_height")


@dataclass
class EpisodeMetrics:
    """What one rollout did.

    Attributes:
        success: Whether the task was completed.
        length: Control steps taken.
        path_length: Total end-effector path length, sum of |p[t+1] - p[t]| (metres).
        axis_displacement: Path length along each of x, y, z: sum of |Δx|, |Δy|, |Δz|.
        net_displacement: p[T] - p[0] per axis.
        displacement_per_step: path_length / length — the displacement controlled for episode
            length (longer episodes travel further whatever the steering).
        z_displacement: The net change of height, p[T].z - p[0].z (the "up"/"down" measure).
        mean_speed, max_speed: |Δp| per second at the control frequency.
        min_height: The lowest z reached.

    An episode that failed (see `rollout.rollout`) has the metrics of its path up to the
    failure, and ``None`` for every measure of motion when it failed before its first
    observation; `evaluate` counts it as a failure in the success rate and leaves it out of
    the other metrics' means and tests.
    """

    success: bool
    length: int
    path_length: float
    axis_displacement: dict[str, float]
    net_displacement: dict[str, float]
    displacement_per_step: float
    z_displacement: float
    mean_speed: float
    max_speed: float
    min_height: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The metrics as a plain dict (``extra`` and the per-axis dicts nested)."""
        return asdict(self)


def episode_metrics(path, success: bool, control_hz: float = 20.0) -> EpisodeMetrics:
    """Metrics of an end-effector ``path`` (``[T, 3]`` positions, one per control step).

    Example:
        >>> m = episode_metrics([[0, 0, 1], [0.3, 0.4, 1]], success=True, control_hz=10)
        >>> m.path_length, m.max_speed
        (0.5, 5.0)
    """
    path = np.asarray(path, dtype=np.float64)
    if path.ndim != 2 or path.shape[1] != 3 or len(path) < 1:
        raise InputError(f"path must be [T, 3] end-effector positions, got shape {path.shape}.")
    if control_hz <= 0:
        raise InputError(f"control_hz must be positive, got {control_hz}.")
    steps = np.diff(path, axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    speeds = lengths * control_hz
    n = len(steps)
    return EpisodeMetrics(
        success=bool(success),
        length=n,
        path_length=float(lengths.sum()),
        axis_displacement={a: float(np.abs(steps[:, i]).sum()) for i, a in enumerate(AXES)},
        net_displacement={a: float(path[-1, i] - path[0, i]) for i, a in enumerate(AXES)},
        displacement_per_step=float(lengths.sum() / n) if n else 0.0,
        z_displacement=float(path[-1, 2] - path[0, 2]),
        mean_speed=float(speeds.mean()) if n else 0.0,
        max_speed=float(speeds.max()) if n else 0.0,
        min_height=float(path[:, 2].min()),
    )
