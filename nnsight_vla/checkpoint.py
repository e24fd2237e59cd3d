"""Strict reading and writing of safetensors checkpoints in the Hugging Face layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import torch

from .errors import CheckpointError, InputError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` / ``torch.bfloat16`` → ``torch.bfloat16``; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; use one of {sorted(_DTYPES)}.")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype | None) -> str | None:
    """The inverse of `parse_dtype`."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def parse_device(device: str | int | torch.device | None) -> str | None:
    """``"cuda"`` / ``torch.device("cuda", 0)`` / ``0`` → a device string this machine has.

    None stays None. Checked before anything is read, so a typo costs no loading time.

    Example:
        >>> parse_device("cpu")
        'cpu'
    """
    if device is None:
        return None
    hint = "use 'cpu', 'cuda', 'cuda:0' (or 'mps' on Apple silicon)"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise InputError(f"device={device!r} is not a device name; {hint}.") from err
    if parsed.type == "meta":
        raise InputError(
            "device='meta' holds no weights; pass dispatch=False to build on the meta device "
            "without loading weights (model.dispatch() loads them later)."
        )
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"device={device!r}: CUDA is not available on this machine (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda}); use device='cpu'."
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise InputError(
                f"device={device!r}: this machine has {count} CUDA device(s) "
                f"(cuda:0..cuda:{count - 1}); pick one of them."
            )
    elif parsed.type != "cpu":
        try:  # mps, xpu, ...: an empty tensor is the cheapest honest probe
            torch.empty(0, device=parsed)
        except Exception as err:  # noqa: BLE001 - backends raise RuntimeError, AssertionError, ...
            raise InputError(
                f"device={device!r} is not usable here ({type(err).__name__}: {err}); {hint}."
            ) from err
    return str(parsed)


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    """One safetensors file, or `CheckpointError` naming it when it is truncated or corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        size = path.stat().st_size if path.exists() else 0
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({size} bytes: {err}); it is truncated "
            "or corrupt. Download that file again (or re-save the model with "
            "`model.save_pretrained(path)`)."
        ) from err


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder (``model.safetensors`` or shards plus their index).

    A truncated or corrupt file raises `CheckpointError` naming it.
    """
    folder = Path(folder)
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map: dict = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index} is not a safetensors index ({err}).") from err
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(
                f"{folder} is missing shard(s) {missing} listed in {INDEX}; "
                "copy the complete checkpoint (every shard) into the folder."
            )
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            part = _load_file(folder / shard)
            twice = sorted(set(part) & set(tensors))
            if twice:
                raise CheckpointError(
                    f"{folder}: {twice[:5]} stored in more than one shard; re-download the checkpoint."
                )
            tensors.update(part)
        unlisted = sorted(set(tensors) - set(weight_map))
        absent = sorted(set(weight_map) - set(tensors))
        if unlisted or absent:
            raise CheckpointError(
                f"{folder}: shards and {INDEX} disagree (in shards only: {unlisted[:5]}, "
                f"in the index only: {absent[:5]}); re-download the checkpoint."
            )
        return tensors
    if (folder / SINGLE).is_file():
        return _load_file(folder / SINGLE)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    hint = f"found shards {shards} but no {INDEX}" if shards else "found no weights"
    raise CheckpointError(
        f"{folder}: {hint}; a checkpoint needs {SINGLE} or its shards with {INDEX}. "
        "Copy the complete checkpoint, or save one with `model.save_pretrained(path)`."
    )


def write_state_dict(
    folder: str | Path, tensors: Mapping[str, torch.Tensor], max_shard_bytes: int = 5 * 2**30
) -> list[str]:
    """Write ``tensors`` as ``model.safetensors`` or as shards with an index; return the files."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().contiguous().cpu()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], folder / SINGLE, metadata={"format": "pt"})
        return [SINGLE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX).write_text(json.dumps(index, indent=2))
    return [*names, INDEX]


def check_state_dict(
    expected: Mapping[str, torch.Size], found: Mapping[str, torch.Tensor], where: str
) -> None:
    """Raise `CheckpointError` naming every missing, unexpected or mis-shaped weight."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = [
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k])}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k])
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
            problems.append(f"{len(items)} {label}: {items[:10]}{more}")
    if problems:
        raise CheckpointError(
            f"{where} does not match the architecture its config describes; "
            + "; ".join(problems)
            + ". Nothing was loaded: fix the checkpoint (or its config.json) rather than "
            "running with random weights."
        )


def rebuild_buffers(module: torch.nn.Module) -> None:
    """Recompute the non-persistent buffers that checkpoints do not carry.

    Covers the transformers modules that have them: rotary frequencies, SigLIP position ids
    and Gemma's embedding scale. Anything else left on the meta device is reported by
    `load_module`.
    """
    for sub in module.modules():
        if not any(b.is_meta for b in sub.buffers(recurse=False)):
            continue
        if hasattr(sub, "rope_type") and hasattr(sub, "config"):  # *RotaryEmbedding
            fresh = type(sub)(config=sub.config, device="cpu")
            for name in sub._non_persistent_buffers_set:
                sub._buffers[name] = fresh._buffers[name]
        elif hasattr(sub, "scalar_embed_scale"):
            sub._buffers["embed_scale"] = torch.tensor(sub.scalar_embed_scale, device="cpu")
        elif hasattr(sub, "num_positions") and "position_ids" in sub._buffers:
            sub._buffers["position_ids"] = torch.arange(sub.num_positions, device="cpu").expand((1, -1))


def load_module(
    build: Callable[[], torch.nn.Module],
    tensors: Mapping[str, torch.Tensor],
    where: str,
    match_dtypes: bool = False,
) -> torch.nn.Module:
    """Build ``build()`` without initialising it and load ``tensors`` into it, strictly.

    The module is built on the meta device, so no time goes into random initialisation;
    `rebuild_buffers` recreates the non-persistent buffers. With ``match_dtypes``, each
    tensor is cast to the dtype the freshly built module gives that parameter (for
    models that keep some parts in float32 on purpose).
    """
    with torch.device("meta"):
        module = build()
    expected = module.state_dict()
    check_state_dict({k: v.shape for k, v in expected.items()}, tensors, where)
    if match_dtypes:
        tensors = {k: v.to(expected[k].dtype) for k, v in tensors.items()}
    module.load_state_dict(dict(tensors), strict=True, assign=True)
    rebuild_buffers(module)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{where}: tensors {left[:5]} were never loaded (a plugin bug).")
    return module
