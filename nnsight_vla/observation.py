"""`Observation`: camera images, a task instruction and an optional proprio state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import InputError

DEFAULT_CAMERA = "image"


def to_hwc_uint8(image: Any, name: str = DEFAULT_CAMERA) -> np.ndarray:
    """Return ``image`` as an ``(H, W, 3)`` uint8 array.

    Accepts a PIL image, an ``(H, W, 3)`` uint8 array, or a ``(3, H, W)`` float tensor in [0, 1].

    Example:
        >>> to_hwc_uint8(np.zeros((8, 8, 3), np.uint8)).shape
        (8, 8, 3)
    """
    where = f"camera {name!r}"
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise InputError(
                f"{where}: an image array must be (H, W, 3) RGB, got shape {image.shape}; "
                "convert grayscale/RGBA to RGB, or pass a (3, H, W) float tensor."
            )
        if image.dtype != np.uint8:
            raise InputError(
                f"{where}: an (H, W, 3) array must be uint8 in [0, 255], got {image.dtype}; "
                "use `(x * 255).round().astype(np.uint8)` or pass a (3, H, W) float tensor in [0, 1]."
            )
        if min(image.shape[:2]) < 2:
            raise InputError(f"{where}: image of shape {image.shape} is empty.")
        return np.ascontiguousarray(image)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None
    if torch is not None and isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(
                f"{where}: an image tensor must be (3, H, W), got shape {tuple(image.shape)}; "
                "permute an (H, W, 3) tensor with `.permute(2, 0, 1)`."
            )
        if not image.is_floating_point():
            raise InputError(
                f"{where}: an image tensor must be float in [0, 1], got {image.dtype}; "
                "use `x.float() / 255` or pass an (H, W, 3) uint8 numpy array."
            )
        if not bool(torch.isfinite(image).all()):
            raise InputError(f"{where}: the image tensor holds NaN or infinite values; pass a valid frame.")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(
                f"{where}: a float image tensor must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; "
                "divide by 255 if it holds pixel values."
            )
        array = image.detach().float().cpu().permute(1, 2, 0).numpy()
        return (array * 255.0).round().astype(np.uint8)
    raise InputError(
        f"{where}: unsupported image type {type(image).__name__}; "
        "pass a PIL image, an (H, W, 3) uint8 array or a (3, H, W) float tensor."
    )


@dataclass
class Observation:
    """What a policy sees at one step.

    Args:
        images: One image, or a dict of named camera images (PIL image, ``(H, W, 3)``
            uint8 array, or ``(3, H, W)`` float tensor in [0, 1]).
        instruction: The task in words, e.g. ``"pick up the bowl"``.
        state: Optional proprioceptive state vector.

    Example:
        >>> obs = Observation(np.zeros((224, 224, 3), np.uint8), "pick up the bowl")
        >>> list(obs.images)
        ['image']
    """

    images: Any
    instruction: str
    state: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise InputError(
                f"instruction must be a non-empty string, got {self.instruction!r}; "
                "say what the robot should do, e.g. 'pick up the black bowl'."
            )
        raw = self.images if isinstance(self.images, Mapping) else {DEFAULT_CAMERA: self.images}
        if not raw:
            raise InputError("images is an empty dict; pass at least one camera image.")
        self.images = {str(k): to_hwc_uint8(v, str(k)) for k, v in raw.items()}
        if self.state is not None:
            state = np.asarray(self.state, dtype=np.float32)
            if state.ndim != 1:
                raise InputError(f"state must be a 1-D vector, got shape {state.shape}.")
            if not np.isfinite(state).all():
                raise InputError(f"state holds NaN or infinite values ({state}); pass the robot's measured state.")
            self.state = state

    def image(self, name: str | None = None) -> np.ndarray:
        """One camera's image as ``(H, W, 3)`` uint8; the first camera when ``name`` is None."""
        if name is None:
            return next(iter(self.images.values()))
        if name not in self.images:
            raise InputError(
                f"camera {name!r} missing from the observation; it has {sorted(self.images)}."
            )
        return self.images[name]
