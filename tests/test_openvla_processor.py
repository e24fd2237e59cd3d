"""OpenVLA's processor: the prompt, BOS-side padding and per-backbone normalisation, by hand."""

import numpy as np
import pytest
import torch

from nnsight_vla import Observation
from nnsight_vla_openvla.processor import OpenVLAProcessor, libero_frame, prompt
from nnsight_vla_openvla.tfimage import center_crop


def test_prompt_template_and_trailing_space(tiny):
    assert prompt("Pick Up the Bowl") == "In: What action should the robot take to pick up the bowl?\nOut:"
    ids = tiny.processor.token_ids("pick up the bowl")
    tokens = tiny.tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:3] == ["<s>", "▁In", ":"]
    assert tokens[-5:] == ["?", "<0x0A>", "Out", ":", "▁"]  # like Llama-2's [..., 13, 3744, 29901, 29871]


def test_padding_goes_after_bos(tiny):
    ids, mask = tiny.processor.text(["go", "pick up the black bowl"])
    short, long = (tiny.processor.token_ids(t) for t in ("go", "pick up the black bowl"))
    gap = len(long) - len(short)
    pad = tiny.tokenizer.pad_token_id
    assert ids[0].tolist() == [short[0]] + [pad] * gap + short[1:]
    assert mask[0].tolist() == [1] + [0] * gap + [1] * (len(short) - 1)
    assert ids[1].tolist() == long and mask[1].all()


def test_normalisation_by_hand(tiny):
    normalize = [{"mean": [0.5, 0.25, 0.0], "std": [0.5, 0.25, 1.0]}, {"mean": [0.0] * 3, "std": [1.0] * 3}]
    processor = OpenVLAProcessor(tiny.tokenizer, image_size=16, normalize=normalize)
    image = np.full((40, 30, 3), 51, np.uint8)  # 51/255 = 0.2
    pixels = processor(
        [Observation(image, "go")]
    )["pixel_values"][0]
    assert pixels.shape == (6, 16, 16)
    want = [(0.2 - 0.5) / 0.5, (0.2 - 0.25) / 0.25, 0.2, 0.2, 0.2, 0.2]
    for channel, value in enumerate(want):
        torch.testing.assert_close(pixels[channel], torch.full((16, 16), value), atol=1e-6, rtol=0)


def test_center_crop_keeps_the_central_90_percent_area():
    ramp = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (200, 1, 3))
    cropped = center_crop(ramp)
    margin = 200 * (1 - np.sqrt(0.9)) / 2  # 5.13 columns cut on each side
    assert cropped.shape == ramp.shape
    assert cropped[100, 0, 0] == pytest.approx(margin, abs=1.0)
    assert cropped[100, -1, 0] == pytest.approx(199 - margin, abs=1.0)


def test_libero_frame_rotates_then_round_trips_and_resizes():
    frame = np.zeros((32, 32, 3), dtype=np.uint8)
    frame[0, 0] = [255, 0, 0]  # top-left: it must end bottom-right
    exact = libero_frame(frame, 32, jpeg=False)
    assert exact[-1, -1].tolist() == [255, 0, 0] and exact.sum() == 255
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8)[:, None, None], (1, 64, 3))
    jpeg = libero_frame(ramp, 64).astype(int)  # a smooth ramp survives JPEG to within a few levels
    assert 0 < np.abs(jpeg - ramp[::-1, ::-1]).mean() < 1.0 and np.abs(jpeg - ramp[::-1, ::-1]).max() <= 6
    assert libero_frame(ramp, 16).shape == (16, 16, 3)


def test_env_actions_follow_openvla_recipe(tiny):
    image = np.random.default_rng(3).integers(0, 256, (2 * 28, 2 * 28, 3), dtype=np.uint8)
    raw = {"pixels": {"image": image[None]}}
    from nnsight_vla.eval.libero import env_actions

    action = env_actions(tiny, raw, "pick up the black bowl")
    expected = np.asarray(tiny.predict_action(Observation(libero_frame(image, tiny.processor.image_size), "pick up the black bowl")))
    assert action.shape == (1, 7)
    np.testing.assert_array_equal(action[0, :6], expected[:6])
    assert action[0, 6] == -np.sign(2 * expected[6] - 1) and abs(action[0, 6]) == 1
