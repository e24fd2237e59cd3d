"""Activation shards on disk: safetensors files of rows, a manifest of how they were collected."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import InputError
from ..paths import probed_folder
from ..sites import Site

MANIFEST = "manifest.json"
FORMAT = 2  # 2: sites named by str(site), tower.layer.kind
INDEX = "shards"  # the manifest's index of written shards: rows, episodes, frames, targets
ACTS, TARGET = "acts/", "target/"  # tensor name prefixes inside a shard
IDS = ("episode", "frame")


class ShardFolder:
    """A folder of shards that share one manifest (what model, sites, calls, positions and dtype).

    A shard is written to a temporary name and renamed, so a shard file on disk is complete;
    an interrupted write leaves nothing a later run would mistake for data.

    Example:
        >>> store = ShardFolder.open("acts/", settings, resume=True)
        >>> store.write("shard-000000", activations, ids, targets)
    """

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest

    @classmethod
    def open(cls, folder: str | os.PathLike, settings: Mapping[str, Any], resume: bool,
             restart: bool = False) -> ShardFolder:
        """The folder for a collection with ``settings``.

        New, or one holding a collection with the same settings, continued (``resume``) or
        started over (``restart``: its shards are deleted). Another collection there is refused.
        """
        path = probed_folder(folder, create=True)
        settings = json.loads(json.dumps({"format": FORMAT, **settings}))
        manifest_file = path / MANIFEST
        index: dict = {}
        if manifest_file.is_file():
            old = json.loads(manifest_file.read_text())
            index = old.pop(INDEX, {})
            if old != settings:
                diff = sorted(k for k in {*old, *settings} if old.get(k) != settings.get(k))
                raise InputError(
                    f"{path} holds activations collected with other settings (differing: {diff}, "
                    f"e.g. model {old.get('model')}); collect into another folder."
                )
            if restart and not resume:
                for shard in cls(path, old).shards():
                    shard.unlink()
                index = {}
            elif not resume and cls(path, old).shards():
                raise InputError(f"{path} already holds this collection's shards; pass resume=True "
                                 "(CLI: --resume) to continue it, or choose another folder.")
        elif any(path.iterdir()):
            raise InputError(f"{path} is not empty and holds no {MANIFEST}; collect into an empty folder.")
        for stale in path.glob("*.tmp"):  # a write cut short: never data
            stale.unlink()
        written = {p.name for p in path.glob("*.safetensors")}
        manifest = {**settings, INDEX: {k: v for k, v in index.items() if k in written}}
        _write_json(manifest_file, manifest)
        return cls(path, manifest)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> ShardFolder:
        """An existing folder of shards, to read."""
        path = Path(folder).expanduser()
        manifest_file = path / MANIFEST
        if not manifest_file.is_file():
            raise InputError(f"{path} holds no {MANIFEST}: it is not a folder of collected activations "
                             "(make one with nnsight_vla.probes.collect_to_disk or `nnsight-vla collect`).")
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("format") != FORMAT:
            raise InputError(f"{path}: manifest format {manifest.get('format')!r}, this version reads {FORMAT}; "
                             "collect the activations again with this version.")
        return cls(path, manifest)

    @property
    def sites(self) -> list[Site]:
        """The sites the manifest names."""
        return [Site.parse(name) for name in self.manifest["sites"]]

    def shards(self) -> list[Path]:
        """The complete shard files, in name order (the order of their rows)."""
        return sorted(self.folder.glob("*.safetensors"))

    def rows(self) -> int:
        """Rows in all complete shards."""
        total = 0
        for shard in self.shards():
            with safe_open(shard, "pt") as f:
                total += int(f.metadata()["rows"])
        return total

    def write(self, name: str, activations: Mapping[Site, torch.Tensor], ids: Mapping[str, np.ndarray],
              targets: Mapping[str, np.ndarray]) -> Path:
        """Write one shard ``name``, record it in the manifest, and return its path.

        It holds activations ``[rows, calls, positions, width]`` per site (in the manifest's
        dtype), the rows' episode and frame ids, and their targets.
        """
        dtype = getattr(torch, self.manifest["dtype"])
        tensors = {ACTS + str(s): a.to(dtype).contiguous() for s, a in activations.items()}
        tensors.update({k: torch.as_tensor(np.asarray(ids[k], np.int64)) for k in IDS})
        tensors.update({TARGET + k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in targets.items()})
        rows = {t.shape[0] for t in tensors.values()}
        if len(rows) != 1:
            raise InputError(f"shard {name}: arrays with different row counts {sorted(rows)}.")
        final = self.folder / f"{name}.safetensors"
        temporary = final.with_suffix(".tmp")
        count = rows.pop()
        save_file(tensors, str(temporary), metadata={"rows": str(count)})
        os.replace(temporary, final)
        episodes = sorted({int(e) for e in np.asarray(ids["episode"])})
        frames = np.asarray(ids["frame"])
        self._index(final.name, {
            "rows": count, "episodes": episodes, "frames": [int(frames.min()), int(frames.max())],
            "targets": {k: [str(np.asarray(v).dtype), list(np.asarray(v).shape[1:])] for k, v in targets.items()},
        })
        return final

    def _index(self, name: str, entry: dict) -> None:
        """Record a written shard in the manifest (under a lock: Ray workers write side by side)."""
        import fcntl

        with open(self.folder / ".manifest.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            manifest = json.loads((self.folder / MANIFEST).read_text())
            manifest.setdefault(INDEX, {})[name] = entry
            _write_json(self.folder / MANIFEST, manifest)
        self.manifest = manifest

    def load(self, sites: list[Site] | None = None) -> dict[str, Any]:
        """Every complete shard's rows, concatenated, as numpy (float32 activations).

        Returns ``{"activations": {site: array}, "episode", "frame", "targets": {name: array}}``;
        ``sites`` (default: all) picks the activations.
        """
        shards = self.shards()
        if not shards:
            raise InputError(f"{self.folder} holds no complete shard; the collection wrote nothing yet.")
        known = self.sites
        wanted = known if sites is None else [s for s in sites]
        missing = [str(s) for s in wanted if s not in known]
        if missing:
            raise InputError(f"{self.folder} has no activations at {missing}; it holds {[str(s) for s in known]}.")
        parts: dict[str, list[np.ndarray]] = {}
        for shard in shards:
            with safe_open(shard, "pt") as f:
                for key in f.keys():
                    if key.startswith(ACTS) and Site.parse(key[len(ACTS):]) not in wanted:
                        continue
                    parts.setdefault(key, []).append(f.get_tensor(key).float().numpy()
                                                     if key.startswith(ACTS) else f.get_tensor(key).numpy())
        joined = {k: np.concatenate(v) for k, v in parts.items()}
        return {
            "activations": {s: joined[ACTS + str(s)] for s in wanted},
            **{k: joined[k] for k in IDS},
            "targets": {k[len(TARGET):]: v for k, v in joined.items() if k.startswith(TARGET)},
        }


def _write_json(path: Path, value: Any) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value, indent=2))
    os.replace(temporary, path)


@dataclass
class Buffer:
    """Rows waiting for their shard: memory stays bounded by ``shard_rows``."""

    activations: dict
    ids: dict
    targets: dict

    @classmethod
    def empty(cls) -> Buffer:
        """A buffer with no rows."""
        return cls({}, {k: [] for k in IDS}, {})

    def add(self, activations: Mapping[Site, torch.Tensor], ids: Mapping[str, Any], targets: Mapping[str, Any]) -> None:
        """Add one row: activations per site (row axis first), episode and frame ids, targets."""
        for site, value in activations.items():
            self.activations.setdefault(site, []).append(value)
        for key in IDS:
            self.ids[key].append(np.atleast_1d(ids[key]))
        for key, value in targets.items():
            self.targets.setdefault(key, []).append(np.asarray(value)[None])

    def __len__(self) -> int:
        return sum(len(v) for v in self.ids["episode"])

    def flush(self, store: ShardFolder, name: str) -> None:
        """Write the rows as shard ``name`` of ``store``, then empty the buffer."""
        store.write(name, {s: torch.cat(v) for s, v in self.activations.items()},
                    {k: np.concatenate(v) for k, v in self.ids.items()},
                    {k: np.concatenate(v) for k, v in self.targets.items()})
        self.activations, self.ids, self.targets = {}, {k: [] for k in IDS}, {}
