"""nnsight-vla: vision-language-action policies as traceable nnsight models."""

from .collect import collect
from .envoys import InertSiteWarning
from .errors import (
    CheckpointError,
    InputError,
    LayerIndexError,
    SetupError,
    StandardNameError,
    UnknownModelError,
    VLAError,
)
from .layout import Layout, TowerLayout
from .model import VLA
from .neurons import NeuronCluster
from .observation import Observation
from .registry import Family, families, load, register
from .sites import Site
from .spec import ModelSpec
from .steering import Ablate, Add, Clamp, Scale
from .towers import Tower

__all__ = [
    "Ablate",
    "Add",
    "CheckpointError",
    "Clamp",
    "Family",
    "InertSiteWarning",
    "InputError",
    "LayerIndexError",
    "Layout",
    "ModelSpec",
    "NeuronCluster",
    "Observation",
    "Scale",
    "SetupError",
    "Site",
    "StandardNameError",
    "Tower",
    "TowerLayout",
    "UnknownModelError",
    "VLA",
    "VLAError",
    "collect",
    "families",
    "load",
    "register",
]
__version__ = "0.1.0"
