import numpy as np
import pytest
import torch
from PIL import Image

from nnsight_vla import InputError, Observation, VLAError


def test_accepts_pil_array_and_float_tensor_as_the_same_pixels():
    array = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    for image in (array, Image.fromarray(array), tensor):
        got = Observation(image, "pick up the bowl").image()
        np.testing.assert_array_equal(got, array)


def test_named_cameras_and_state():
    image = np.zeros((4, 4, 3), np.uint8)
    obs = Observation({"agentview": image, "wrist": image}, "go", state=[1, 2, 3])
    assert list(obs.images) == ["agentview", "wrist"]
    assert obs.state.dtype == np.float32 and obs.state.shape == (3,)
    with pytest.raises(InputError, match="camera 'front' missing"):
        obs.image("front")


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((8, 8), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((8, 8, 4), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((8, 8, 3), np.float32), "must be uint8"),
        (torch.zeros(8, 8, 3), r"\(3, H, W\)"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "float in \\[0, 1\\]"),
        (torch.full((3, 8, 8), 255.0), "divide by 255"),
        ("image.png", "unsupported image type"),
    ],
)
def test_bad_images_name_the_fix(image, message):
    with pytest.raises(InputError, match=message) as info:
        Observation(image, "pick up the bowl")
    assert isinstance(info.value, VLAError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("instruction", ["", "   ", None])
def test_empty_instruction(instruction):
    with pytest.raises(InputError, match="non-empty string"):
        Observation(np.zeros((4, 4, 3), np.uint8), instruction)


def test_state_must_be_a_vector():
    with pytest.raises(InputError, match="1-D"):
        Observation(np.zeros((4, 4, 3), np.uint8), "go", state=np.zeros((2, 2)))
