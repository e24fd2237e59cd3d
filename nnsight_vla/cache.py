"""The project's cache of derived tensors: files that are slow to make and cheap to read.

Everything lives under ``$NNSIGHT_VLA_HOME`` (default ``~/.cache/nnsight-vla``). A cached file is a
safetensors file whose metadata holds the ``key`` it was made for (a hash of everything that
determines it) and the digest of its tensors; `read` returns it only when both match, so a stale
or damaged file is never used, only made again. `write` is atomic (a reader sees all or
nothing) and `locked` serialises makers, so processes building at once (pytest-xdist workers)
make a file once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Mapping

import torch

__all__ = ["cache_dir", "digest", "locked", "read", "write"]


def cache_dir(name: str) -> Path:
    """``$NNSIGHT_VLA_HOME/<name>``, else ``~/.cache/nnsight-vla/<name>`` (not created here)."""
    home = os.environ.get("NNSIGHT_VLA_HOME") or Path.home() / ".cache" / "nnsight-vla"
    return Path(home).expanduser() / name


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes, in name order."""
    sha = hashlib.sha256()
    for name in sorted(tensors):
        sha.update(f"{name} {tensors[name].dtype} {tuple(tensors[name].shape)}".encode())
        sha.update(tensors[name].detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def read(path: Path, key: str) -> tuple[dict[str, torch.Tensor] | None, dict[str, str], str]:
    """The tensors and metadata in ``path`` if it was written for ``key`` and is intact.

    Else ``(None, {}, why not)``; the last item is ``"usable"`` on success.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None, {}, "absent"
    try:
        with safe_open(str(path), "pt") as handle:
            meta = dict(handle.metadata() or {})
        if meta.get("key") != key:
            return None, {}, "written for other code, versions or inputs"
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        return None, {}, f"unreadable ({err})"
    if meta.get("sha256") != digest(tensors):
        return None, {}, "damaged: its content does not match its digest"
    return tensors, meta, "usable"


def write(path: Path, key: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] = {}) -> None:
    """Write ``tensors`` with ``key``, their digest and ``metadata``, atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
        pass
    try:
        save_file(dict(tensors), tmp.name, metadata={**metadata, "key": key, "sha256": digest(tensors)})
        os.chmod(tmp.name, 0o644)  # readable like any cache file (a temporary file is private)
        os.replace(tmp.name, path)
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)


@contextlib.contextmanager
def locked(path: Path, what: str) -> Iterator[bool]:
    """Hold ``path``'s lock file; yields whether its folder can be written at all.

    If it cannot, a warning says that ``what`` is made in memory only.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a")
    except OSError as err:
        warnings.warn(f"cannot cache {what} in {path.parent} ({err}); making it in memory each time. "
                      "Set NNSIGHT_VLA_HOME to a writable folder to cache it.", stacklevel=4)
        yield False
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
