"""Where frames come from: a LeRobotDataset on disk or a list of observations, each frame with its targets."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..observation import Observation

IMAGE_PREFIX, STATE, ACTION = "observation.images.", "observation.state", "action"
# columns of a LeRobotDataset that are bookkeeping, not targets
BOOKKEEPING = {"timestamp", "frame_index", "episode_index", "index", "task_index"}


@dataclass
class Frame:
    """One row to collect: the observation, its episode and frame ids, and its targets."""

    observation: Observation
    episode: int
    frame: int
    targets: dict[str, np.ndarray] = field(default_factory=dict)


class ObservationFrames:
    """Frames from a list of observations, with the caller's episodes and targets.

    ``episodes`` default to one episode per observation; ``targets`` map a name to one value
    per observation.

    Example:
        >>> ObservationFrames(observations, episodes=[0, 0, 1], targets={"speed": [0.1, 0.2, 0.0]})
    """

    def __init__(self, observations: Sequence[Observation], episodes: Sequence[int] | None = None,
                 targets: Mapping[str, Any] | None = None):
        self.observations = list(observations)
        if not self.observations:
            raise InputError("observations is empty; give at least one observation.")
        n = len(self.observations)
        self.episodes = np.arange(n) if episodes is None else np.asarray(episodes, np.int64)
        self.targets = {k: np.asarray(v) for k, v in (targets or {}).items()}
        for name, values in [("episodes", self.episodes), *self.targets.items()]:
            if len(values) != n:
                raise InputError(f"{name} has {len(values)} values for {n} observations; give one per observation.")

    def __len__(self) -> int:
        return len(self.observations)

    def describe(self) -> dict:
        """The source as the manifest records it: type, frame count and target names."""
        return {"type": "observations", "frames": len(self), "targets": sorted(self.targets)}

    def check(self, model: Any) -> None:
        """Have the model check the first observation's cameras and state."""
        model._observations(self.observations[:1])  # the model's own check of cameras and state

    def frames(self, start: int = 0) -> Iterator[Frame]:
        """The frames from index ``start`` on; a frame's id is its index in the list."""
        for i in range(start, len(self)):
            yield Frame(self.observations[i], int(self.episodes[i]), i,
                        {k: v[i] for k, v in self.targets.items()})


class DatasetFrames:
    """Frames of a LeRobotDataset read from a local ``root`` with lerobot's own loader.

    With ``root=None`` the dataset is downloaded from the Hub by ``repo_id``, where it is
    reachable. The targets come from the dataset's columns, without decoding an image:
    ``action`` (as stored: un-normalised), ``state``, ``gripper`` (1 where the last action
    dimension closes the gripper, > 0), ``ee_velocity`` (the change of ``state[:3]`` to the
    episode's next frame, times fps; the last frame repeats the one before), ``task`` (the
    task index), and each name in ``columns`` (any other per-frame column).

    Example:
        >>> DatasetFrames("data/lift", episodes=[0, 1])
    """

    def __init__(self, root: str | os.PathLike | None, repo_id: str | None = None,
                 episodes: Sequence[int] | None = None, columns: Sequence[str] = ()):
        if root is None and repo_id is None:
            raise InputError("give a dataset root folder, or root=None and a Hub repo_id.")
        self.root = None if root is None else Path(root).expanduser()
        if self.root is not None:
            info = self.root / "meta" / "info.json"
            if not info.is_file():
                raise InputError(f"{self.root} is not a LeRobotDataset (no meta/info.json); pass the dataset's root folder.")
            meta = json.loads(info.read_text())
            if not meta.get("total_frames"):  # lerobot would look for them on the Hub
                raise InputError(f"the dataset at {self.root} has no frames; convert or record some first.")
            total = meta.get("total_episodes")
            if episodes is not None and isinstance(total, int):
                bad = [e for e in episodes if isinstance(e, bool) or not isinstance(e, (int, np.integer))
                       or not 0 <= e < total]
                if bad or not len(episodes):
                    raise InputError(f"episodes={list(episodes)}: the dataset at {self.root} has {total} "
                                     f"episodes (0..{total - 1}); choose among those.")
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        self.repo_id = repo_id or f"local/{self.root.name}"  # root=None: lerobot fetches repo_id from the Hub
        try:
            self.dataset = LeRobotDataset(self.repo_id, root=self.root, video_backend="pyav",
                                          episodes=None if episodes is None else list(episodes))
        except Exception as err:
            raise InputError(f"lerobot could not read the dataset {self.root or self.repo_id} "
                             f"({type(err).__name__}: {err}).") from err
        if len(self.dataset) == 0:
            raise InputError(f"the dataset {self.root or self.repo_id} has no frames; convert or record some first.")
        table = self.dataset.hf_dataset.with_format("numpy")
        names = set(table.column_names)
        missing = [c for c in columns if c not in names]
        if missing:
            raise InputError(f"the dataset has no column {missing}; it has {sorted(names - BOOKKEEPING)}.")
        self.episodes = np.asarray(table["episode_index"], np.int64)
        self.frame_ids = np.asarray(table["frame_index"], np.int64)
        self.targets = _dataset_targets(table, names, self.episodes, float(self.dataset.fps), columns)
        self.cameras = tuple(k[len(IMAGE_PREFIX):] for k in self.dataset.meta.camera_keys)
        state = self.dataset.meta.features.get(STATE)
        self.state_dim = None if state is None else int(state["shape"][0])

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self) -> dict:
        """The source as the manifest records it: root, repo id, frame count and target names."""
        return {"type": "lerobot", "root": None if self.root is None else str(self.root.resolve()), "repo_id": self.repo_id,
                "frames": len(self), "targets": sorted(self.targets)}

    def check(self, model: Any) -> None:
        """Refuse, before anything is written, a dataset whose cameras or state the model does not take."""
        want = tuple(model.spec.camera_names)
        if sorted(want) != sorted(self.cameras):
            raise InputError(
                f"the dataset's cameras {list(self.cameras)} are not the model's {list(want)}; "
                "collect from a dataset recorded with the model's cameras (or convert it so).")
        need = model.spec.state_dim
        if need is not None and self.state_dim != need:
            raise InputError(f"the model takes a {need}-D state, the dataset has "
                             f"{'none' if self.state_dim is None else f'a {self.state_dim}-D one'}.")

    def frames(self, start: int = 0) -> Iterator[Frame]:
        """The frames from index ``start`` on, read by lerobot, with the dataset's frame ids."""
        for i in range(start, len(self)):
            item = self.dataset[i]
            images = {k[len(IMAGE_PREFIX):]: _uint8(v) for k, v in item.items() if k.startswith(IMAGE_PREFIX)}
            state = item.get(STATE)
            observation = Observation(images, item["task"], None if self.state_dim is None or state is None
                                      else np.asarray(state, np.float32))
            yield Frame(observation, int(self.episodes[i]), int(self.frame_ids[i]),
                        {k: v[i] for k, v in self.targets.items()})


def _uint8(image: Any) -> np.ndarray:
    """A lerobot image (float ``(C, H, W)`` in [0, 1]) as ``(H, W, C)`` uint8."""
    array = np.asarray(image, np.float32)
    return np.clip(np.rint(array.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)


def _dataset_targets(table: Any, names: set, episodes: np.ndarray, fps: float, columns: Sequence[str]) -> dict:
    targets: dict[str, np.ndarray] = {}
    if ACTION in names:
        action = np.stack(table[ACTION]).astype(np.float32)
        targets["action"] = action
        targets["gripper"] = (action[:, -1] > 0).astype(np.int64)
    if STATE in names:
        state = np.stack(table[STATE]).astype(np.float32)
        targets["state"] = state
        if state.shape[1] >= 3:
            targets["ee_velocity"] = velocity(state[:, :3], episodes, fps)
    if "task_index" in names:
        targets["task"] = np.asarray(table["task_index"], np.int64)
    for column in columns:
        targets[column] = np.asarray(table[column])
    return targets


def velocity(position: np.ndarray, episodes: np.ndarray, fps: float) -> np.ndarray:
    """Per frame, the change of ``position`` to the episode's next frame times ``fps``.

    The last frame of an episode repeats the one before; a one-frame episode gets zeros.
    """
    out = np.zeros_like(position, dtype=np.float32)
    for episode in np.unique(episodes):
        rows = np.flatnonzero(episodes == episode)
        if len(rows) > 1:
            step = np.diff(position[rows], axis=0) * fps
            out[rows[:-1]] = step
            out[rows[-1]] = step[-1]
    return out


def as_source(source: Any, **options: Any) -> Any:
    """A frame source: a dataset root (str / path), a list of observations, or a source already."""
    if hasattr(source, "frames") and hasattr(source, "describe"):
        return source
    if isinstance(source, (str, os.PathLike)):
        return DatasetFrames(source, **options)
    if isinstance(source, Observation):
        return ObservationFrames([source], **options)
    if isinstance(source, Sequence) and all(isinstance(o, Observation) for o in source):
        return ObservationFrames(source, **options)
    raise InputError(f"cannot collect from {type(source).__name__}; pass a LeRobotDataset root folder, "
                     "a list of Observations, or a DatasetFrames / ObservationFrames.")
