"""OpenVLA's LIBERO recipe: the agent-view frame as its TensorFlow evaluation prepares it, one action, the gripper binarised."""

from __future__ import annotations

from typing import Any

import numpy as np

from nnsight_vla.family import Observation

from .processor import libero_frame


def env_actions(model: Any, raw: dict, task: str, seed: int = 0) -> np.ndarray:
    """The ``[1, 7]`` action to execute for one raw LIBERO observation.

    The agent-view camera goes through `libero_frame` (rotation, JPEG round trip, Lanczos resize;
    the processor's centre crop when it has one) to predict one action, its gripper binarised
    (``sign(2g - 1)``) and inverted (-1 open, +1 close). Greedy decoding ignores ``seed``.
    """
    image = np.asarray(raw["pixels"]["image"])
    image = image[0] if image.ndim == 4 else image
    frame = libero_frame(image, model.processor.image_size)
    action = np.array(model.predict_action(Observation(frame, task)), dtype=np.float64)
    action[-1] = -np.sign(2 * action[-1] - 1)
    return action[None]
