"""Shared fixtures: the built-in tiny OpenVLA, observations and a saved checkpoint. No Hub access."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker gets its share of the cores, and so do the notebook kernels, Ray
# workers, servers and renderers it starts. With the default, one thread per core in every
# worker, the thread pools oversubscribe the cores and spin waiting for each other: on 2 cores
# a tiny model's forward then takes up to 80 times as long as with one thread. The stacks
# (`make test` runs the `stacks` marker last, on one worker) give each of their processes one thread.
workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
if workers:
    share = str(max(1, (os.cpu_count() or 1) // int(workers)))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LP_NUM_THREADS",
                     "NNSIGHT_VLA_CPU_THREADS"):  # the last: the NDIF actor's torch threads
        os.environ.setdefault(variable, share)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import nnsight_vla  # noqa: E402
from nnsight_vla import Observation  # noqa: E402

if workers:  # for libraries a pytest plugin loaded before this file (numpy's BLAS is one)
    import threadpoolctl

    threadpoolctl.threadpool_limits(int(os.environ["OMP_NUM_THREADS"]))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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
