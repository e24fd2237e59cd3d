"""OpenVLA's input processing: the prompt template, tokenisation and per-backbone image transforms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nnsight_vla.family import DEFAULT_CAMERA, CheckpointError, Observation

from .config import DEFAULT_NORMALIZE
from .tfimage import center_crop, jpeg_round_trip, lanczos3_resize

PREPROCESSOR_FILE = "preprocessor_config.json"


def prompt(instruction: str) -> str:
    """OpenVLA's prompt for a task instruction."""
    return f"In: What action should the robot take to {instruction.lower()}?\nOut:"


def libero_frame(frame: np.ndarray, size: int, jpeg: bool = True) -> np.ndarray:
    """OpenVLA's LIBERO image steps before the processor, bit-exact with its TensorFlow code.

    The steps: rotate 180 degrees, JPEG round trip (the RLDS training images were JPEG;
    ``jpeg=False`` skips it), antialiased Lanczos3 resize to ``size``, rounded to uint8.
    """
    image = np.ascontiguousarray(frame[::-1, ::-1])
    if jpeg:
        image = jpeg_round_trip(image)
    return lanczos3_resize(image, size, size)


class OpenVLAProcessor:
    """Turns observations into ``input_ids``, ``attention_mask`` and ``pixel_values``.

    Several observations are padded after BOS (``[BOS, PAD.., text]``) so that the image
    patches, inserted after BOS, and the last token line up in every row; padded positions
    are masked and position ids skip them, so each row equals running it alone.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_size: int = 224,
        normalize: list[dict] | None = None,
        center_crop: bool = False,
    ):
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.normalize = normalize or DEFAULT_NORMALIZE
        self.center_crop = center_crop
        # The "empty" piece that training put before the action tokens (29871 for Llama-2).
        space = tokenizer.convert_tokens_to_ids("▁")
        self.space_id = space if space != tokenizer.unk_token_id else None

    def token_ids(self, instruction: str) -> list[int]:
        """The prompt's token ids for ``instruction``.

        They end with the "empty" ``▁`` piece training put before the action tokens, when the
        tokenizer has that piece.
        """
        ids = self.tokenizer(prompt(instruction)).input_ids
        if self.space_id is not None and ids[-1] != self.space_id:
            ids.append(self.space_id)
        return ids

    def text(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` of the instructions' prompts, padded after BOS."""
        rows = [self.token_ids(text) for text in instructions]
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            gap = width - len(row)
            ids[i, 0], mask[i, 0] = row[0], 1
            ids[i, 1 + gap :], mask[i, 1 + gap :] = torch.tensor(row[1:]), 1
        return ids, mask

    def image(self, array: np.ndarray) -> torch.Tensor:
        """One image's pixel values: one normalised copy per backbone, stacked along channels.

        The image is centre-cropped first when the processor says so, then resized (bicubic) to
        ``image_size`` and scaled to [0, 1].
        """
        image = Image.fromarray(center_crop(array) if self.center_crop else array)
        size = (self.image_size, self.image_size)
        resized = np.asarray(image.resize(size, Image.BICUBIC), dtype=np.float32) / 255.0
        pixels = torch.from_numpy(resized).permute(2, 0, 1)
        out = []
        for params in self.normalize:
            mean = torch.tensor(params["mean"]).view(3, 1, 1)
            std = torch.tensor(params["std"]).view(3, 1, 1)
            out.append((pixels - mean) / std)
        return torch.cat(out, dim=0)

    def __call__(self, observations: list[Observation]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``pixel_values`` for ``observations``."""
        ids, mask = self.text([obs.instruction for obs in observations])
        pixels = torch.stack([self.image(obs.image(DEFAULT_CAMERA)) for obs in observations])
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}

    # -- files --------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder: Path, tokenizer: Any, center_crop: bool = False) -> "OpenVLAProcessor":
        """The processor ``folder``'s ``preprocessor_config.json`` describes, with ``tokenizer``.

        The file gives the image size and normalisation; a folder without it is a `CheckpointError`.
        """
        path = folder / PREPROCESSOR_FILE
        if not path.is_file():
            raise CheckpointError(
                f"{folder} has no {PREPROCESSOR_FILE}; it holds the image normalisation. "
                "Copy the complete checkpoint."
            )
        raw = json.loads(path.read_text())
        normalize = raw.get("tvf_normalize_params") or [
            {"mean": m, "std": s} for m, s in zip(raw.get("means", []), raw.get("stds", []))
        ]
        sizes = raw.get("input_sizes") or [[3, 224, 224]]
        return cls(tokenizer, int(sizes[0][-1]), normalize or None, center_crop)

    def save(self, folder: Path) -> None:
        """Write ``preprocessor_config.json`` into ``folder`` as official checkpoints hold it."""
        n = len(self.normalize)
        size = [self.image_size, self.image_size]
        raw = {
            "image_processor_type": "PrismaticImageProcessor",
            "processor_class": "PrismaticProcessor",
            "image_resize_strategy": "resize-naive",
            "use_fused_vision_backbone": n == 2,
            "input_sizes": [[3, *size]] * n,
            "interpolations": ["bicubic"] * n,
            "means": [p["mean"] for p in self.normalize],
            "stds": [p["std"] for p in self.normalize],
            "tvf_resize_params": [
                {"antialias": True, "interpolation": 3, "max_size": None, "size": size}
            ] * n,
            "tvf_crop_params": [{"output_size": size}] * n,
            "tvf_normalize_params": [
                {"inplace": False, "mean": p["mean"], "std": p["std"]} for p in self.normalize
            ],
            "tvf_do_letterbox": False,
            "tvf_letterbox_fill": None,
        }
        (folder / PREPROCESSOR_FILE).write_text(json.dumps(raw, indent=2))
