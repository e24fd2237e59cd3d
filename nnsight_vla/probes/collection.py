"""`collect_to_disk`: a model's activations at sites over a frame source, in resumable shards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm.auto import tqdm

from ..collect import Recorder
from ..schedule import Calls, Positions
from ..errors import InputError
from ..paths import missing_folders, remove_if_empty
from ..sites import Site
from .sources import as_source
from .store import MANIFEST, Buffer, ShardFolder

DTYPES = ("float32", "bfloat16", "float16")


def settings_of(model: Any, recorder: Recorder, calls: Any, positions: Any, dtype: str, **extra: Any) -> dict:
    """What a shard folder's manifest records: the model, where and how activations were read."""
    from ..eval.records import model_identity

    if dtype not in DTYPES:
        raise InputError(f"dtype={dtype!r} is not one of {list(DTYPES)}.")
    widths = {}
    for site in recorder.sites:
        widths[str(site)] = model.towers()[site.tower].d_mlp if site.kind == "neurons" \
            else model.towers()[site.tower].d_model
    return {"model": model_identity(model), "sites": [str(s) for s in recorder.sites], "widths": widths,
            "calls": Calls.parse(calls).to_json(), "positions": Positions.parse(positions).to_json(),
            "dtype": dtype, **extra}


def collect_to_disk(
    model: Any,
    source: Any,
    sites: Site | Iterable[Site],
    out: str | os.PathLike,
    *,
    calls: Any = "actions",
    positions: Any = "last",
    dtype: str = "float32",
    shard_rows: int = 1024,
    batch_size: int = 1,
    targets: Iterable[str] = (),
    resume: bool = False,
    progress: bool = True,
    **options: Any,
) -> ShardFolder:
    """Collect ``model``'s activations at ``sites`` over every frame of ``source`` into ``out``.

    ``source``: a LeRobotDataset root folder (`DatasetFrames`), a list of observations
    (`ObservationFrames`) or either object. ``calls`` and ``positions`` are `collect`'s (by
    default the forwards that emit actions, at their last position). Rows are written in
    shards of ``shard_rows`` (``shard-<first row>.safetensors``: activations ``[rows, calls,
    positions, width]`` per site in ``dtype``, episode and frame ids, the frames' targets) with
    ``manifest.json``; memory holds one shard. ``targets`` adds targets computed by the model:
    ``"action_bins"`` (OpenVLA's action-token bin of each dimension of the frame's action).

    With ``resume=True`` an interrupted collection continues after its last complete shard and
    ends with the same arrays as an uninterrupted one; a folder holding another collection
    (another model, sites, source...) is refused.

    Example:
        >>> collect_to_disk(model, "data/lift", [Site(l, "resid") for l in range(4)], "acts/lift")
    """
    frames = as_source(source)
    if len(frames) == 0:
        raise InputError("the source has no frames; nothing to collect.")
    for name, value in (("shard_rows", shard_rows), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name}={value!r} must be a positive int.")
    if shard_rows % batch_size:
        raise InputError(f"shard_rows={shard_rows} must be a multiple of batch_size={batch_size}, so a "
                         "resumed collection batches its frames as an uninterrupted one does.")
    extra = sorted(set(targets))
    unknown = [t for t in extra if t != "action_bins"]
    if unknown:
        raise InputError(f"unknown model targets {unknown}; the one there is: 'action_bins'.")
    model.dispatch()
    frames.check(model)
    recorder = Recorder(model, sites, calls=calls, positions=positions, batch_size=batch_size)
    settings = settings_of(model, recorder, calls, positions, dtype, source=frames.describe(),
                           shard_rows=shard_rows, batch_size=batch_size, model_targets=extra,
                           options={k: repr(v) for k, v in sorted(options.items())})
    made = (missing_folders(out), (Path(out).expanduser() / MANIFEST).exists())  # folders to make, manifest
    store = ShardFolder.open(out, settings, resume)
    done = store.rows()
    buffer, batch = Buffer.empty(), []
    first = done

    def predict() -> None:
        with recorder.prediction(stop_early=True) as got:
            model.predict_action([f.observation for f in batch], **options)
        for i, frame in enumerate(batch):
            row_targets = dict(frame.targets)
            if "action_bins" in extra:
                row_targets["action_bins"] = _bins(model, frame)
            buffer.add({s: a[i : i + 1] for s, a in got.activations.items()},
                       {"episode": frame.episode, "frame": frame.frame}, row_targets)
        batch.clear()

    try:
        with tqdm(total=len(frames), initial=done, desc="collect", unit="frame", disable=not progress) as bar:
            for frame in frames.frames(done):
                batch.append(frame)
                if len(batch) == batch_size:
                    predict()
                    bar.update(batch_size)
                if len(buffer) == shard_rows:
                    buffer.flush(store, f"shard-{first:09d}")
                    first += shard_rows
            if batch:
                bar.update(len(batch))
                predict()
            if len(buffer):
                buffer.flush(store, f"shard-{first:09d}")
    except BaseException as error:
        if not store.shards():
            _undo_open(store, made)  # nothing collected: the folder is as it was before the call
        else:
            error.add_note(f"{store.rows()} of {len(frames)} frames are saved in {store.folder}; run the same "
                           "collect_to_disk with resume=True (CLI: --resume) to continue from them.")
        raise
    return store


def _undo_open(store: ShardFolder, made: tuple[list[Path], bool]) -> None:
    """Remove what `ShardFolder.open` made in a folder that got no shard.

    That is its manifest and lock where there was no manifest before, and the folders it
    created (``made``: those folders, whether the manifest existed).
    """
    folders, manifest_existed = made
    if not manifest_existed:
        for name in (MANIFEST, ".manifest.lock"):
            (store.folder / name).unlink(missing_ok=True)
    remove_if_empty(folders)


def _bins(model: Any, frame: Any) -> np.ndarray:
    action = frame.targets.get("action")
    if action is None:
        raise InputError("target 'action_bins' needs the frames' actions; this source has no 'action'.")
    return np.asarray(model.action_bins(np.asarray(action)[None])[0], np.int64)
