"""LIBERO resets: lerobot's own reset vs `eval.libero.reset_to`, on a new env and on a used one.

In each round, two new envs of the same task are built: one is reset by lerobot (init state 0,
then 1), the other by `reset_to` (the same init states, seed 7). The first reset of a new env
includes building it. Rounds alternate which variant goes first. Prints the median seconds of
each and the ratio reset_to/lerobot (first reset and later reset), with the scene compilations
(``MjSim.from_xml_string`` calls; `reset_to` copies a scene it compiled before), the render
contexts and the camera renders each made. `reset_to` returns the same
observation bit for bit (`tests/test_eval_libero.py`).

    python benchmarks/libero_reset.py --rounds 3 --camera-size 256
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nnsight_vla.eval import libero  # noqa: E402


def counting():
    """Patch robosuite to count scene compilations, render contexts and renders; returns the counts
    and an undo function."""
    from robosuite.utils.binding_utils import MjRenderContext, MjSim

    counts = {"builds": 0, "contexts": 0, "renders": 0}
    build, render, made = MjSim.from_xml_string.__func__, MjRenderContext.render, MjRenderContext.__init__

    def counted_build(cls, xml):
        counts["builds"] += 1
        return build(cls, xml)

    def counted_render(self, *args, **kwargs):
        counts["renders"] += 1
        return render(self, *args, **kwargs)

    def counted_context(self, *args, **kwargs):
        counts["contexts"] += 1
        made(self, *args, **kwargs)

    MjSim.from_xml_string, MjRenderContext.render = classmethod(counted_build), counted_render
    MjRenderContext.__init__ = counted_context

    def undo():
        MjSim.from_xml_string, MjRenderContext.render = classmethod(build), render
        MjRenderContext.__init__ = made

    return counts, undo


def one(variant: str, suite: str, task: int, camera_size: int, counts: dict) -> dict:
    """Seconds, builds and renders of a new env's first reset and of its second."""
    env = libero.make_env(suite, task, camera_size=camera_size)
    out = {}
    try:
        for label, episode in (("first", 0), ("later", 1)):
            before, start = dict(counts), time.perf_counter()
            if variant == "lerobot":
                env.envs[0].init_state_id = episode
                env.reset(seed=[7])
            else:
                libero.reset_to(env, episode)
            out[label] = {"s": time.perf_counter() - start, **{k: counts[k] - before[k] for k in counts}}
    finally:
        env.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--camera-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    counts, undo = counting()
    runs = {"lerobot": [], "reset_to": []}
    try:
        for r in range(args.rounds):
            order = ["lerobot", "reset_to"] if r % 2 == 0 else ["reset_to", "lerobot"]
            for variant in order:
                runs[variant].append(one(variant, args.suite, args.task, args.camera_size, counts))
    finally:
        undo()
    print(f"{args.suite} task {args.task}, {args.camera_size}-pixel cameras, {args.rounds} rounds (median s)")
    for label in ("first", "later"):
        med = {v: statistics.median(run[label]["s"] for run in runs[v]) for v in runs}
        made = {v: runs[v][0][label] for v in runs}
        print(f"  {label:5s} reset: lerobot {med['lerobot']:.2f} s ({describe(made['lerobot'])}), reset_to "
              f"{med['reset_to']:.2f} s ({describe(made['reset_to'])}), ratio {med['reset_to'] / med['lerobot']:.2f}")


def describe(made: dict) -> str:
    return f"{made['builds']} compilations, {made['contexts']} render contexts, {made['renders']} renders"


if __name__ == "__main__":
    main()
