"""LIBERO scenes as OpenVLA sees them: agent-view frames rendered from tasks' initial states, stored as JPEG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from nnsight_vla import CheckpointError

from nnsight_vla_openvla.processor import libero_frame

#: The frames shipped with the project (rendered by `render`; the training script writes its own).
SHIPPED = Path(__file__).parent / "data" / "frames.npz"


def render(suite: str = "libero_spatial", tasks: tuple[int, ...] = (0, 1, 2, 3), episodes: int = 4,
           size: int = 224, camera_size: int = 256) -> np.ndarray:
    """``[len(tasks) * episodes, size, size, 3]`` uint8: each task's first ``episodes`` initial
    states, the agent-view camera through OpenVLA's LIBERO steps (`libero_frame`)."""
    from nnsight_vla.eval.libero import make_env, reset_to

    frames = []
    with tqdm(total=len(tasks) * episodes, desc="render LIBERO frames", unit="frame") as bar:
        for task in tasks:
            env = make_env(suite, task, camera_size)
            try:
                for episode in range(episodes):
                    raw, _ = reset_to(env, episode)
                    frames.append(libero_frame(np.asarray(raw["pixels"]["image"])[0], size))
                    bar.update()
            finally:
                env.close()
    return np.stack(frames)


def save(path: str | Path, frames: np.ndarray, quality: int = 90) -> Path:
    """Write frames as JPEG bytes in an ``.npz`` (the training images of OpenVLA were JPEG too)."""
    blobs = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        blobs.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
    lengths = np.array([len(b) for b in blobs])
    np.savez(path, jpeg=np.concatenate(blobs), lengths=lengths)
    return Path(path)


def load(path: str | Path = SHIPPED) -> np.ndarray:
    """The frames of a file written by `save`, decoded: ``[n, size, size, 3]`` uint8."""
    try:
        with np.load(path) as data:
            jpeg, lengths = data["jpeg"], data["lengths"]
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path} is not a frames file written by nnsight_vla_mini.frames.save ({err}).") from err
    ends = np.cumsum(lengths)
    return np.stack([np.asarray(Image.open(io.BytesIO(jpeg[e - n:e].tobytes())).convert("RGB"))
                     for e, n in zip(ends, lengths)])
