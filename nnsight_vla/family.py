"""What a model family's author needs, in one module.

The base class and its contract as data (`VLA`, `Layout`, `TowerLayout`, `BridgePart`,
`ModelSpec`), registration (`Family`), checkpoint and cache helpers, observations' defaults,
offline tokenizers for tiny built-ins, and the errors. Plugins import from here; users import
from ``nnsight_vla``.

Example:
    >>> from nnsight_vla.family import VLA, Family, Layout, TowerLayout
    >>> FAMILY = Family("toy", "toy_plugin.model:Toy", builtins=("tiny-toy",))
"""

from __future__ import annotations

from typing import Any

from . import cache
from .checkpoint import check_state_dict, load_module, read_state_dict, write_state_dict
from .errors import CheckpointError, InputError, SetupError, StandardNameError, VLAError
from .layout import DECODER_BLOCK, BridgePart, Layout, TokenPrompt, TowerLayout
from .model import VLA
from .observation import DEFAULT_CAMERA, Observation
from .registry import Family, register
from .remote import config_folder, weights_folder
from .spec import ModelSpec
from .words import build_word_tokenizer

__all__ = [
    "DECODER_BLOCK", "BridgePart", "CheckpointError", "DEFAULT_CAMERA", "Family", "InputError", "Layout",
    "ModelSpec", "Observation", "SetupError", "StandardNameError", "TokenPrompt", "TowerLayout", "VLA",
    "VLAError", "build_word_tokenizer", "cache", "check_state_dict", "config_folder", "load_module",
    "read_state_dict", "register", "weights_folder", "write_state_dict",  # and relocate, on first use
]


def __getattr__(name: str) -> Any:
    if name == "relocate":  # for TransformerLens adapters only: importing it loads TransformerLens's side
        from .transformer_lens.adapters import relocate

        return relocate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
