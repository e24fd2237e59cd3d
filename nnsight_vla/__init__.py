"""nnsight-vla: vision-language-action policies as traceable nnsight models.

Users' names are here (at most about twenty); a model family's author imports from
`nnsight_vla.family`. Public names are imported on first use (PEP 562), so ``import nnsight_vla`` and the
``nnsight-vla`` command's ``--help`` stay fast: torch, transformers and nnsight load only
when a model, a lens or steering is first touched.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from .lazy import LazyPackage

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "collect": "collect",
    "InertSiteWarning": "envoys",
    "CheckpointError": "errors",
    "InputError": "errors",
    "LayerIndexError": "errors",
    "SetupError": "errors",
    "StackError": "errors",
    "StandardNameError": "errors",
    "UnknownModelError": "errors",
    "VLAError": "errors",
    "VLA": "model",
    "NeuronCluster": "neurons",
    "Observation": "observation",
    "families": "registry",
    "load": "registry",
    "Site": "sites",
    "Ablate": "steering",
    "Add": "steering",
    "Clamp": "steering",
    "Scale": "steering",
}

__all__ = sorted(_EXPORTS, key=lambda name: (name[0].islower(), name))
__version__ = "0.1.0"

if TYPE_CHECKING:  # static checkers and IDEs see the eager imports
    from .collect import collect
    from .envoys import InertSiteWarning
    from .errors import (
        CheckpointError,
        InputError,
        LayerIndexError,
        SetupError,
        StackError,
        StandardNameError,
        UnknownModelError,
        VLAError,
    )
    from .model import VLA
    from .neurons import NeuronCluster
    from .observation import Observation
    from .registry import families, load
    from .sites import Site
    from .steering import Ablate, Add, Clamp, Scale


sys.modules[__name__].__class__ = LazyPackage  # keeps `collect` when its submodule is imported


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # submodules: nnsight_vla.lens, nnsight_vla.eval, ...
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
