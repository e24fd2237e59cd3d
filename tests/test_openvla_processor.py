"""OpenVLA's processor: the prompt, BOS-side padding and per-backbone normalisation, by hand."""

import numpy as np
import pytest
import torch

from nnsight_vla import Observation
from nnsight_vla_openvla.processor import OpenVLAProcessor, center_crop, prompt


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
    from PIL import Image

    ramp = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (200, 1, 3))
    cropped = np.asarray(center_crop(Image.fromarray(ramp)))
    margin = 200 * (1 - np.sqrt(0.9)) / 2  # 5.13 columns cut on each side
    assert cropped.shape == ramp.shape
    assert cropped[100, 0, 0] == pytest.approx(margin, abs=1.0)
    assert cropped[100, -1, 0] == pytest.approx(199 - margin, abs=1.0)
