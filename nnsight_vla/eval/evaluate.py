"""Paired closed-loop evaluation: baseline vs steered vs random control, with files, statistics and plots."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import InputError
from ..steering import bind, random_control
from .libero import MAX_STEPS, check_task, make_env
from .metrics import METRICS
from .parallel import job_order, run_parallel
from .plots import plot_metrics, plot_trajectories
from .rollout import rollout
from .stats import paired_comparison

@dataclass
class EvalResult:
    """Per-episode rows, per-condition means, and paired statistics against the baseline."""

    episodes: list[dict]
    summary: dict
    statistics: dict
    out_dir: Path | None


def evaluate(
    model: Any,
    suite: str,
    tasks: Sequence[int],
    episodes: int,
    steering: Any = None,
    controls: Sequence[str] = ("baseline", "random"),
    seed: int = 7,
    max_steps: int | None = None,
    camera_size: int = 256,
    record_video: bool = False,
    out_dir: str | Path | None = None,
    workers: int = 1,
    ray_address: str | None = None,
) -> EvalResult:
    """Run every condition on the same tasks, init states and seeds (a paired design).

    Conditions: ``"baseline"`` (no steering), ``"steered"`` (when ``steering`` is given) and
    ``"random"`` (its random control). Writes ``episodes.jsonl``, ``episodes.csv``,
    ``summary.json``, ``statistics.json``, ``trajectories.png``, ``metrics.png`` and, with
    ``record_video``, ``videos/<condition>_task<t>_ep<e>.mp4`` under ``out_dir``.

    With ``workers > 1`` (or a ``ray_address``) the episodes are spread over Ray worker
    processes that each load the model once from its source (a local Ray unless an address
    is given); the results equal a serial run's. A model changed in memory is refused there:
    save it and load the copy.

    Example:
        >>> result = evaluate(model, "libero_10", [0, 1], episodes=2, steering=Clamp(up, 4.0))
    """
    unknown = set(controls) - {"baseline", "random"}
    if unknown:
        raise InputError(f"unknown controls {sorted(unknown)}; use 'baseline' and/or 'random'.")
    if episodes < 1:
        raise InputError(f"episodes must be at least 1, got {episodes}.")
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}.")
    for task in tasks:
        check_task(suite, task)
    conditions: dict[str, Any] = {}
    if "baseline" in controls:
        conditions["baseline"] = None
    if steering is not None:
        bind(model, steering)  # fail now, not mid-evaluation, when the steering does not fit
        conditions["steered"] = steering
        if "random" in controls:
            conditions["random"] = random_control(steering, seed, model)
    steps = max_steps or MAX_STEPS[suite]
    jobs = job_order(tasks, episodes, conditions)
    if workers > 1 or ray_address is not None:
        runs = run_parallel(model, jobs, conditions, suite=suite, steps=steps, seed=seed,
                            camera_size=camera_size, record_video=record_video, workers=workers,
                            address=ray_address)
    else:
        runs = _run_serial(model, jobs, conditions, suite, steps, seed, camera_size, record_video)
    rows = []
    for task, episode, condition in jobs:
        run = runs[(task, episode, condition)]
        rows.append({"suite": suite, "task": task, "episode": episode, "condition": condition,
                     **run.metrics.to_dict(), "path": run.path.tolist(), "actions": run.actions.tolist()})
    summary = {c: {m: float(np.mean([r[m] for r in rows if r["condition"] == c])) for m in METRICS}
               for c in conditions}
    statistics = _statistics(rows, list(conditions))
    folder = None if out_dir is None else _write(Path(out_dir), rows, summary, statistics, runs, record_video)
    return EvalResult(rows, summary, statistics, folder)


def _run_serial(model, jobs, conditions, suite, steps, seed, camera_size, record_video) -> dict:
    runs, envs = {}, {}
    try:
        for task, episode, condition in tqdm(jobs, desc=f"{suite} rollouts", unit="episode"):
            env = envs.get(task) or envs.setdefault(task, make_env(suite, task, camera_size))
            runs[(task, episode, condition)] = rollout(
                model, env, episode, steps, steering=conditions[condition], seed=seed, record_video=record_video)
    finally:
        for env in envs.values():
            env.close()
    return runs


def _statistics(rows: list[dict], conditions: list[str]) -> dict:
    if "baseline" not in conditions:
        return {}
    by = {(r["task"], r["episode"], r["condition"]): r for r in rows}
    keys = sorted({(r["task"], r["episode"]) for r in rows})
    out = {}
    for condition in conditions:
        if condition == "baseline":
            continue
        out[condition] = {}
        for metric in METRICS:
            base = [float(by[k + ("baseline",)][metric]) for k in keys]
            other = [float(by[k + (condition,)][metric]) for k in keys]
            out[condition][metric] = (
                paired_comparison(base, other).to_dict() if len(keys) >= 2
                else {"n": len(keys), "mean_difference": other[0] - base[0], "note": "one pair: no test"}
            )
    return out


def _write(folder: Path, rows, summary, statistics, runs, record_video) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "episodes.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    flat = [{k: v for k, v in r.items() if k not in ("path", "actions", "extra")} for r in rows]
    for row in flat:
        for group in ("axis_displacement", "net_displacement"):
            for axis, value in row.pop(group).items():
                row[f"{group}_{axis}"] = value
    with open(folder / "episodes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    (folder / "statistics.json").write_text(json.dumps(statistics, indent=2))
    plot_trajectories(rows, folder / "trajectories.png")
    plot_metrics(rows, folder / "metrics.png")
    if record_video:
        import imageio.v2 as imageio

        (folder / "videos").mkdir(exist_ok=True)
        for (task, episode, condition), run in runs.items():
            imageio.mimwrite(folder / "videos" / f"{condition}_task{task}_ep{episode}.mp4", run.frames, fps=20)
    return folder
