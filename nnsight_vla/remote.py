"""One model identity: the key that nnsight's ``remote=`` and the Ray workers rebuild a model from, and Hub files fetched config first, weights at dispatch."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

from .errors import CheckpointError, InputError

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


def _cached_commit(source: str, revision: str | None, weights: bool) -> Path | None:
    """The local Hub cache's snapshot of a pinned commit, or None.

    A commit never changes, so it needs no lookup; huggingface_hub would ask the Hub even
    offline. None when it is not there, or, for ``weights``, holds no weight file.
    """
    if revision is None or not _COMMIT.fullmatch(revision):
        return None
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"models--{source.replace('/', '--')}" / "snapshots" / revision
    if not folder.is_dir() or (weights and not any(any(folder.glob(p)) for p in WEIGHT_FILES)):
        return None
    return folder


def _snapshot(source: str, revision: str | None, what: str, **patterns: Any) -> Path:
    import huggingface_hub

    cached = _cached_commit(source, revision, weights="allow_patterns" in patterns)
    if cached is not None:
        return cached
    try:
        return Path(huggingface_hub.snapshot_download(source, revision=revision, **patterns))
    except Exception as err:  # offline, unknown or gated repository, unknown revision
        raise CheckpointError(
            f"cannot get {what} of {source!r} (revision {revision!r}) from the Hugging Face Hub "
            f"({type(err).__name__}: {err}); download the checkpoint where the Hub is reachable "
            "and pass its folder."
        ) from err


def config_folder(source: str | Path, revision: str | None = None) -> tuple[Path, str | None]:
    """A checkpoint's folder with everything but its weights, and the revision it holds.

    The folder has the config, tokenizer, processor and statistics files: ``source`` itself
    when it is a folder, else a Hub snapshot pinned to its commit.
    """
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


#: Weight formats NDIF names by string that our models do not load.
QUANTIZATIONS = ("int8", "int4", "nf4", "fp4", "8bit", "4bit", "gptq", "awq")


def _placement(kwargs: dict) -> Any:
    """The one device a model goes to, from NDIF's placement arguments.

    These are ``device=<GPU index>`` or ``device_map="balanced"`` with
    ``max_memory={gpu: bytes}`` (our models are not split across devices: the GPU with the
    most memory allowed takes it all).
    """
    device, device_map = kwargs.pop("device", None), kwargs.pop("device_map", None)
    max_memory = kwargs.pop("max_memory", None)
    if device is None and isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise InputError(f"device_map={device_map!r} splits the model; these models go to one device.")
        device = devices.pop()
    elif device is None and device_map in ("auto", "balanced", "sequential") and max_memory:
        gpus = {k: v for k, v in max_memory.items() if isinstance(k, int) or str(k).isdigit()}
        device = max(gpus, key=gpus.get) if gpus else "cpu"
    elif device is None and device_map not in (None, "auto", "balanced", "sequential"):
        device = device_map
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        device = f"cuda:{int(device)}"
    return device


def from_model_key(cls: type, key: str, **kwargs: Any) -> Any:
    """Rebuild a model of ``cls`` from its key, taking what NDIF or a worker passes.

    That is ``dispatch``, ``dtype`` (a torch dtype or its name), ``device`` (a name or a GPU
    index) or ``device_map`` with ``max_memory``, and ``trust_remote_code`` (ignored: no remote
    code runs). Without ``dispatch`` the model is built on the meta device and no weight file
    is read.
    """
    try:
        fields = json.loads(key)
        source = fields.pop("source")
    except (ValueError, KeyError, AttributeError, TypeError) as err:
        raise InputError(f"{key!r} is not a model key of {cls.__name__}; make one with model.to_model_key().") from err
    kwargs.pop("trust_remote_code", None)
    dtype = kwargs.pop("dtype", None)
    if isinstance(dtype, str) and dtype.lower() in QUANTIZATIONS:
        raise InputError(f"dtype={dtype!r}: quantized weights are not supported; deploy with dtype "
                         "'bfloat16', 'float16' or 'float32'.")
    if dtype is not None:
        fields["dtype"] = dtype
    device = _placement(kwargs)
    if device is not None:
        fields["device"] = device
    if "dispatch" in kwargs:
        fields["dispatch"] = kwargs.pop("dispatch")
    if kwargs:
        raise InputError(f"from_model_key got unknown arguments {sorted(kwargs)}; it takes dispatch, dtype, "
                         "device, device_map, max_memory and trust_remote_code.")
    return cls(source, **fields)


def rebuild(path: str, key: str, **kwargs: Any) -> Any:
    """Import the class at ``module:QualName`` and rebuild the model of ``key`` with it."""
    module, _, name = path.partition(":")
    return from_model_key(getattr(importlib.import_module(module), name), key, **kwargs)
