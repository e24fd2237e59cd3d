"""Shared fixtures: the built-in tiny OpenVLA, observations and a saved checkpoint. No Hub access."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker gets its share of the cores (and so do the notebook kernels, Ray
# workers and servers it starts): PyTorch's default, one thread per core in every worker,
# oversubscribes the cores and its threads spin waiting for each other.
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(workers))))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import nnsight_vla  # noqa: E402
from nnsight_vla import Observation  # noqa: E402

if workers:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported earlier


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
