"""`RolloutCollector`: activations of every prediction of LIBERO rollouts, with each step's action, state and pose."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..collect import Recorder
from ..errors import InputError
from ..sites import Site
from .collection import settings_of
from .store import Buffer, ShardFolder

LIBERO_FPS = 20  # LIBERO's control frequency: one env step is 1/20 s


@dataclasses.dataclass(frozen=True)
class RolloutCollector:
    """Activations and targets collected along an evaluation's rollouts, one shard per episode.

    Pass to ``evaluate(..., collect=RolloutCollector(sites, "acts/rollouts"))``: each
    prediction of each episode records the activations at ``sites`` (``calls`` and
    ``positions`` as in `collect`) and, as targets, the step's executed ``action``, the
    ``state`` before it (end-effector position, axis-angle, gripper joints: lerobot's LIBERO
    state), ``ee_pose`` (position and quaternion), ``ee_velocity`` (the end effector's move
    during the step, per second), ``gripper`` (1: the action closes it), ``task``,
    ``init_state`` and ``condition`` (index into the manifest's conditions), plus
    ``action_bins`` for OpenVLA. Rows are per prediction (a Pi0 chunk of actions is one
    prediction: the row's action is the chunk's first). Each episode is one shard
    (``<condition>-task<t>-ep<e>.safetensors``), written where the episode ran (Ray workers
    write their own), before the episode's row, so a resumed evaluation resumes this too.

    Example:
        >>> collector = RolloutCollector([Site(l, "resid") for l in range(32)], "acts/libero")
        >>> evaluate(model, "libero_10", [0, 1], episodes=5, collect=collector)
    """

    sites: Sequence[Site]
    out: str | os.PathLike
    calls: Any = "actions"
    positions: Any = "last"
    dtype: str = "float32"
    manifest: dict | None = None
    jobs: dict | None = None

    def bind(self, model: Any, jobs: list[tuple], conditions: list[str], source: dict, resume: bool) -> RolloutCollector:
        """A copy ready for the evaluation's ``jobs``, its shard folder opened.

        An evaluation without ``resume`` starts this collection over too.
        """
        recorder = Recorder(model, self.sites, calls=self.calls, positions=self.positions)
        model_targets = ["action_bins"] if "action_bins" in model.capabilities else []
        settings = settings_of(model, recorder, self.calls, self.positions, self.dtype,
                               source={"type": "libero", "conditions": conditions, **source},
                               model_targets=model_targets)
        store = ShardFolder.open(self.out, settings, resume=resume, restart=not resume)
        ids = {job: i for i, job in enumerate(jobs)}
        return dataclasses.replace(self, sites=tuple(recorder.sites), out=str(store.folder),
                                   manifest=store.manifest, jobs=ids)

    def episode(self, model: Any, job: tuple) -> EpisodeRows:
        """The `EpisodeRows` that record ``job``'s episode; `InputError` when not bound."""
        if self.jobs is None:
            raise InputError("this RolloutCollector is not bound to an evaluation; pass it to evaluate(collect=...).")
        recorder = Recorder(model, self.sites, calls=self.calls, positions=self.positions)
        return EpisodeRows(recorder, self.jobs[job], job, self.manifest["source"]["conditions"].index(job[2]),
                           model if self.manifest["model_targets"] else None)

    def write(self, rows: EpisodeRows) -> None:
        """The episode's shard (nothing for an episode that never predicted)."""
        if len(rows.buffer):
            task, episode, condition = rows.job
            rows.buffer.flush(ShardFolder(Path(self.out), self.manifest), f"{condition.replace('/', '__')}-task{task:03d}-ep{episode:03d}")


class EpisodeRows:
    """One episode's rows: `predicting` around each prediction, `add` after its step."""

    def __init__(self, recorder: Recorder, episode_id: int, job: tuple, condition: int, bins_model: Any):
        self.recorder, self.episode_id, self.job, self.condition = recorder, episode_id, job, condition
        self.bins_model, self.buffer, self.pending = bins_model, Buffer.empty(), None

    @contextlib.contextmanager
    def predicting(self) -> Iterator[None]:
        """Record the activations of the prediction made inside the block, for `add`."""
        with self.recorder.prediction() as got:
            yield
        self.pending = got.activations

    def add(self, step: int, before: dict, action: np.ndarray, after: dict) -> None:
        """The row of the prediction made at ``step`` (if one was): activations and targets."""
        if self.pending is None:
            return
        position, quat = _eef(before)
        moved = (_eef(after)[0] - position) * LIBERO_FPS
        gripper_qpos = np.asarray(before["robot_state"]["gripper"]["qpos"][0], np.float32)
        targets = {
            "action": action.astype(np.float32),
            "state": np.concatenate([position, _axis_angle(quat), gripper_qpos]).astype(np.float32),
            "ee_pose": np.concatenate([position, quat]).astype(np.float32),
            "ee_velocity": moved.astype(np.float32),
            "gripper": np.int64(action[-1] > 0),
            "task": np.int64(self.job[0]), "init_state": np.int64(self.job[1]), "condition": np.int64(self.condition),
        }
        if self.bins_model is not None:
            targets["action_bins"] = np.asarray(self.bins_model.action_bins(action[None])[0], np.int64)
        self.buffer.add(self.pending, {"episode": self.episode_id, "frame": step}, targets)
        self.pending = None


def _eef(obs: dict) -> tuple[np.ndarray, np.ndarray]:
    eef = obs["robot_state"]["eef"]
    return np.asarray(eef["pos"][0], np.float64), np.asarray(eef["quat"][0], np.float64)


def _axis_angle(quat: np.ndarray) -> np.ndarray:
    """lerobot's conversion of LIBERO's (x, y, z, w) quaternion, as the policies' state has it."""
    from lerobot.processor.env_processor import LiberoProcessorStep

    return LiberoProcessorStep()._quat2axisangle(torch.as_tensor(quat[None], dtype=torch.float32))[0].numpy()
