"""Shared fixtures: the built-in tiny OpenVLA, observations and a saved checkpoint. No Hub access."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import nnsight_vla  # noqa: E402
from nnsight_vla import Observation  # noqa: E402


def random_image(seed: int, size: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def tiny():
    return nnsight_vla.load("tiny-openvla")


@pytest.fixture(scope="session")
def obs():
    return Observation(random_image(0), "pick up the black bowl")


@pytest.fixture(scope="session")
def obs_long():
    return Observation(random_image(1), "put the bowl on the plate and then open the top drawer")


@pytest.fixture(scope="session")
def saved_tiny(tiny, tmp_path_factory):
    """tiny-openvla written in the official layout, in several shards with an index."""
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-openvla"
    tiny.save_pretrained(folder, max_shard_bytes=2**20)
    return folder
