"""One closed-loop LIBERO episode of a model, with optional steering, recording what happened."""

from __future__ import annotations

import contextlib
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import SetupError, VLAError
from .libero import env_actions, make_env, reset_to
from .metrics import AXES, EpisodeMetrics, episode_metrics

logger = logging.getLogger(__name__)


@dataclass
class Episode:
    """A finished rollout: its metrics, the end-effector path, the actions and (optionally) frames.

    ``error`` is None for an episode that ran to its end, else ``{"type", "message", "where"}``
    of the exception that stopped it; ``metrics``, ``path`` and ``actions`` then cover the
    steps taken before it (``path`` is empty when even the reset failed).
    """

    metrics: EpisodeMetrics
    path: np.ndarray
    actions: np.ndarray
    frames: list = field(default_factory=list, repr=False)
    error: dict | None = None

    @property
    def failed(self) -> bool:
        """Whether an exception stopped the episode (``error`` is set)."""
        return self.error is not None


def rollout(
    model: Any,
    env: Any,
    episode: int,
    max_steps: int,
    *,
    steering: Any = None,
    seed: int = 7,
    record_video: bool = False,
    progress: Callable[[int], None] | None = None,
    rows: Any = None,
    instruction: str | None = None,
) -> Episode:
    """Run ``model`` on init state ``episode`` of ``env`` for at most ``max_steps`` steps.

    ``steering`` (interventions, or None) is active for every prediction of the episode and
    removed afterwards. lerobot's environment already steps 10 no-op actions at every reset
    so the objects settle (OpenVLA's evaluation does the same); they are not counted here.

    An exception from the model or the simulator (or a non-finite action) ends the episode
    as a failure instead of propagating: the returned `Episode` has ``error`` set, is not a
    success, and keeps the path and actions up to the failure. ``KeyboardInterrupt`` (and
    other non-``Exception`` signals) still propagate. ``progress(step)`` is called after
    every step. ``rows`` (a collector's `EpisodeRows`) records each prediction's activations
    and, after its step, the step's targets. ``instruction`` replaces the task's own
    language instruction (None: the task's).
    """
    path: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    success, error = False, None
    try:
        task = env.call("task_description")[0] if instruction is None else instruction
        obs, _ = reset_to(env, episode, seed)
        path.append(obs["robot_state"]["eef"]["pos"][0].copy())
        queue: list[np.ndarray] = []
        with model.steer(steering):  # None: the unsteered baseline
            for step in range(max_steps):
                if record_video:
                    frames.append(np.asarray(obs["pixels"]["image"][0])[::-1, ::-1].copy())
                if not queue:
                    with rows.predicting() if rows is not None else contextlib.nullcontext():
                        queue = list(env_actions(model, obs, task, seed=seed + step))
                action = np.asarray(queue.pop(0), dtype=np.float64)
                if not np.isfinite(action).all():
                    raise VLAError(
                        f"the model's action at step {step} is not finite ({action.tolist()}); "
                        "check the model's weights and inputs, and that the steering's values "
                        "are not so large that activations overflow."
                    )
                before = obs
                obs, _, terminated, truncated, info = env.step(action[None])
                if rows is not None:
                    rows.add(step, before, action, obs)
                path.append(obs["robot_state"]["eef"]["pos"][0].copy())
                actions.append(action)
                if progress is not None:
                    progress(step + 1)
                if bool(info["is_success"][0]) or bool(terminated[0]):
                    success = bool(info["is_success"][0])
                    break
                if bool(truncated[0]):
                    break
    except Exception as exc:  # noqa: BLE001 - any failure of one episode is recorded, not raised
        success, error = False, describe_error(exc)
        logger.info("episode %d failed after %d steps", episode, len(actions), exc_info=True)
    actions_array = np.array(actions, dtype=np.float64)
    if not path:
        return Episode(no_metrics(), np.zeros((0, 3)), actions_array, frames, error)
    path_array = np.array(path)
    return Episode(episode_metrics(path_array, success), path_array, actions_array, frames, error)


def describe_error(exc: BaseException) -> dict:
    """``{"type", "message", "where"}`` of an exception.

    That is its class name, its message, and the innermost frame that raised it as
    ``file.py:line in function``.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    return {"type": type(exc).__name__, "message": str(exc), "where": where}


def no_metrics() -> EpisodeMetrics:
    """The metrics of an episode that failed before its first observation.

    Not a success, no steps, and no value (None) for every measure of motion.
    """
    none = {a: None for a in AXES}
    return EpisodeMetrics(success=False, length=0, path_length=None, axis_displacement=dict(none),
                          net_displacement=dict(none), displacement_per_step=None, z_displacement=None,
                          mean_speed=None, max_speed=None, min_height=None)


class Simulators:
    """One LIBERO environment per task, built on first use.

    After a failed episode the task's environment is closed and rebuilt for the next one, so a
    broken simulator cannot spoil the episodes after it (every episode starts from `reset_to`,
    so this changes no result).

    `evaluate` makes its own and closes it at the end. Building a task's environment costs
    seconds on a CPU, so a caller running several evaluations can pass one that it closes
    itself (a context manager):

        >>> with Simulators("libero_spatial", camera_size=128) as simulators:
        ...     base = evaluate(model, "libero_spatial", [0], 2, camera_size=128, simulators=simulators)
        ...     steered = evaluate(model, "libero_spatial", [0], 2, steering=clamp, camera_size=128,
        ...                        simulators=simulators)
    """

    def __init__(self, suite: str, camera_size: int = 256):
        self.suite, self.camera_size, self.envs = suite, camera_size, {}

    def __enter__(self) -> "Simulators":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, task: int) -> Any:
        """The environment of ``task``, built now if there is none; `SetupError` if that fails."""
        if task not in self.envs:
            try:
                self.envs[task] = make_env(self.suite, task, self.camera_size)
            except VLAError:
                raise
            except Exception as exc:
                raise SetupError(
                    f"could not build the LIBERO simulator for {self.suite} task {task} "
                    f"({type(exc).__name__}: {exc}); check the installation with `make env`."
                ) from exc
        return self.envs[task]

    def discard(self, task: int) -> None:
        """Close and drop the environment of ``task``, if any (a failure to close is ignored)."""
        env = self.envs.pop(task, None)
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - a broken simulator may fail to close; it is dropped
                pass

    def close(self) -> None:
        """Close and drop every environment."""
        for task in list(self.envs):
            self.discard(task)


def run_job(
    model: Any,
    simulators: Simulators,
    job: tuple[int, int, str],
    config: Any,
    steering: Any,
    progress: Callable[[int], None] | None = None,
    collector: Any = None,
) -> Episode:
    """Run one ``(task, episode, condition)`` job of an evaluation (its `EvalConfig`).

    That is the rollout, in the task's simulator (rebuilt after a failure), and its collected
    activations written (``collector``: a bound `nnsight_vla.probes.RolloutCollector`). Serial
    runs and Ray workers both run jobs through here.
    """
    task, episode, _ = job
    rows = None if collector is None else collector.episode(model, job)
    run = rollout(model, simulators.get(task), episode, config.steps, steering=steering, seed=config.seed,
                  record_video=config.record_video, progress=progress, rows=rows, instruction=config.instruction)
    if rows is not None:
        collector.write(rows)
    if run.failed:
        simulators.discard(task)
    return run
