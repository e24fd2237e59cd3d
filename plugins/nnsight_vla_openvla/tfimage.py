"""TensorFlow's JPEG round trip, antialiased Lanczos3 resize and centre crop, reproduced without TensorFlow."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import math

import numpy as np
from PIL import Image


def jpeg_round_trip(image: np.ndarray, quality: int = 95) -> np.ndarray:
    """``tf.io.decode_image(tf.image.encode_jpeg(image))`` for an HWC uint8 RGB image.

    TF encodes with libjpeg at quality 95 and 4:2:0 chroma (PIL writes the same entropy-coded
    data) and decodes with the fast integer DCT and smooth chroma upsampling, which is
    libjpeg-turbo's ``JDCT_IFAST`` without ``fastupsample``.
    """
    import simplejpeg

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    return simplejpeg.decode_jpeg(buffer.getvalue(), colorspace="RGB", fastdct=True, fastupsample=False)


@functools.lru_cache(maxsize=1)
def _sinf():
    """The C library's single-precision sine, which TF's kernel calls.

    NumPy's float32 sine differs from it in the last bit for some arguments, and so would the
    weights.
    """
    path = ctypes.util.find_library("m")
    if path is None:
        return lambda x: np.sin(np.float32(x))
    sinf = ctypes.CDLL(path).sinf
    sinf.restype, sinf.argtypes = ctypes.c_float, [ctypes.c_float]
    return lambda x: np.float32(sinf(float(x)))


def _lanczos3(x: np.float32) -> np.float32:
    """TF's Lanczos kernel of radius 3, each operation rounded to float32 as in C++."""
    f, sin = np.float32, _sinf()
    pi, radius, x = f(3.14159265359), f(3), f(abs(x))
    if x > radius:
        return f(0)
    if x <= 1e-3:
        return f(1)
    return f(f(radius * sin(f(pi * x))) * sin(f(f(pi * x) / radius))) / f(f(f(pi * pi) * x) * x)


@functools.lru_cache(maxsize=16)
def _spans(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel, the first source index and the normalised float32 weights."""
    f = np.float32
    scale = f(out_size) / f(in_size)
    inv_scale = f(1.0 / float(scale))
    kernel_scale = max(inv_scale, f(1))
    radius, one_over_kernel_scale = f(3) * kernel_scale, f(f(1) / kernel_scale)
    width = min(2 * math.ceil(radius) + 1, in_size)
    starts = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, width), dtype=np.float32)
    for x in range(out_size):
        sample = f(f(f(x) + f(0.5)) * inv_scale)
        start = min(max(math.ceil(f(sample - radius - f(0.5))), 0), in_size - 1)
        end = min(max(math.floor(f(sample + radius - f(0.5))), 0), in_size - 1) + 1
        w = [_lanczos3(f(f(f(source) + f(0.5)) - sample) * one_over_kernel_scale) for source in range(start, end)]
        total = f(0)
        for value in w:
            total = f(total + value)
        weights[x, : end - start] = np.array(w, dtype=np.float32) * f(f(1) / total)
        starts[x] = start
    return starts, weights


def _resample(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """Resize along ``axis`` (0 rows, 1 columns), accumulating in float32 in source order."""
    moved = np.moveaxis(image, axis, 0)
    starts, weights = _spans(out_size, moved.shape[0])
    out = np.zeros((out_size,) + moved.shape[1:], dtype=np.float32)
    for k in range(weights.shape[1]):
        index = np.minimum(starts + k, moved.shape[0] - 1)
        w = weights[:, k].reshape((-1,) + (1,) * (moved.ndim - 1))
        out += w * moved[index]
    return np.moveaxis(out, 0, axis)


def lanczos3_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.image.resize(image, (height, width), "lanczos3", antialias=True)`` rounded to uint8.

    The rounding is ``tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)``, as OpenVLA's
    evaluation does.
    """
    x = image.astype(np.float32)
    x = _resample(x, height, axis=0)  # TF resizes the height first, then the width:
    x = _resample(x, width, axis=1)  # in the other order, float sums differ in the last bit
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def center_crop(image: np.ndarray, area: float = 0.9) -> np.ndarray:
    """OpenVLA's centre crop for LIBERO, for an HWC uint8 image.

    The central ``area`` (side ``sqrt(area)``) is resized back to the same size with
    ``tf.image.crop_and_resize`` (bilinear) on ``[0, 1]`` floats, then
    ``convert_image_dtype(..., uint8, saturate=True)``.
    """
    f = np.float32
    height, width = image.shape[:2]
    side = min(max(np.sqrt(f(area)), f(0)), f(1))
    y1 = x1 = f(f(1 - side) / f(2))
    y2 = x2 = f(y1 + side)
    pixels = image.astype(np.float32) * f(1.0 / 255)

    def grid(n: int, lo: np.float32, hi: np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        step = f(f(f(hi - lo) * f(n - 1)) / f(n - 1)) if n > 1 else f(0)
        where = f(lo * f(n - 1)) + np.arange(n, dtype=np.float32) * step
        low = np.floor(where).astype(np.int64)
        return low, np.ceil(where).astype(np.int64), (where - low.astype(np.float32)).astype(np.float32)

    top, bottom, y_lerp = grid(height, y1, y2)
    left, right, x_lerp = grid(width, x1, x2)
    x_lerp = x_lerp[None, :, None]
    upper = pixels[top][:, left] + (pixels[top][:, right] - pixels[top][:, left]) * x_lerp
    lower = pixels[bottom][:, left] + (pixels[bottom][:, right] - pixels[bottom][:, left]) * x_lerp
    out = np.clip(upper + (lower - upper) * y_lerp[:, None, None], 0, 1)
    return np.clip(out * f(255.5), 0, 255).astype(np.uint8)
