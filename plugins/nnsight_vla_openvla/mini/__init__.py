"""``mini-openvla``: smol-openvla taught to follow motion instructions.

Here are its configuration and the shipped adapters (``data/``), merged strictly on load. How it
is built and studied lives in the ``nnsight_vla_mini`` package (``experiments/``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from nnsight_vla.family import CheckpointError

from .. import MINI
from . import instructions
from .phrases import Phrases

#: The first decoder layer the adapters train (24..29 of SmolLM2's 30).
FIRST_TRAINED = 24
#: Built-in name -> training recipe (see `nnsight_vla_mini.train.Settings`).
BUILTINS = dict(zip(MINI, ("verbalise", "act")))
DATA = Path(__file__).parent / "data"
#: The statistics of the synthetic motion data: normalised = un-normalised for the six deltas.
STATS = {"mini_motion": {"action": {"q01": [-1.0] * 6 + [0.0], "q99": [1.0] * 6 + [1.0],
                                    "mask": [True] * 6 + [False]},
                         "num_transitions": 0, "num_trajectories": 0}}


def adapter_file(name: str) -> Path:
    """Where the built-in ``name``'s shipped adapters are, in ``data/``."""
    return DATA / f"{name}.safetensors"


def configure(config, name: str):
    """smol-openvla's config for the built-in ``name``.

    It gets the motion statistics, two words said before the actions for a verbalising recipe,
    and an ``llm_backbone_id`` naming the built-in.
    """
    config.norm_stats = STATS
    verbalises = BUILTINS[name] == "verbalise"
    config.phrases = Phrases(2, tuple(" ".join(p) for p in instructions.phrases())) if verbalises else None
    config.raw = {**config.raw, "llm_backbone_id": f"smollm2-135m-instruct+{name}"}
    return config


def with_adapters(tensors: dict[str, torch.Tensor], path: str | Path, n_layers: int) -> dict[str, torch.Tensor]:
    """smol-openvla's weights with the adapters in ``path`` merged in (strictly)."""
    from safetensors import safe_open

    from . import lora

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"the adapters {path} are missing; rebuild them with "
                              f"`python -m nnsight_vla_mini.build --ship` (see its --help).")
    with safe_open(str(path), "pt") as f:
        adapters = {k: f.get_tensor(k) for k in f.keys()}
    return lora.merged(tensors, adapters, lora.target_paths(range(FIRST_TRAINED, n_layers)), str(path))
