"""`EvalConfig`: one evaluation's settings, whole.

`evaluate`, the Ray workers and the records take it as one object; ``run.json`` holds its
`record`; the command line's ``eval`` options are built from its fields (one set of defaults).
Imports nothing heavy.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

#: Each LIBERO suite's standard step limit (OpenVLA's evaluation).
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
CONTROLS = ("baseline", "random")


def _setting(default: Any, help: str, *, flag: str | None = None) -> Any:
    """A field with its command-line help and flag.

    ``flag`` None means ``--`` and its name with dashes; ``""`` means no flag.
    """
    return field(default=default, metadata={"help": help, "flag": flag})


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _count(value: Any, name: str, note: str = "") -> None:
    if not _is_int(value):
        raise InputError(f"{name} must be an int, got {value!r} ({type(value).__name__}). {note}".rstrip())
    if value < 1:
        raise InputError(f"{name} must be at least 1, got {value}. {note}".rstrip())


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation runs and how.

    Example:
        >>> config = EvalConfig("libero_spatial", (0, 1), episodes=2, random_controls=10)
        >>> result = evaluate(model, config, steering={"up": Clamp(up, 4.0)})
    """

    suite: str = _setting("libero_10", "libero_spatial/object/goal/10/90")
    tasks: tuple[int, ...] = _setting((0,), "task ids of the suite")
    episodes: int = _setting(1, "episodes (init states) per task")
    controls: tuple[str, ...] = _setting(CONTROLS, "the unsteered 'baseline' and the 'random' controls",
                                         flag="")
    random_controls: int = _setting(1, "random controls per steering (each a condition: the steering on random "
                                       "neurons or a random direction, seeds seed..seed+N-1); with >= 2 the "
                                       "statistics score each steering against them (vs_random)")
    seed: int = _setting(7, "seed of the resets, of the policy (seed + step) and of the random controls")
    max_steps: int | None = _setting(None, "step limit of an episode (default: the suite's limit)")
    camera_size: int = _setting(256, "side of the rendered camera images, in pixels")
    record_video: bool = _setting(False, "write an MP4 per episode", flag="--video")
    instruction: str | None = _setting(None, "say this instead of each task's own instruction "
                                             "(e.g. a neutral 'move the arm')")
    workers: int = _setting(1, "Ray worker processes (1: serial, no Ray)")
    ray_address: str | None = _setting(None, "an existing Ray cluster (default: a local Ray)")

    def __post_init__(self) -> None:
        controls = (self.controls,) if isinstance(self.controls, str) else tuple(self.controls)
        unknown = set(controls) - set(CONTROLS)
        if unknown:
            raise InputError(f"unknown controls {sorted(unknown)}; use 'baseline' and/or 'random'.")
        object.__setattr__(self, "controls", controls)
        object.__setattr__(self, "tasks", task_list(self.tasks))
        if self.suite not in MAX_STEPS:
            raise InputError(f"unknown LIBERO suite {self.suite!r}; use one of {sorted(MAX_STEPS)}.")
        _count(self.episodes, "episodes")
        if self.max_steps is not None:
            _count(self.max_steps, "max_steps", "(None: the suite's standard limit)")
        _count(self.workers, "workers")
        _count(self.camera_size, "camera_size", "(pixels per side of the camera images, e.g. 256)")
        if not _is_int(self.seed) or self.seed < 0:
            raise InputError(f"seed must be an int >= 0 (it seeds the resets, the policy and the random controls), "
                             f"got {self.seed!r} ({type(self.seed).__name__}).")
        _count(self.random_controls, "random_controls")
        if self.instruction is not None and (not isinstance(self.instruction, str) or not self.instruction.strip()):
            raise InputError(f"instruction must be a non-empty string such as 'move the arm' (None: each task's "
                             f"own), got {self.instruction!r}.")
        object.__setattr__(self, "record_video", bool(self.record_video))

    @property
    def steps(self) -> int:
        """An episode's step limit: ``max_steps``, else the suite's standard one."""
        return MAX_STEPS[self.suite] if self.max_steps is None else self.max_steps

    @property
    def parallel(self) -> bool:
        """Whether the episodes run on Ray workers."""
        return self.workers > 1 or self.ray_address is not None

    def record(self, conditions: list[str], model: dict, steering: Any) -> dict:
        """``run.json``'s settings; a resumed run must match them.

        They are every field that can change the results (the step limit resolved; the
        conditions stand for the controls), the model's identity and the steering's description.
        """
        return {"suite": self.suite, "tasks": list(self.tasks), "episodes": self.episodes,
                "conditions": list(conditions), "seed": self.seed, "max_steps": self.steps,
                "camera_size": self.camera_size, "record_video": self.record_video, "model": model,
                "instruction": self.instruction, "steering": steering}


def task_list(tasks: Any) -> tuple[int, ...]:
    """``tasks`` (one task id, or a sequence of distinct ids) as a tuple of ints."""
    if _is_int(tasks):
        return (int(tasks),)
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Iterable):
        raise InputError(f"tasks must be a task id or a list of task ids (ints), e.g. [0, 1]; got {tasks!r}.")
    items = list(tasks)
    bad = [t for t in items if not _is_int(t)]
    if bad:
        raise InputError(f"tasks must be ints, e.g. [0, 1]; got {bad[0]!r} ({type(bad[0]).__name__}) in {tasks!r}.")
    if not items:
        raise InputError("tasks is empty; give at least one task id, e.g. [0].")
    twice = sorted({int(t) for t in items if items.count(t) > 1})
    if twice:
        raise InputError(f"tasks lists {twice} more than once; list each task once.")
    return tuple(int(t) for t in items)


__all__ = ["CONTROLS", "EvalConfig", "MAX_STEPS", "task_list"]
