"""Steering directions from contrasting observations, and reference activations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..collect import collect
from ..errors import InputError
from ..paths import writable_file, writing
from ..sites import Site


def _check(observations: Any, what: str) -> list:
    from ..observation import Observation

    observations = [observations] if isinstance(observations, (Observation, dict)) else list(observations)
    if not observations:
        raise InputError(f"{what} is empty; give at least one observation.")
    return observations


def residual(model: Any, observations: Sequence[Any], layer: int, position: int = -1, tower: str = "vlm") -> torch.Tensor:
    """The residual stream after ``layers[layer]`` at ``position``, one row per observation.

    It is read at the first forward call: OpenVLA's prefill, Pi0's VLM or first denoising step.
    """
    site = Site(layer, "resid", tower)
    acts = collect(model, _check(observations, "observations"), site, calls=[0], positions=[position])
    return acts[site.on(model)][:, 0, 0]


def mean_difference(
    model: Any, positive: Sequence[Any], negative: Sequence[Any], layer: int, position: int = -1, tower: str = "vlm"
) -> torch.Tensor:
    """Mean residual stream over ``positive`` minus over ``negative`` (contrastive / ActAdd).

    Example:
        >>> d = mean_difference(model, [obs_fast], [obs_slow], layer=20)
        >>> with model.steer(Add(unit(d), layer=20, alpha=8.0)): ...
    """
    pos = residual(model, _check(positive, "positive"), layer, position, tower)
    neg = residual(model, _check(negative, "negative"), layer, position, tower)
    return pos.mean(0) - neg.mean(0)


def mean_activations(
    model: Any, observations: Sequence[Any], layers: Sequence[int], tower: str = "vlm"
) -> dict[int, torch.Tensor]:
    """Mean FFN activations (``down_proj`` input) per layer.

    The mean is over observations and the positions of the first forward call.
    """
    sites = {layer: Site(layer, "neurons", tower) for layer in sorted(layers)}
    acts = collect(model, _check(observations, "reference"), list(sites.values()), calls=[0], positions="mean")
    return {layer: acts[site.on(model)].mean(dim=(0, 1, 2)) for layer, site in sites.items()}


def unit(vector: torch.Tensor) -> torch.Tensor:
    """``vector`` scaled to norm 1."""
    norm = vector.norm()
    if norm == 0:
        raise InputError("cannot normalise a zero vector.")
    return vector / norm


def save_direction(path: str | Path, vector: torch.Tensor, **meta: Any) -> Path:
    """Write a direction (and JSON-able metadata, e.g. layer and tower) as safetensors."""
    from safetensors.torch import save_file

    path = writable_file(path, "direction file")
    if not isinstance(vector, torch.Tensor) or vector.dim() != 1:
        raise InputError(f"a direction is a 1-D tensor, got {getattr(vector, 'shape', type(vector).__name__)}.")
    try:
        text = json.dumps(meta)
    except TypeError as err:
        raise InputError(f"the direction's metadata must be JSON values (numbers, strings, lists): {err}.") from err
    with writing(path, "direction file"):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"direction": vector.detach().float().contiguous().cpu()}, path, metadata={"meta": text})
    return path


def load_direction(path: str | Path) -> tuple[torch.Tensor, dict]:
    """The ``(vector, metadata)`` written by `save_direction`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("direction"), json.loads((f.metadata() or {}).get("meta", "{}"))
    except (OSError, KeyError, Exception) as err:
        raise InputError(f"{path} is not a direction written by save_direction ({err}).") from err
