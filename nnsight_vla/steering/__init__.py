"""Steering: clamp, scale or ablate FFN neurons, add directions — in traces, around calls, on TransformerLens hooks."""

from .controls import random_control
from .directions import load_direction, mean_activations, mean_difference, residual, save_direction, unit
from ..edits import Edit, apply, bind, hook_points, steer
from .interventions import Ablate, Add, Clamp, Intervention, Scale
from .open_loop import OpenLoopResult, open_loop

__all__ = [
    "Ablate", "Add", "Clamp", "Edit", "Intervention", "Scale", "apply", "bind", "hook_points",
    "load_direction", "mean_activations", "mean_difference", "open_loop", "OpenLoopResult", "random_control", "residual",
    "save_direction", "steer", "unit",
]
