"""Motion instructions from templates, their 7-D targets and their two-word phrases (direction, speed), split by template."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

#: Direction word -> (axis, sign) in the robot's base frame (x forward, y left, z up), as
#: LIBERO's end-effector deltas are; each with the synonyms instructions may use.
DIRECTIONS = {
    "up": (2, 1, ("up", "upward", "higher")),
    "down": (2, -1, ("down", "downward", "lower")),
    "left": (1, 1, ("left", "to the left")),
    "right": (1, -1, ("right", "to the right")),
    "forward": (0, 1, ("forward", "ahead")),
    "backward": (0, -1, ("backward", "back")),
}
#: Speed word -> (normalised magnitude, adverbs that ask for it; "" is no adverb).
SPEEDS = {
    "slow": (0.25, ("slowly", "gently", "carefully")),
    "steady": (0.5, ("", "steadily")),
    "fast": (0.85, ("quickly", "fast", "rapidly")),
}
#: Instructions that name no motion: every delta 0, phrase "stay still".
STILL = ("stay where you are", "hold still", "do not move", "wait here", "keep the arm still", "stop moving")
STILL_PHRASE = ("stay", "still")
#: Training templates and held-out ones (never trained on): {d} a direction, {s} an adverb.
TRAIN_TEMPLATES = ("move {d} {s}", "go {d} {s}", "move the arm {d} {s}", "{s} move {d}",
                   "move the gripper {d} {s}", "please go {d} {s}", "{s} bring the arm {d}")
HELD_OUT_TEMPLATES = ("shift the robot arm {d} {s}", "{s} head {d}", "now travel {d} {s}")
HELD_OUT_STILL = ("remain still", "stay put")
#: The gripper stays open: normalised 1.0 (OpenVLA's LIBERO recipe maps it to -1, open).
GRIPPER_OPEN = 1.0


@dataclass(frozen=True)
class Example:
    """One instruction, the normalised 7-D action it asks for, and its phrase (two words)."""

    instruction: str
    action: tuple[float, ...]
    phrase: tuple[str, str]


def target(direction: str | None, speed: str) -> np.ndarray:
    """The normalised action: the direction's axis at the speed's magnitude, gripper open."""
    action = np.zeros(7)
    if direction is not None:
        axis, sign, _ = DIRECTIONS[direction]
        action[axis] = sign * SPEEDS[speed][0]
    action[6] = GRIPPER_OPEN
    return action


def examples(held_out: bool = False) -> list[Example]:
    """Every instruction of the training (or held-out) templates, with its target and phrase."""
    templates = HELD_OUT_TEMPLATES if held_out else TRAIN_TEMPLATES
    out = []
    for template, (direction, (_, _, words)), (speed, (_, adverbs)) in itertools.product(
            templates, DIRECTIONS.items(), SPEEDS.items()):
        for word, adverb in itertools.product(words, adverbs):
            text = " ".join(template.format(d=word, s=adverb).split())
            out.append(Example(text, tuple(map(float, target(direction, speed))), (direction, speed)))
    for text in HELD_OUT_STILL if held_out else STILL:
        out.append(Example(text, tuple(map(float, target(None, "steady"))), STILL_PHRASE))
    return out


def phrase_action(phrase: tuple[str, str]) -> np.ndarray:
    """The action a phrase stands for (what the verbalising model's actions must follow)."""
    if tuple(phrase) == STILL_PHRASE:
        return target(None, "steady")
    return target(phrase[0], phrase[1])


def phrases() -> list[tuple[str, str]]:
    """Every phrase: each direction at each speed, and "stay still"."""
    return [*itertools.product(DIRECTIONS, SPEEDS), STILL_PHRASE]
