"""The mini-openvla experiment's speed: closed-loop rollouts per minute without and with a concept cluster clamped.

Interleaved rounds (alternating which goes first) of one LIBERO rollout each, unsteered and
steered with the lens's ``up_20`` cluster clamped, on the same init state and the neutral
instruction the experiment uses. Prints rollouts per minute of each and the ratio
steered/unsteered (target ≈ 1: a clamp adds two small writes per layer it touches). The
training script prints its own wall time and examples per second
(``python -m nnsight_vla_mini.build``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import nnsight_vla  # noqa: E402
from nnsight_vla import Clamp  # noqa: E402
from nnsight_vla.eval.libero import make_env  # noqa: E402
from nnsight_vla.eval.rollout import rollout  # noqa: E402
from nnsight_vla_mini.experiment import NEUTRAL, SUITE, TASK, concept_clusters  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="control steps per rollout")
    parser.add_argument("--value", type=float, default=8.0)
    args = parser.parse_args(argv)
    model = nnsight_vla.load("mini-openvla")
    steering = Clamp(concept_clusters(model, [20])["up", 20], args.value)
    env = make_env(SUITE, TASK)
    times: dict[str, list[float]] = {"unsteered": [], "steered": []}
    try:
        rollout(model, env, 0, 1, instruction=NEUTRAL)  # warm-up: first render and first forward
        for r in range(args.rounds):
            order = ("unsteered", "steered") if r % 2 == 0 else ("steered", "unsteered")
            for name in order:
                start = time.perf_counter()
                run = rollout(model, env, 0, args.steps, steering=steering if name == "steered" else None,
                              instruction=NEUTRAL)
                times[name].append(time.perf_counter() - start)
                assert not run.failed, run.error
    finally:
        env.close()
    per_minute = {k: 60 / statistics.median(v) for k, v in times.items()}
    for name, rate in per_minute.items():
        print(f"{name:10s} {rate:6.2f} rollouts/min ({args.steps} steps; median of {args.rounds})")
    print(f"steered/unsteered rollouts per minute: {per_minute['steered'] / per_minute['unsteered']:.3f} (target ≈ 1)")


if __name__ == "__main__":
    main()
