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
from .neurons import NeuronCluster
from .observation import Observation
from .registry import Family, families, load, register
from .spec import ModelSpec
from .steering import Ablate, Add, Clamp, Scale

__all__ = [
    "Ablate",
    "Add",
    "CheckpointError",
    "Clamp",
    "Family",
    "InertSiteWarning",
    "InputError",
    "LayerIndexError",
    "ModelSpec",
    "Scale",
    "NeuronCluster",
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
