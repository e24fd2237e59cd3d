"""Open-loop steering: actions on fixed observations under named interventions and their random controls, scored against the controls."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..observation import Observation
from .controls import random_control, z_against
from .runtime import steer

#: The columns of the effect table: shifts of each translation axis and of the speed (their norm).
MEASURES = ("dx", "dy", "dz", "speed")


def measures(actions: np.ndarray) -> np.ndarray:
    """``[n, 4]``: each action's x, y, z translation and its speed (the norm of the three)."""
    moves = np.asarray(actions, dtype=np.float64)[:, :3]
    return np.concatenate([moves, np.linalg.norm(moves, axis=1, keepdims=True)], axis=1)


@dataclass
class OpenLoopResult:
    """Actions ``[observations, action_dim]`` per condition: ``"baseline"``, each steering by its
    name, and its random controls ``"<name>/random<k>"``.

    Example:
        >>> result.table()[0]
        {'steering': 'up', 'measure': 'dz', 'shift': 0.31, 'random_mean': 0.01, 'random_std': 0.05, 'z': 6.0, ...}
    """

    actions: dict[str, np.ndarray]
    names: list[str]
    controls: int
    meta: dict = field(default_factory=dict)
    words: dict[str, list[str]] = field(default_factory=dict)  # what a verbalising model said, per condition

    def shift(self, condition: str) -> np.ndarray:
        """``[4]``: the condition's mean change of `MEASURES` from the baseline, over observations."""
        return (measures(self.actions[condition]) - measures(self.actions["baseline"])).mean(axis=0)

    def table(self) -> list[dict]:
        """Per steering and measure: its shift, its controls' mean and standard deviation, and
        the z-score of the shift among the controls (`z_against`: ``(shift - mean) / std``)."""
        rows = []
        for name in self.names:
            own = self.shift(name)
            randoms = np.array([self.shift(f"{name}/random{k}") for k in range(self.controls)]).reshape(-1, len(MEASURES))
            for i, measure in enumerate(MEASURES):
                mean, std, z = z_against(own[i], randoms[:, i])
                rows.append({"steering": name, "measure": measure, "shift": float(own[i]), "random_mean": mean,
                             "random_std": std, "z": z, "controls": self.controls,
                             "observations": len(self.actions["baseline"])})
        return rows

    def save(self, folder: str | Path) -> Path:
        """Write ``open_loop.csv`` (the table), ``actions.npz`` (every condition) and ``meta.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rows = self.table()
        with open(folder / "open_loop.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        np.savez(folder / "actions.npz", **{k.replace("/", "__"): v for k, v in self.actions.items()})
        (folder / "meta.json").write_text(json.dumps(
            {**self.meta, "names": self.names, "controls": self.controls, "words": self.words}, indent=1))
        return folder / "open_loop.csv"


def open_loop(model: Any, observations: Any, steering: Mapping[str, Any], *, controls: int = 10, seed: int = 0,
              progress: bool = True, **options: Any) -> OpenLoopResult:
    """Predict every observation (one, or a list) once without steering, once under each named steering (e.g. a
    concept cluster's `Clamp`), and under ``controls`` random controls of each (the same
    intervention on random neurons of the same layers: `random_control`, seeds ``seed..``).

    Example:
        >>> result = open_loop(model, [obs1, obs2], {"up": Clamp(up, 4.0)}, controls=10)
        >>> [r["z"] for r in result.table() if r["measure"] == "dz"]
    """
    if not isinstance(steering, Mapping):
        raise InputError(f"steering must be a dict {{name: intervention}}, got {type(steering).__name__}; "
                         "e.g. {'up': Clamp(up, 4.0)}.")
    if not steering:
        raise InputError("steering is empty; give {name: intervention}, e.g. {'up': Clamp(up, 4.0)}.")
    if isinstance(controls, bool) or not isinstance(controls, int) or controls < 2:
        raise InputError(f"controls={controls!r}: a steering is scored against the spread of its random controls, "
                         "which needs at least 2; pass controls=10 or more.")
    items = [observations] if isinstance(observations, Observation) else list(observations)
    if not items:
        raise InputError("observations is empty; give one Observation or a list of them.")
    conditions: dict[str, Any] = {"baseline": None}
    for name, intervention in steering.items():
        if "/" in name or name == "baseline":
            raise InputError(f"steering name {name!r} may not be 'baseline' or contain '/'.")
        conditions[name] = intervention
        for k in range(controls):
            conditions[f"{name}/random{k}"] = random_control(intervention, seed + k, model)
    actions, words = {}, {}
    for label, intervention in tqdm(conditions.items(), desc="open-loop conditions", disable=not progress):
        with steer(model, intervention):  # None: the baseline
            rows = [model.predict_action(obs, **options) for obs in items]
        said = [r[1] for r in rows if isinstance(r, tuple)]  # a verbalising model's words (with_phrase=True)
        if said:
            words[label] = said
        actions[label] = np.stack([np.asarray(r[0] if isinstance(r, tuple) else r, dtype=np.float64) for r in rows])
    meta = {"seed": seed, "options": {k: repr(v) for k, v in options.items()}}
    return OpenLoopResult(actions, list(steering), controls, meta, words)
