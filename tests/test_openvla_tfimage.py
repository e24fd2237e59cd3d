"""OpenVLA's LIBERO image steps equal TensorFlow's, against outputs TF wrote (scripts/tf_reference.py)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from nnsight_vla_openvla.processor import libero_frame
from nnsight_vla_openvla.tfimage import _spans, center_crop, jpeg_round_trip, lanczos3_resize

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("tf_reference", ROOT / "scripts" / "tf_reference.py")
tf_reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tf_reference)
TF = np.load(ROOT / "tests" / "data" / "tf_reference.npz")


def test_jpeg_round_trip_is_tensorflows():
    np.testing.assert_array_equal(jpeg_round_trip(tf_reference.synthetic_frame(0, 128, 128)), TF["jpeg_128"])


def test_full_pipeline_is_tensorflows():
    frame = tf_reference.synthetic_frame(0, 128, 128)
    # TF's pipeline starts from the rotated frame; libero_frame rotates, so hand it the unrotated one.
    np.testing.assert_array_equal(libero_frame(frame[::-1, ::-1], 112), TF["pipeline_128"])


@pytest.mark.parametrize("key, size", [("resize_float_48x64", (40, 56)), ("upsize_float_48x64", (61, 77))])
def test_resize_is_tensorflows_to_the_last_bit(key, size):
    from nnsight_vla_openvla.tfimage import _resample

    small = tf_reference.synthetic_frame(1, 48, 64).astype(np.float32)
    floats = _resample(_resample(small, size[0], axis=0), size[1], axis=1)
    np.testing.assert_array_equal(floats, TF[key])
    np.testing.assert_array_equal(lanczos3_resize(small.astype(np.uint8), *size), np.clip(np.round(TF[key]), 0, 255))


def test_lanczos_weights_sum_to_one_and_reach_three_scaled_pixels():
    _, weights = _spans(112, 128)  # downscale: the kernel widens by 128/112
    assert weights.shape[1] == 2 * int(np.ceil(3 * 128 / 112)) + 1
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    # Same size: the kernel is 1 at the pixel and 0 at its neighbours, so nothing changes.
    np.testing.assert_array_equal(lanczos3_resize(np.arange(192, dtype=np.uint8).reshape(8, 8, 3), 8, 8),
                                  np.arange(192, dtype=np.uint8).reshape(8, 8, 3))


def test_center_crop_is_tensorflows():
    np.testing.assert_array_equal(center_crop(TF["pipeline_128"]), TF["crop_112"])
