"""One closed-loop LIBERO episode of a model, with optional steering, recording what happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .libero import env_actions, reset_to
from .metrics import EpisodeMetrics, episode_metrics


@dataclass
class Episode:
    """A finished rollout: its metrics, the end-effector path, the actions and (optionally) frames."""

    metrics: EpisodeMetrics
    path: np.ndarray
    actions: np.ndarray
    frames: list = field(default_factory=list, repr=False)


def rollout(
    model: Any,
    env: Any,
    episode: int,
    max_steps: int,
    *,
    steering: Any = None,
    seed: int = 7,
    record_video: bool = False,
) -> Episode:
    """Run ``model`` on init state ``episode`` of ``env`` for at most ``max_steps`` steps.

    ``steering`` (interventions, or None) is active for every prediction of the episode and
    removed afterwards. lerobot's environment already steps 10 no-op actions at every reset
    so the objects settle (OpenVLA's evaluation does the same); they are not counted here.
    """
    task = env.call("task_description")[0]
    obs, _ = reset_to(env, episode, seed)
    path, actions, frames = [obs["robot_state"]["eef"]["pos"][0].copy()], [], []
    queue: list[np.ndarray] = []
    success = False
    with model.steer(steering):  # None: the unsteered baseline
        for step in range(max_steps):
            if record_video:
                frames.append(np.asarray(obs["pixels"]["image"][0])[::-1, ::-1].copy())
            if not queue:
                queue = list(env_actions(model, obs, task, seed=seed + step))
            action = np.asarray(queue.pop(0), dtype=np.float64)
            obs, _, terminated, truncated, info = env.step(action[None])
            path.append(obs["robot_state"]["eef"]["pos"][0].copy())
            actions.append(action)
            if bool(info["is_success"][0]) or bool(terminated[0]):
                success = bool(info["is_success"][0])
                break
            if bool(truncated[0]):
                break
    path = np.array(path)
    return Episode(episode_metrics(path, success), path, np.array(actions), frames)
