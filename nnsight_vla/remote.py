"""One model identity: the key that nnsight's ``remote=`` and the Ray workers rebuild a model from, and Hub files fetched config first, weights at dispatch."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

from .errors import CheckpointError

#: Files that hold weights: fetched only when a model is dispatched.
WEIGHT_FILES = (
    "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
    "pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf",
)
#: A Hub cache folder named by its commit: ``.../snapshots/<40 hex digits>``.
_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_hub_id(source: str) -> bool:
    """``"org/name"`` that is not a path on this machine."""
    path = Path(source).expanduser()
    return source.count("/") == 1 and not path.exists() and not source.startswith((".", "/", "~"))


def _snapshot(source: str, revision: str | None, what: str, **patterns: Any) -> Path:
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(source, revision=revision, **patterns))
    except Exception as err:  # offline, unknown or gated repository, unknown revision
        raise CheckpointError(
            f"cannot get {what} of {source!r} (revision {revision!r}) from the Hugging Face Hub "
            f"({type(err).__name__}: {err}); download the checkpoint where the Hub is reachable "
            "and pass its folder."
        ) from err


def config_folder(source: str | Path, revision: str | None = None) -> tuple[Path, str | None]:
    """A checkpoint's folder with everything but its weights (config, tokenizer, processor
    and statistics files), and the revision it holds: ``source`` itself when it is a folder,
    else a Hub snapshot pinned to its commit."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path, revision
    folder = _snapshot(str(source), revision, "the configuration", ignore_patterns=list(WEIGHT_FILES))
    return folder, folder.name if _COMMIT.fullmatch(folder.name) else revision


def weights_folder(source: str | Path, revision: str | None = None) -> Path:
    """The folder holding a checkpoint's weights (fetched from the Hub now, at dispatch)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    return _snapshot(str(source), revision, "the weights", allow_patterns=list(WEIGHT_FILES))


def class_path(model: Any) -> str:
    """``module:QualName`` of the model's class, which a server or worker imports to rebuild it."""
    return f"{type(model).__module__}:{type(model).__qualname__}"


def model_key(model: Any) -> str:
    """The JSON key of a model: source, revision, dtype and the family's options (sorted)."""
    from .checkpoint import dtype_name

    key = {"source": model.name_or_path, "revision": model.revision,
           "dtype": dtype_name(model.torch_dtype), **model._key_options()}
    return json.dumps(key, sort_keys=True)


def from_model_key(cls: type, key: str, **kwargs: Any) -> Any:
    """Rebuild a model of ``cls`` from its key, taking what NDIF or a worker passes:
    ``dispatch``, ``dtype`` (a string), ``device`` or ``device_map`` (``max_memory`` is ignored)."""
    fields = json.loads(key)
    device_map = kwargs.pop("device_map", None)
    kwargs.pop("max_memory", None)
    if device_map is not None and "device" not in kwargs and isinstance(device_map, str):
        kwargs["device"] = None if device_map in ("auto", "balanced") else device_map
    fields.update({k: v for k, v in kwargs.items() if k in ("dtype", "device", "dispatch")})
    return cls(fields.pop("source"), **fields)


def rebuild(path: str, key: str, **kwargs: Any) -> Any:
    """Import the class at ``module:QualName`` and rebuild the model of ``key`` with it."""
    module, _, name = path.partition(":")
    return from_model_key(getattr(importlib.import_module(module), name), key, **kwargs)
