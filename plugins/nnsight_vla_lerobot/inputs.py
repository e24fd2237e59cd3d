"""Observations to lerobot batches (and lerobot observation dicts to observations)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from nnsight_vla.family import InputError, Observation

IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"


def from_lerobot(batch: Mapping[str, Any]) -> list[Observation]:
    """Observations from a lerobot observation dict.

    The dict holds ``observation.images.<camera>`` as ``(C, H, W)`` or ``(B, C, H, W)`` float
    tensors in [0, 1], ``observation.state`` and ``task``.
    """
    cameras = {k[len(IMAGE_PREFIX):]: v for k, v in batch.items() if k.startswith(IMAGE_PREFIX)}
    if not cameras or "task" not in batch:
        raise InputError(
            "a lerobot observation needs 'observation.images.<camera>' entries and a 'task'; "
            f"got keys {sorted(batch)}."
        )
    images = {k: torch.as_tensor(v) for k, v in cameras.items()}
    batched = next(iter(images.values())).ndim == 4
    size = next(iter(images.values())).shape[0] if batched else 1
    tasks = batch["task"]
    tasks = [tasks] * size if isinstance(tasks, str) else list(tasks)
    state = batch.get(STATE_KEY)
    out = []
    for i in range(size):
        row = {k: (v[i] if batched else v) for k, v in images.items()}
        row_state = None if state is None else torch.as_tensor(state).reshape(size, -1)[i].numpy()
        out.append(Observation(row, tasks[i], row_state))
    return out


def from_libero(raw: Mapping[str, Any]) -> list[Observation]:
    """Observations from a raw LIBERO environment observation plus its ``task``.

    The raw observation holds ``pixels`` per camera and ``robot_state``. It goes through lerobot's
    own conversion: images rotated by 180 degrees, state = end-effector position, axis-angle and
    gripper joints (8-D).
    """
    from lerobot.envs.utils import preprocess_observation
    from lerobot.processor.env_processor import LiberoProcessorStep

    if "task" not in raw:
        raise InputError("a raw LIBERO observation needs its 'task' (the environment's task_description).")
    pixels = raw["pixels"]
    batched = next(iter(pixels.values())).ndim == 4 if isinstance(pixels, Mapping) else pixels.ndim == 4

    def add_batch(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: add_batch(v) for k, v in value.items()}
        return value if batched else np.asarray(value)[None]

    env = {k: add_batch(v) for k, v in raw.items() if k != "task"}
    batch = LiberoProcessorStep().observation(preprocess_observation(env))
    return from_lerobot({**batch, "task": raw["task"]})


def to_batch(observations: list[Observation], cameras: tuple[str, ...], state_dim: int | None) -> dict:
    """The raw lerobot batch (images in [0, 1], state, task) for ``observations``."""
    images: dict[str, list[torch.Tensor]] = {c: [] for c in cameras}
    states = []
    for obs in observations:
        names = {k.removeprefix(IMAGE_PREFIX): v for k, v in obs.images.items()}
        missing = [c for c in cameras if c not in names]
        extra = sorted(set(names) - set(cameras))
        if missing or extra:
            raise InputError(
                f"this model takes cameras {list(cameras)}, got {sorted(names)} "
                f"(missing {missing}, unexpected {extra}); pass "
                f"Observation({{{', '.join(repr(c) + ': ...' for c in cameras)}}}, instruction, state)."
            )
        for c in cameras:
            images[c].append(torch.from_numpy(names[c]).permute(2, 0, 1).float() / 255.0)
        if state_dim is not None:
            if obs.state is None or obs.state.shape != (state_dim,):
                got = None if obs.state is None else obs.state.shape
                raise InputError(
                    f"this model needs a proprio state of shape ({state_dim},), got {got}; "
                    "pass Observation(images, instruction, state=<vector>)."
                )
            states.append(torch.from_numpy(np.asarray(obs.state, np.float32)))
    batch: dict[str, Any] = {}
    for c, frames in images.items():
        shapes = {tuple(f.shape) for f in frames}
        if len(shapes) > 1:
            raise InputError(f"camera {c!r} has images of different sizes {sorted(shapes)} in one batch.")
        batch[IMAGE_PREFIX + c] = torch.stack(frames)
    if states:
        batch[STATE_KEY] = torch.stack(states)
    batch["task"] = [obs.instruction for obs in observations]
    return batch
