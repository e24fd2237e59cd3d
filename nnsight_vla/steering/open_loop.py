"""Open-loop steering: actions on fixed observations under named interventions and their random controls, scored against the controls."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..observation import Observation
from .controls import check_sides, random_control, z_against
from ..edits import steer

#: The columns of the effect table: shifts of each translation axis and of the speed (their norm).
MEASURES = ("dx", "dy", "dz", "speed")


def measures(actions: np.ndarray) -> np.ndarray:
    """``[n, 4]``: each action's x, y, z translation and its speed (the norm of the three)."""
    moves = np.asarray(actions, dtype=np.float64)[:, :3]
    return np.concatenate([moves, np.linalg.norm(moves, axis=1, keepdims=True)], axis=1)


@dataclass
class OpenLoopResult:
    """Actions ``[observations, action_dim]`` per condition.

    The conditions are ``"baseline"``, each steering by its name, and its random controls
    ``"<name>/random<k>"``.

    Example:
        >>> result.table()[0]
        {'steering': 'up', 'measure': 'dz', 'shift': 0.31, 'random_mean': 0.01, 'random_std': 0.05, 'z': 6.0, ...}
    """

    actions: dict[str, np.ndarray]
    names: list[str]
    controls: int
    meta: dict = field(default_factory=dict)
    #: per condition, what ``open_loop``'s ``predict`` returned besides the actions, per observation
    #: (e.g. the words a verbalising model said before them)
    extras: dict[str, list] = field(default_factory=dict)

    def shift(self, condition: str) -> np.ndarray:
        """``[4]``: the condition's mean change of `MEASURES` from the baseline, over observations."""
        return (measures(self.actions[condition]) - measures(self.actions["baseline"])).mean(axis=0)

    def table(self, sides: Mapping[str, Mapping[str, int]] | None = None) -> list[dict]:
        """One row per steering and measure: its shift scored against its random controls.

        Each row holds the shift, its controls' mean and standard deviation, the z-score of
        the shift among them (`z_against`; it assumes the controls' shifts are normal) and the
        rank p-value, which does not (``p``, with ``p_min`` = 1/(controls + 1)).

        ``sides``: per steering, the measures it should move and which way, e.g.
        ``{"up": {"dz": 1}}``; p is one-sided there and two-sided elsewhere.
        """
        sides = check_sides(sides, self.names, MEASURES)
        rows = []
        for name in self.names:
            own = self.shift(name)
            randoms = np.array([self.shift(f"{name}/random{k}") for k in range(self.controls)]).reshape(-1, len(MEASURES))
            for i, measure in enumerate(MEASURES):
                side = sides.get(name, {}).get(measure, 0)
                score = z_against(own[i], randoms[:, i], side)
                rows.append({"steering": name, "measure": measure, "shift": float(own[i]), "random_mean": score.mean,
                             "random_std": score.std, "z": score.z, "p": score.p, "p_min": score.p_min, "side": side,
                             "controls": score.n, "observations": len(self.actions["baseline"])})
        return rows

    def save(self, folder: str | Path, sides: Mapping[str, Mapping[str, int]] | None = None) -> Path:
        """Write ``open_loop.csv``, ``actions.npz`` and ``meta.json`` into ``folder``.

        ``open_loop.csv`` holds the table (`table(sides)`), ``actions.npz`` every condition.
        Returns the path of ``open_loop.csv``.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rows = self.table(sides)
        with open(folder / "open_loop.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        np.savez(folder / "actions.npz", **{k.replace("/", "__"): v for k, v in self.actions.items()})
        (folder / "meta.json").write_text(json.dumps(
            {**self.meta, "names": self.names, "controls": self.controls, "extras": self.extras}, indent=1))
        return folder / "open_loop.csv"


def open_loop(model: Any, observations: Any, steering: Mapping[str, Any], *, controls: int = 10, seed: int = 0,
              batch_size: int = 1, progress: bool = True, predict: Callable | None = None,
              **options: Any) -> OpenLoopResult:
    """Predict every observation without steering, under each named steering and its controls.

    Every observation (one, or a list) is predicted once without steering, once under each
    named steering (e.g. a concept cluster's `Clamp`), and under ``controls`` random controls
    of each (the same intervention on random neurons of the same layers: `random_control`,
    seeds ``seed..``). ``batch_size`` observations go through each prediction (faster; batched
    sums may differ from single ones in the last bit, the same way for every condition).

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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r} must be a positive int.")
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    conditions: dict[str, Any] = {"baseline": None}
    for name, intervention in steering.items():
        if "/" in name or name == "baseline":
            raise InputError(f"steering name {name!r} may not be 'baseline' or contain '/'.")
        conditions[name] = intervention
        for k in range(controls):
            conditions[f"{name}/random{k}"] = random_control(intervention, seed + k, model)
    if predict is None:
        def predict(model: Any, observations: Any, **options: Any) -> Any:
            return model.predict_action(observations, **options)
    actions, extras = {}, {}
    for label, intervention in tqdm(conditions.items(), desc="open-loop conditions", disable=not progress):
        with steer(model, intervention):  # None: the baseline
            outputs = [predict(model, batch if len(batch) > 1 else batch[0], **options) for batch in batches]
        pairs = [out if isinstance(out, tuple) else (None, out) for out in outputs]
        if any(extra is not None for extra, _ in pairs):
            extras[label] = [e for (extra, _), batch in zip(pairs, batches)
                             for e in (extra if len(batch) > 1 else [extra])]
        arrays = [np.asarray(a, dtype=np.float64) for _, a in pairs]
        actions[label] = np.concatenate([a if len(b) > 1 else a[None] for a, b in zip(arrays, batches)])
    meta = {"seed": seed, "options": {k: repr(v) for k, v in options.items()}}
    return OpenLoopResult(actions, list(steering), controls, meta, extras)
