"""Steering: clamp, scale or ablate FFN neurons, add directions — in traces or around calls."""

from .directions import load_direction, mean_activations, mean_difference, residual, save_direction, unit
from .interventions import Ablate, Add, Clamp, Edit, Intervention, Scale
from .runtime import apply, bind, hook_points, steer

__all__ = [
    "Ablate", "Add", "Clamp", "Edit", "Intervention", "Scale", "apply", "bind", "hook_points",
    "load_direction", "mean_activations", "mean_difference", "residual", "save_direction", "steer", "unit",
]
