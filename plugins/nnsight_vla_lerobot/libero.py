"""The LIBERO recipe of every lerobot policy: lerobot's LIBERO observation step, the policy's processors, the first actions of each chunk."""

from __future__ import annotations

from typing import Any

import numpy as np


def env_actions(model: Any, raw: dict, task: str, seed: int = 0) -> np.ndarray:
    """The first ``n_action_steps`` actions of the chunk predicted for one raw LIBERO observation."""
    chunk = model.predict_action({**raw, "task": task}, seed=seed)
    return np.asarray(chunk)[: model.policy_config.n_action_steps]
