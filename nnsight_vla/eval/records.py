"""The files of an evaluation run: its settings, one row per finished episode (resumable), and the files derived from them."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm import tqdm

from ..errors import InputError
from ..neurons import NeuronCluster
from ..remote import class_path, model_key
from ..edits import as_list
from .plots import plot_metrics, plot_trajectories
from .rollout import Episode

#: The run's settings (written before the first rollout; a resumed run must match them).
MANIFEST = "run.json"
#: One JSON row per finished episode, appended as each one finishes.
EPISODES = "episodes.jsonl"
#: Files computed from the rows at the end of a run.
DERIVED = ("episodes.csv", "summary.json", "statistics.json", "trajectories.png", "metrics.png")


#: (task, episode, condition)
Job = tuple[int, int, str]


def fingerprint(module: torch.nn.Module) -> list[tuple[str, float, float]]:
    """Per tensor (name, sum, sum of squares) in float64.

    Two copies of a model agree only if their weights do (an in-memory edit, such as a planted
    neuron, changes it).
    """
    out = []
    for name, tensor in module.state_dict().items():
        t = tensor.detach()
        if not t.is_floating_point():
            t = t.double()
        out.append((name, float(t.sum(dtype=torch.float64)), float(torch.linalg.vector_norm(t, dtype=torch.float64) ** 2)))
    return out


def same_weights(a: list, b: list, rtol: float = 1e-9) -> str | None:
    """None when two fingerprints agree; else the first tensor that differs."""
    if [n for n, *_ in a] != [n for n, *_ in b]:
        return "the tensor names"
    for (name, s1, q1), (_, s2, q2) in zip(a, b):
        if abs(s1 - s2) > rtol * max(1.0, abs(q1) ** 0.5) or abs(q1 - q2) > rtol * max(1.0, abs(q1)):
            return name
    return None


def model_identity(model: Any) -> dict:
    """The model's class and key (source, revision, dtype, options), as a run records it."""
    try:
        key = json.loads(model_key(model))
    except Exception:  # noqa: BLE001 - a model without a key is named by its path
        key = {"source": str(getattr(model, "name_or_path", type(model).__name__))}
    return {"class": class_path(model), **key}


def describe_steering(steering: Any) -> list | dict:
    """A JSON description of the steering that tells two steerings apart.

    It holds each intervention's kind and settings, its clusters' neurons, and a hash of every
    array (directions); a dict of named steerings is described name by name.
    """
    if isinstance(steering, Mapping):
        return {str(name): describe_steering(value) for name, value in steering.items()}
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


def file_label(condition: str) -> str:
    """A condition's name as used in file names (a random control ``up/random3`` is ``up__random3``)."""
    return condition.replace("/", "__")


def as_json(value: Any) -> Any:
    """``value`` after a JSON round trip (tuples become lists, dict keys strings)."""
    return json.loads(json.dumps(value))


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def open_run(folder: Path, settings: dict, weights: list, resume: bool, jobs: list[Job]) -> dict[Job, dict]:
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
        added = _added_conditions(recorded_settings, settings)
        differences = [
            f"{key}: recorded {_short(recorded_settings.get(key))}, now {_short(settings.get(key))}"
            for key in dict.fromkeys([*recorded_settings, *settings])
            if recorded_settings.get(key) != settings.get(key) and not (key == "conditions" and added)
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
        rows = read_rows(episodes, set(jobs))
        if added:  # the manifest now lists every condition, as a run made with them from the start
            replace_file(manifest, json.dumps({"settings": settings, "weights": weights}, indent=1) + "\n")
            tqdm.write(f"extending {folder} by {len(added)} conditions ({added[0]}, ...)", file=sys.stderr)
        if rows:
            tqdm.write(f"resuming {folder}: {len(rows)} of {len(jobs)} episodes already done", file=sys.stderr)
        return rows
    if episodes.is_file() and episodes.stat().st_size:
        tqdm.write(f"starting over in {folder}: its earlier episodes are replaced (resume=True, "
                   "CLI --resume, continues a run instead)", file=sys.stderr)
    for name in (EPISODES, *DERIVED):
        (folder / name).unlink(missing_ok=True)
    replace_file(manifest, json.dumps({"settings": settings, "weights": weights}, indent=1) + "\n")
    return {}


def _added_conditions(recorded: dict, settings: dict) -> list[str]:
    """The conditions ``settings`` adds to a recorded run that it otherwise equals, else [].

    A condition's name fixes what it runs (a random control ``up/random7`` is drawn from the
    seed and its index), so a run resumed with more random controls keeps every recorded row
    and runs only the new conditions' episodes.
    """
    old, new = recorded.get("conditions") or [], settings.get("conditions") or []
    rest = [key for key in {**recorded, **settings} if key != "conditions"]
    if any(recorded.get(key) != settings.get(key) for key in rest) or not set(old) < set(new):
        return []
    return [name for name in new if name not in old]


def read_rows(path: Path, jobs: set[Job]) -> dict[Job, dict]:
    """The rows of ``episodes.jsonl``, by job.

    A last line cut short by an interruption is dropped (its episode runs again).
    """
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


def episode_row(suite: str, job: Job, run: Episode) -> dict:
    """One finished job's ``episodes.jsonl`` row: its job, metrics, path, actions and error."""
    task, episode, condition = job
    row = {"suite": suite, "task": task, "episode": episode, "condition": condition,
           **run.metrics.to_dict(), "path": run.path.tolist(), "actions": run.actions.tolist(),
           "error": run.error}
    return as_json(row)  # exactly what episodes.jsonl gives back on resume


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


def append_row(path: Path, row: dict) -> None:
    """One line, written in one call and flushed to disk before the next episode starts."""
    with _writing(path), open(path, "ab") as f:
        f.write((json.dumps(row) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def replace_file(path: Path, text: str | bytes) -> None:
    """Write a file whole or not at all (a temporary file, then a rename)."""
    data = text.encode() if isinstance(text, str) else text
    tmp = path.with_name(f".{path.name}.tmp")
    with _writing(path):
        tmp.write_bytes(data)
        os.replace(tmp, path)


def write_video(path: Path, frames: list) -> None:
    """Write ``frames`` as a 20 fps video, whole or not at all (a temporary file, then a rename)."""
    import imageio.v2 as imageio

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with _writing(path):
        path.parent.mkdir(exist_ok=True)
        imageio.mimwrite(tmp, frames, fps=20)
        os.replace(tmp, path)


def rows_csv(rows: list[dict]) -> str:
    """Episode rows as CSV text, one column per value.

    Path, actions and extra are left out; the per-axis displacements and the error are spread
    over columns such as ``axis_displacement_x`` and ``error_type``.
    """
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


def write_files(folder: Path, rows, summary, statistics) -> Path:
    """Write the run's final files; returns ``folder``.

    ``episodes.jsonl`` is rewritten in job order (whatever order the episodes finished in),
    then the files computed from it are written.
    """
    replace_file(folder / EPISODES, "".join(json.dumps(row) + "\n" for row in rows))
    replace_file(folder / "episodes.csv", rows_csv(rows))
    replace_file(folder / "summary.json", json.dumps(summary, indent=2))
    replace_file(folder / "statistics.json", json.dumps(statistics, indent=2))
    with _writing(folder):
        plot_trajectories(rows, folder / "trajectories.png")
        plot_metrics(rows, folder / "metrics.png")
    return folder
