"""What a mini-openvla does with instructions: direction and speed accuracy, and whether its actions follow its words."""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nnsight_vla import Observation

from nnsight_vla_openvla.mini import instructions

#: Below this magnitude on every axis an action counts as "stay still".
STILL_BELOW = 0.1
AXIS_NAMES = {(axis, sign): name for name, (axis, sign, _) in instructions.DIRECTIONS.items()}


def direction(action: np.ndarray) -> str:
    """The direction word of an action: its largest translation axis and sign, or "stay"."""
    moves = np.asarray(action)[:3]
    axis = int(np.argmax(np.abs(moves)))
    if abs(moves[axis]) < STILL_BELOW:
        return instructions.STILL_PHRASE[0]
    return AXIS_NAMES[(axis, int(np.sign(moves[axis])))]


def speed(action: np.ndarray) -> str | None:
    """The speed word whose magnitude is nearest the largest translation (None when still)."""
    top = float(np.max(np.abs(np.asarray(action)[:3])))
    if top < STILL_BELOW:
        return None
    return min(instructions.SPEEDS, key=lambda s: abs(instructions.SPEEDS[s][0] - top))


def predict(model: Any, frames: np.ndarray, texts: list[str], phrases: list[str] | None = None,
            batch: int = 16, progress: bool = True) -> tuple[np.ndarray, list[str] | None]:
    """Actions ``[n, 7]`` (and the words said, on a verbalising model) for each (frame, text)
    pair, frames cycled; ``phrases`` makes the model say those words instead of its own."""
    verbal = model.config.phrases is not None
    actions, said = [], []
    chunks = range(0, len(texts), batch)
    for start in tqdm(chunks, desc="predict", unit="batch", disable=not progress):
        rows = range(start, min(start + batch, len(texts)))
        obs = [Observation(frames[i % len(frames)], texts[i]) for i in rows]
        def run(observations: Any, **forced: Any) -> tuple[list, np.ndarray]:
            if not verbal:
                return [None] * (len(observations) if isinstance(observations, list) else 1), \
                    model.predict_action(observations, **forced)
            words, out = model.say_and_act(observations, **forced)
            return ([words] if isinstance(words, str) else words), out

        if phrases is not None:  # one forced phrase per call: group rows by phrase
            for i, o in zip(rows, obs):
                words, out = run(o, phrase=phrases[i])
                actions.append(np.atleast_2d(out))
                said.extend(words)
            continue
        words, out = run(obs)
        actions.append(np.atleast_2d(out))
        said.extend(words)
    return np.concatenate(actions), (said if verbal else None)


def accuracy(model: Any, frames: np.ndarray, examples: list[instructions.Example], progress: bool = True) -> dict:
    """Direction, speed and word accuracy on ``examples`` (each with a frame, cycled)."""
    actions, said = predict(model, frames, [e.instruction for e in examples], progress=progress)
    want = [e.phrase[0] for e in examples]
    got = [direction(a) for a in actions]
    speeds = [(speed(a), e.phrase[1]) for a, e in zip(actions, examples) if e.phrase[0] != "stay"]
    out = {"n": len(examples), "direction": float(np.mean([g == w for g, w in zip(got, want)])),
           "speed": float(np.mean([g == w for g, w in speeds]))}
    if said is not None:
        out["words"] = float(np.mean([s == " ".join(e.phrase) for s, e in zip(said, examples)]))
    return out


def follows_words(model: Any, frames: np.ndarray, examples: list[instructions.Example], seed: int = 0,
                  progress: bool = True) -> float:
    """How often a verbalising model's actions go the way of words it is made to say that
    contradict the instruction (another direction)."""
    rng = np.random.default_rng(seed)
    forced = []
    for e in examples:
        others = [p for p in instructions.phrases() if p[0] not in (e.phrase[0], "stay")]
        forced.append(others[rng.integers(len(others))])
    actions, _ = predict(model, frames, [e.instruction for e in examples], [" ".join(p) for p in forced],
                         progress=progress)
    return float(np.mean([direction(a) == p[0] for a, p in zip(actions, forced)]))
