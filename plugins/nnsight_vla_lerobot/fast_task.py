"""What ``tiny-pi0_fast`` is taught: action chunks that follow the image, the instruction and the state.

Three things of an observation set its chunk, each at one of three levels:

- the first camera's brightness: pixels drawn from [0, 128) (dark), [0, 256) (mid, plain noise)
  or [128, 256) (bright); the second camera is plain noise and does not matter;
- the instruction: one of `INSTRUCTIONS`;
- the first state entry, as the prompt shows it: lerobot writes the normalised state as bins
  0..255 (-1 below the range); bins below 100, 100..199, or 200 and up.

The chunk (normalised, before lerobot's un-normalisation) holds still for all ``CHUNK`` steps:
x = (image level - 1) / 2, y = (instruction - 1) / 2, z = (state level - 1) / 2, the gripper at
0.5 and the rest 0. No chunk is all zeros, lerobot's fallback for tokens it cannot decode.
`fast_fit` fits the tiny policy to emit these chunks' FAST tokens.

Example:
    >>> obs, chunk = samples(1, seed=0)[0]
    >>> levels(obs), chunk[0]
    ((0, 0, 0), array([-0.5, -0.5, -0.5,  0. ,  0. ,  0. ,  0.5]))
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from nnsight_vla.family import InputError, Observation

from .tiny import ACTION_DIM, CAMERAS, STATE_DIM, TINY_STATS

CHUNK, SIZE = 10, 64  # the tiny policy's chunk length and image size
INSTRUCTIONS = ("pick up the black bowl", "open the top drawer slowly", "push the red box forward")
IMAGE_RANGES = ((0, 128), (0, 256), (128, 256))  # pixel ranges of the first camera, per level
#: Normalised first state entries per level, clear of the bins 100 and 200 between levels.
STATE_RANGES = ((-0.75, -0.3), (-0.15, 0.45), (0.65, 1.4))
GRIPPER = 0.5


def state_bins(state: np.ndarray) -> np.ndarray:
    """The bins lerobot's Pi0-FAST prompt shows for a raw ``state``.

    The state is normalised with the tiny statistics, then put in 256 bins over [-1, 1] (-1 below
    it, 255 above).
    """
    stats = TINY_STATS["observation.state"]
    normalised = (np.asarray(state, np.float64) - stats["mean"].numpy()) / stats["std"].numpy()
    return np.digitize(normalised, bins=np.linspace(-1, 1, 257)[:-1]) - 1


def levels(obs: Observation) -> tuple[int, int, int]:
    """The (image, instruction, state) levels of ``obs``.

    An instruction the task does not have is an `InputError`.
    """
    mean = float(np.asarray(obs.images[CAMERAS[0]]).mean())
    image = 0 if mean < 96 else 1 if mean <= 160 else 2
    if obs.instruction not in INSTRUCTIONS:
        raise InputError(f"tiny-pi0_fast was taught the instructions {list(INSTRUCTIONS)}, not {obs.instruction!r}.")
    first = int(state_bins(obs.state)[0])
    return image, INSTRUCTIONS.index(obs.instruction), 0 if first < 100 else 1 if first < 200 else 2


def chunk(image: int, instruction: int, state: int) -> np.ndarray:
    """The normalised ``(CHUNK, ACTION_DIM)`` chunk of the three levels."""
    out = np.zeros((CHUNK, ACTION_DIM))
    out[:, :3] = (np.array([image, instruction, state]) - 1) / 2
    out[:, -1] = GRIPPER
    return out


def actions(obs: Observation) -> np.ndarray:
    """The chunk ``obs`` should get, un-normalised as lerobot's postprocessor does (mean + std * x)."""
    stats = TINY_STATS["action"]
    return stats["mean"].numpy() + stats["std"].numpy() * chunk(*levels(obs))


def observation(rng: np.random.Generator, image: int, instruction: int, state: int) -> Observation:
    """A random observation at the three levels.

    Its images are noise and its other state entries uniform in [-1, 1] (raw), like
    `nnsight_vla.testing.contract.example_observation`'s.
    """
    low, high = IMAGE_RANGES[image]
    images = {CAMERAS[0]: rng.integers(low, high, (SIZE, SIZE, 3), dtype=np.uint8),
              CAMERAS[1]: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)}
    raw = rng.uniform(-1, 1, STATE_DIM)
    stats = TINY_STATS["observation.state"]
    raw[0] = float(stats["mean"][0] + stats["std"][0] * rng.uniform(*STATE_RANGES[state]))
    return Observation(images, INSTRUCTIONS[instruction], raw.astype(np.float32))


def combinations() -> list[tuple[int, int, int]]:
    """Every (image, instruction, state) level triple, 27 of them."""
    return list(itertools.product(range(len(IMAGE_RANGES)), range(len(INSTRUCTIONS)), range(len(STATE_RANGES))))


def samples(per_combination: int, seed: int | Sequence[int],
            triples: Sequence[tuple[int, int, int]] | None = None) -> list[tuple[Observation, np.ndarray]]:
    """``per_combination`` random observations of every level triple, with their normalised chunks.

    The triples are all of them (`combinations`), or ``triples`` when given.
    """
    rng = np.random.default_rng(seed)
    triples = combinations() if triples is None else triples
    return [(observation(rng, *combo), chunk(*combo)) for _ in range(per_combination) for combo in triples]
