"""Paired closed-loop evaluation: baseline vs steered vs random control, with files, statistics and plots.

An evaluation with an ``out_dir`` survives interruption: it records its settings in
``run.json`` before the first rollout, appends each finished episode to ``episodes.jsonl``
at once (one line, flushed to disk), and ``resume=True`` continues from those rows, giving
the same final files as an uninterrupted run. An episode that raises is a failed row, not
the end of the evaluation.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import InputError
from ..paths import probed_folder
from ..neurons import NeuronCluster
from ..remote import class_path, model_key
from ..steering import bind, random_control
from ..steering.edits import as_list
from ..towers import module_of
from .libero import MAX_STEPS, check_task, init_state_count
from .metrics import METRICS
from .parallel import Job, fingerprint, job_order, run_parallel, same_weights
from .plots import plot_metrics, plot_trajectories
from .rollout import Episode, Simulators, run_job
from .stats import paired_comparison

#: The run's settings (written before the first rollout; a resumed run must match them).
MANIFEST = "run.json"
#: One JSON row per finished episode, appended as each one finishes.
EPISODES = "episodes.jsonl"
#: Files computed from the rows at the end of a run.
DERIVED = ("episodes.csv", "summary.json", "statistics.json", "trajectories.png", "metrics.png")
#: The serial progress bar shows the step inside the episode every this many steps.
PROGRESS_EVERY = 5
_PER_TASK = re.compile(r"task(\d+)_(success_rate|episodes|failed)")


@dataclass
class EvalResult:
    """Per-episode rows, per-condition means, and paired statistics against the baseline."""

    episodes: list[dict]
    summary: dict
    statistics: dict
    out_dir: Path | None

    @property
    def per_task(self) -> dict:
        """The per-task table of `summary`: ``{condition: {task: {"success_rate", "episodes",
        "failed"}}}`` (``summary[condition]["task<t>_success_rate"]`` and so on)."""
        table: dict = {}
        for condition, values in self.summary.items():
            rows = table.setdefault(condition, {})
            for key, value in values.items():
                match = _PER_TASK.fullmatch(key)
                if match:
                    rows.setdefault(int(match[1]), {})[match[2]] = value
        return table


def evaluate(
    model: Any,
    suite: str,
    tasks: int | Sequence[int],
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
    resume: bool = False,
    collect: Any = None,
) -> EvalResult:
    """Run every condition on the same tasks, init states and seeds (a paired design).

    Conditions: ``"baseline"`` (no steering), ``"steered"`` (when ``steering`` is given) and
    ``"random"`` (its random control). ``tasks``: a task id or a list of them. ``episodes``
    per task are its init states ``0..episodes-1`` (at most the task's count: 50 in LIBERO).
    ``max_steps``: the step limit of an episode (None: the suite's standard limit).

    Writes ``run.json`` (the settings), ``episodes.jsonl``, ``episodes.csv``,
    ``summary.json``, ``statistics.json``, ``trajectories.png``, ``metrics.png`` and, with
    ``record_video``, ``videos/<condition>_task<t>_ep<e>.mp4`` under ``out_dir``, which is
    created and checked for writing before any rollout. Each episode's row (and video) is
    written as soon as it finishes; with ``resume=True`` a run interrupted in ``out_dir``
    continues from them (a run made with other settings is refused) and ends with the files
    an uninterrupted run writes. Without ``resume`` a run in ``out_dir`` is started over.

    An episode that raises (simulator error, non-finite action, any exception of the model
    or the environment) is a failed row (``row["error"]``: its type, message and where)
    and the evaluation goes on. It counts as a failure (0) in the success rate; its other
    metrics (length, path and the rest, up to the failure) stay in its row but are left out
    of the means and of the paired tests, whose entries say how many pairs were left out.
    ``summary[condition]`` also holds ``episodes``, ``failed`` and, per task ``t``,
    ``task<t>_success_rate``, ``task<t>_episodes`` and ``task<t>_failed`` (`EvalResult.per_task`).

    With ``workers > 1`` (or a ``ray_address``) the episodes are spread over Ray worker
    processes that each load the model once from its source (a local Ray unless an address
    is given); the results equal a serial run's. A model changed in memory is refused there:
    save it and load the copy.

    ``collect`` (a `nnsight_vla.probes.RolloutCollector`) records the activations of every
    prediction with the step's action, state and pose, one shard per episode in its own
    folder (resumed and restarted with the evaluation).

    Example:
        >>> result = evaluate(model, "libero_10", [0, 1], episodes=2, steering=Clamp(up, 4.0))
    """
    controls = (controls,) if isinstance(controls, str) else tuple(controls)
    unknown = set(controls) - {"baseline", "random"}
    if unknown:
        raise InputError(f"unknown controls {sorted(unknown)}; use 'baseline' and/or 'random'.")
    tasks = task_list(tasks)
    _count(episodes, "episodes")
    if max_steps is not None:
        _count(max_steps, "max_steps", "(None: the suite's standard limit)")
    _count(workers, "workers")
    for task in tasks:
        check_task(suite, task)
    if resume and out_dir is None:
        raise InputError("resume=True needs out_dir=, the folder of the run to continue.")
    conditions: dict[str, Any] = {}
    if "baseline" in controls:
        conditions["baseline"] = None
    if steering is not None:
        bind(model, steering)  # fail now, not mid-evaluation, when the steering does not fit
        conditions["steered"] = steering
        if "random" in controls:
            conditions["random"] = random_control(steering, seed, model)
    steps = MAX_STEPS[suite] if max_steps is None else max_steps
    check_episodes(suite, tasks, episodes)
    jobs = job_order(tasks, episodes, conditions)
    if collect is not None:
        source = {"suite": suite, "tasks": tasks, "episodes": episodes, "seed": seed, "max_steps": steps,
                  "steering": None if steering is None else describe_steering(steering)}
        collect = collect.bind(model, jobs, list(conditions), source, resume)

    folder = None if out_dir is None else probed_folder(out_dir, create=True)
    rows: dict[Job, dict] = {}
    if folder is not None:
        settings = {
            "suite": suite, "tasks": tasks, "episodes": episodes, "conditions": list(conditions),
            "seed": seed, "max_steps": steps, "camera_size": camera_size, "record_video": bool(record_video),
            "model": model_identity(model),
            "steering": None if steering is None else describe_steering(steering),
        }
        rows = _open_run(folder, _json(settings), fingerprint(module_of(model)), resume, jobs)

    def on_result(job: Job, run: Episode) -> None:
        task, episode, condition = job
        row = _row(suite, job, run)
        if folder is not None:
            if record_video and run.frames:
                _write_video(folder / "videos" / f"{condition}_task{task}_ep{episode}.mp4", run.frames)
            _append(folder / EPISODES, row)  # after its video: a row on disk means a finished episode
        run.frames = []
        rows[job] = row
        if run.failed:
            tqdm.write(f"{suite} task {task} episode {episode} ({condition}) failed after "
                       f"{run.metrics.length} steps: {run.error['type']}: {run.error['message']}",
                       file=sys.stderr)

    pending = [job for job in jobs if job not in rows]
    try:
        if not pending:
            pass
        elif workers > 1 or ray_address is not None:
            run_parallel(model, pending, conditions, suite=suite, steps=steps, seed=seed,
                         camera_size=camera_size, record_video=record_video, workers=workers,
                         address=ray_address, on_result=on_result, done=len(rows), collector=collect)
        else:
            _run_serial(model, pending, conditions, suite, steps, seed, camera_size, record_video,
                        on_result=on_result, done=len(rows), collector=collect)
    except BaseException as error:  # Ctrl-C and killed workers included: say how to go on
        if folder is not None:
            error.add_note(
                f"{len(rows)} of {len(jobs)} episodes are saved in {folder / EPISODES}; run the "
                "same evaluation with resume=True (CLI: --resume) to continue from them."
            )
        raise
    ordered = [rows[job] for job in jobs]
    summary = _summary(ordered, list(conditions), tasks)
    statistics = _statistics(ordered, list(conditions))
    if folder is not None:
        _write(folder, ordered, summary, statistics)
    return EvalResult(ordered, summary, statistics, folder)


def _run_serial(model, jobs, conditions, suite, steps, seed, camera_size, record_video,
                on_result: Callable[[Job, Episode], None] | None = None, done: int = 0,
                collector: Any = None) -> dict:
    """Run ``jobs`` one after another in this process; ``on_result(job, episode)`` as each
    finishes. The bar counts episodes (``done`` of them finished before: a resumed run) and
    shows the step inside the current one."""
    runs, simulators = {}, Simulators(suite, camera_size)
    try:
        with tqdm(total=done + len(jobs), initial=done, desc=f"{suite} rollouts", unit="episode") as bar:
            for job in jobs:
                task, episode, condition = job
                label = f"task {task} ep {episode} {condition}"
                bar.set_postfix_str(f"{label} step 0/{steps}")

                def progress(step: int, label: str = label) -> None:
                    if step % PROGRESS_EVERY == 0 or step == steps:
                        bar.set_postfix_str(f"{label} step {step}/{steps}")

                run = run_job(model, simulators, job, steps, conditions[condition], seed, record_video, progress,
                              collector)
                if on_result is not None:
                    on_result(job, run)
                runs[job] = run
                bar.update(1)
    finally:
        simulators.close()
    return runs


# -- inputs ---------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _count(value: Any, name: str, note: str = "") -> None:
    if not _is_int(value):
        raise InputError(f"{name} must be an int, got {value!r} ({type(value).__name__}). {note}".rstrip())
    if value < 1:
        raise InputError(f"{name} must be at least 1, got {value}. {note}".rstrip())


def task_list(tasks: Any) -> list[int]:
    """``tasks`` (one task id, or a sequence of distinct ids) as a list of ints."""
    if _is_int(tasks):
        return [int(tasks)]
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Iterable):
        raise InputError(f"tasks must be a task id or a list of task ids (ints), e.g. [0, 1]; got {tasks!r}.")
    items = list(tasks)
    bad = [t for t in items if not _is_int(t)]
    if bad:
        raise InputError(f"tasks must be ints, e.g. [0, 1]; got {bad[0]!r} ({type(bad[0]).__name__}) in {tasks!r}.")
    if not items:
        raise InputError("tasks is empty; give at least one task id, e.g. [0].")
    twice = sorted({int(t) for t in items if items.count(t) > 1})
    if twice:
        raise InputError(f"tasks lists {twice} more than once; list each task once.")
    return [int(t) for t in items]


def check_episodes(suite: str, tasks: Sequence[int], episodes: int) -> None:
    """Refuse more episodes than a task has init states (50 in LIBERO): a repeated init state
    would be an exact copy of an earlier episode in this deterministic simulator."""
    for task in tasks:
        count = init_state_count(suite, task)
        if episodes > count:
            raise InputError(
                f"{suite} task {task} has {count} init states, one per episode, so episodes can be "
                f"at most {count}; got {episodes}. (More would repeat init states, and a repeated "
                "episode is an exact copy of an earlier one in this deterministic simulator.)"
            )


# -- the run's settings, and resuming -------------------------------------------------------


def model_identity(model: Any) -> dict:
    """The model's class and key (source, revision, dtype, options), as a run records it."""
    try:
        key = json.loads(model_key(model))
    except Exception:  # noqa: BLE001 - a model without a key is named by its path
        key = {"source": str(getattr(model, "name_or_path", type(model).__name__))}
    return {"class": class_path(model), **key}


def describe_steering(steering: Any) -> list:
    """A JSON description of the steering that tells two steerings apart: each intervention's
    kind and settings, its clusters' neurons, and a hash of every array (directions)."""
    return [_describe(item) for item in as_list(steering)]


def _describe(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, NeuronCluster):
        return {"neurons": [list(pair) for pair in value.pairs]}
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu().float().numpy()
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {"shape": list(array.shape), "sha256": hashlib.sha256(array.tobytes()).hexdigest()}
    if depth > 6:
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _describe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v, depth + 1) for v in value]
    if hasattr(value, "__dict__"):
        fields = {k: _describe(v, depth + 1) for k, v in sorted(vars(value).items())
                  if not k.startswith("_") and k not in ("means", "description")}  # caches, notes
        return {"type": type(value).__name__, **fields}
    return repr(value)


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _open_run(folder: Path, settings: dict, weights: list, resume: bool, jobs: list[Job]) -> dict[Job, dict]:
    """The rows already finished in ``folder`` (resume), or none after starting over there."""
    manifest, episodes = folder / MANIFEST, folder / EPISODES
    if resume and (manifest.exists() or episodes.exists()):
        if not manifest.is_file():
            raise InputError(
                f"{folder} holds {EPISODES} but no {MANIFEST}, so its settings are unknown and it "
                "cannot be resumed; pass resume=False to start over there, or choose another folder."
            )
        try:
            recorded = json.loads(manifest.read_text())
            recorded_settings, recorded_weights = recorded["settings"], recorded["weights"]
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(
                f"{manifest} is not a run manifest ({error}); pass resume=False to start over "
                "there, or choose another folder."
            ) from error
        differences = [
            f"{key}: recorded {_short(recorded_settings.get(key))}, now {_short(settings.get(key))}"
            for key in dict.fromkeys([*recorded_settings, *settings])
            if recorded_settings.get(key) != settings.get(key)
        ]
        differs = same_weights([tuple(w) for w in recorded_weights], weights)
        if differs:
            differences.append(f"model weights: {differs} differs")
        if differences:
            raise InputError(
                f"cannot resume the run in {folder}: it was made with other settings ("
                + "; ".join(differences) + "). Run it with the recorded settings, pass "
                "resume=False (CLI: leave out --resume) to start over there, or choose another folder."
            )
        rows = _read_rows(episodes, set(jobs))
        if rows:
            tqdm.write(f"resuming {folder}: {len(rows)} of {len(jobs)} episodes already done", file=sys.stderr)
        return rows
    if episodes.is_file() and episodes.stat().st_size:
        tqdm.write(f"starting over in {folder}: its earlier episodes are replaced (resume=True, "
                   "CLI --resume, continues a run instead)", file=sys.stderr)
    for name in (EPISODES, *DERIVED):
        (folder / name).unlink(missing_ok=True)
    _replace(manifest, json.dumps({"settings": settings, "weights": weights}, indent=1) + "\n")
    return {}


def _read_rows(path: Path, jobs: set[Job]) -> dict[Job, dict]:
    """The rows of ``episodes.jsonl``; a last line cut short by an interruption is dropped
    (its episode runs again)."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with _writing(path):
            os.truncate(path, end)
    rows: dict[Job, dict] = {}
    for number, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            job = (row["task"], row["episode"], row["condition"])
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(
                f"line {number} of {path} is not an episode row ({error}); delete that line (its "
                "episode then runs again) and resume."
            ) from error
        if job not in jobs:
            raise InputError(
                f"line {number} of {path} is episode {job}, which this run does not have; the "
                "folder holds another run: choose another folder, or pass resume=False to start over."
            )
        rows.setdefault(job, row)
    return rows


# -- rows and files -------------------------------------------------------------------------


def _row(suite: str, job: Job, run: Episode) -> dict:
    task, episode, condition = job
    row = {"suite": suite, "task": task, "episode": episode, "condition": condition,
           **run.metrics.to_dict(), "path": run.path.tolist(), "actions": run.actions.tolist(),
           "error": run.error}
    return _json(row)  # exactly what episodes.jsonl gives back on resume


class _writing:
    """Turn an OSError while writing ``path`` into an `InputError` naming it."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if isinstance(error, OSError):
            raise InputError(
                f"could not write {self.path} ({error.strerror or error}); free some space or fix "
                "the permissions, then resume the run."
            ) from error
        return False


def _append(path: Path, row: dict) -> None:
    """One line, written in one call and flushed to disk before the next episode starts."""
    with _writing(path), open(path, "ab") as f:
        f.write((json.dumps(row) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def _replace(path: Path, text: str | bytes) -> None:
    """Write a file whole or not at all (a temporary file, then a rename)."""
    data = text.encode() if isinstance(text, str) else text
    tmp = path.with_name(f".{path.name}.tmp")
    with _writing(path):
        tmp.write_bytes(data)
        os.replace(tmp, path)


def _write_video(path: Path, frames: list) -> None:
    import imageio.v2 as imageio

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with _writing(path):
        path.parent.mkdir(exist_ok=True)
        imageio.mimwrite(tmp, frames, fps=20)
        os.replace(tmp, path)


def _failed(row: dict) -> bool:
    return row.get("error") is not None


def _summary(rows: list[dict], conditions: list[str], tasks: list[int]) -> dict:
    """Per condition: each metric's mean (success over every episode, failed ones as 0; the
    others over the episodes that did not fail; None when none is left), ``episodes``,
    ``failed``, and per task ``task<t>_success_rate``, ``task<t>_episodes``, ``task<t>_failed``."""
    out = {}
    for condition in conditions:
        mine = [r for r in rows if r["condition"] == condition]
        finished = [r for r in mine if not _failed(r)]
        means: dict[str, Any] = {}
        for metric in METRICS:
            used = mine if metric == "success" else finished
            means[metric] = float(np.mean([r[metric] for r in used])) if used else None
        means["episodes"], means["failed"] = len(mine), len(mine) - len(finished)
        for task in tasks:
            of_task = [r for r in mine if r["task"] == task]
            means[f"task{task}_success_rate"] = float(np.mean([r["success"] for r in of_task]))
            means[f"task{task}_episodes"] = len(of_task)
            means[f"task{task}_failed"] = sum(map(_failed, of_task))
        out[condition] = means
    return out


def _statistics(rows: list[dict], conditions: list[str]) -> dict:
    """Paired comparisons with the baseline. Success uses every pair (a failed episode is a
    failure); the other metrics leave out the pairs where either episode failed, and then
    say how many (``failed_pairs_left_out``)."""
    if "baseline" not in conditions:
        return {}
    by = {(r["task"], r["episode"], r["condition"]): r for r in rows}
    keys = sorted({(r["task"], r["episode"]) for r in rows})
    out = {}
    for condition in conditions:
        if condition == "baseline":
            continue
        out[condition] = {}
        intact = [k for k in keys if not _failed(by[k + ("baseline",)]) and not _failed(by[k + (condition,)])]
        for metric in METRICS:
            used = keys if metric == "success" else intact
            base = [float(by[k + ("baseline",)][metric]) for k in used]
            other = [float(by[k + (condition,)][metric]) for k in used]
            if len(used) >= 2:
                entry = paired_comparison(base, other).to_dict()
            elif used:
                entry = {"n": 1, "mean_difference": other[0] - base[0], "note": "one pair: no test"}
            else:
                entry = {"n": 0, "note": "no pair without a failed episode: no comparison"}
            if len(used) < len(keys):
                entry["failed_pairs_left_out"] = len(keys) - len(used)
            out[condition][metric] = entry
    return out


def _csv(rows: list[dict]) -> str:
    flat = []
    for r in rows:
        row = {k: v for k, v in r.items() if k not in ("path", "actions", "extra", "error")}
        for group in ("axis_displacement", "net_displacement"):
            for axis, value in row.pop(group).items():
                row[f"{group}_{axis}"] = value
        error = r.get("error") or {}
        row.update({f"error_{k}": error.get(k) for k in ("type", "message", "where")})
        flat.append(row)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(flat[0]))
    writer.writeheader()
    writer.writerows(flat)
    return text.getvalue()


def _write(folder: Path, rows, summary, statistics) -> Path:
    """The run's final files: ``episodes.jsonl`` rewritten in job order (whatever order the
    episodes finished in), then the files computed from it."""
    _replace(folder / EPISODES, "".join(json.dumps(row) + "\n" for row in rows))
    _replace(folder / "episodes.csv", _csv(rows))
    _replace(folder / "summary.json", json.dumps(summary, indent=2))
    _replace(folder / "statistics.json", json.dumps(statistics, indent=2))
    with _writing(folder):
        plot_trajectories(rows, folder / "trajectories.png")
        plot_metrics(rows, folder / "metrics.png")
    return folder
