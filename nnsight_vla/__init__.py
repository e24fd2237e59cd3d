"""nnsight-vla: vision-language-action policies as traceable nnsight models."""

from .errors import (
    CheckpointError,
    InputError,
    LayerIndexError,
    StandardNameError,
    UnknownModelError,
    VLAError,
)
from .envoys import InertSiteWarning
from .model import VLA, Tower
from .observation import Observation
from .registry import Family, families, load, register
from .spec import ModelSpec

__all__ = [
    "CheckpointError",
    "Family",
    "InertSiteWarning",
    "InputError",
    "LayerIndexError",
    "ModelSpec",
    "Observation",
    "StandardNameError",
    "Tower",
    "UnknownModelError",
    "VLA",
    "VLAError",
    "families",
    "load",
    "register",
]
__version__ = "0.1.0"
