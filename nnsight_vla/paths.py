"""Output paths checked before any heavy work: a folder or file the caller can write.

`writable_folder` and `writable_file` create nothing lasting, so a refused call leaves the file
system as it was: each writes (and removes) a probe file in the folder that would hold the
output, the only proof of writability that holds for root; `probed_folder` also creates the
folder. The write itself goes through `writing`, which turns an OS error into an
`InputError` naming the path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InputError, VLAError


def _existing_ancestor(path: Path, what: str) -> Path:
    """The nearest existing folder above ``path``; every existing step on the way must be a folder."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(
                    f"{what} {path} cannot be created: {parent} is a file, not a folder; "
                    "choose a path under a folder."
                )
            return parent
    return Path.cwd()  # pragma: no cover - a relative path's parents end at "."


def _check_folder_writable(folder: Path, path: Path, what: str) -> None:
    """Write and remove a temporary file in ``folder``, to prove it is writable.

    Permission bits prove nothing to root (``os.access`` says yes to any path), a write does.
    """
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise InputError(
            f"{what} {path} is not writable: cannot write in {folder} ({error.strerror or error}); choose "
            "another path or fix the folder's permissions."
        ) from error


def writable_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``path`` as a folder this process can create or write into (nothing is created).

    Example:
        >>> writable_folder("runs/lens")
        PosixPath('runs/lens')
    """
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{what} {path} is a file, not a folder; pass a folder path.")
        _check_folder_writable(path, path, what)
        return path
    _check_folder_writable(_existing_ancestor(path, what), path, what)
    return path


def writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """``path`` as a file this process can create or overwrite (nothing is created).

    Example:
        >>> writable_file("runs/clusters.yaml")
        PosixPath('runs/clusters.yaml')
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; pass a file path (e.g. {path / 'out'}).")
    if path.exists():
        try:
            open(path, "ab").close()  # opens for writing, changes nothing
        except OSError as error:
            raise InputError(f"{what} {path} is not writable ({error.strerror or error}); choose another path or "
                             "fix its permissions.") from error
        return path
    _check_folder_writable(_existing_ancestor(path, what), path, what)
    return path


def probed_folder(out_dir: str | os.PathLike, create: bool = True, what: str = "output folder") -> Path:
    """``out_dir`` as a folder this process can write (created when ``create``).

    Checked by writing a probe file; else `InputError` naming it. Without ``create`` nothing
    is left on disk (`writable_folder`).
    """
    folder = writable_folder(out_dir, what)
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"{what} {folder} cannot be created ({error.strerror or error}); choose another "
                             "path.") from error
    return folder


def missing_folders(path: str | os.PathLike) -> list[Path]:
    """The folders that creating the folder ``path`` would make, deepest first (none if it exists)."""
    path, out = Path(path).expanduser().absolute(), []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def remove_if_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first, as `missing_folders` gives them) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone: leave it and its parents
            if folder.exists():
                return


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "output") -> Iterator[None]:
    """Turn an `OSError` raised while writing ``path`` into an `InputError` naming it."""
    try:
        yield
    except VLAError:
        raise
    except OSError as err:
        raise InputError(
            f"could not write {what} {path}: {err.strerror or err}; choose another path "
            "(check permissions and free space)."
        ) from err
