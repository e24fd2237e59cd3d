"""Closed-loop speed: steps per second of steered vs unsteered LIBERO rollouts, and where a step's time goes.

For each model it pins the same init state, then runs rollouts of ``--steps`` control steps
unsteered and steered (interleaved rounds, alternating which goes first; one simulator), timing the policy
(the family's LIBERO recipe, ``eval.libero.env_actions``) and the environment step separately; it then times the two camera
renders and the physics of one control step directly. Prints steps/s, the ratio
steered/unsteered (target >= 0.95) and the per-step split. A third condition, "same-path",
scales the steered neurons by 1.0: the steering's full cost with unchanged actions, since a
steered arm takes another path, whose rendering can cost more or less.

With ``--workers 1,2`` it then measures Ray rollouts: for each count N, N workers load the
model and build their simulator (not timed), then run ``--episodes`` episodes each; the
throughput of N workers is divided by that of one. Ray listens on every interface, so run
this inside a loopback-only network namespace: ``scripts/loopback.sh python benchmarks/...``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import nnsight_vla  # noqa: E402
from nnsight_vla import Clamp, Scale  # noqa: E402
from nnsight_vla.eval import libero  # noqa: E402

STEERING = {
    "tiny-openvla": Clamp([(1, 3), (1, 17), (0, 42)], 8.0),
    "tiny-pi0": Clamp([(1, 3), (2, 7)], 4.0, tower="expert"),
}


def run(model, env, steps: int, steering) -> tuple[float, float, float]:
    """(seconds per step, policy seconds per step, env seconds per step) of one rollout."""
    obs, _ = libero.reset_to(env, 0)
    task = env.call("task_description")[0]
    policy = stepping = 0.0
    queue: list = []
    start = time.perf_counter()
    with model.steer(steering):  # None: the unsteered baseline
        for step in range(steps):
            t0 = time.perf_counter()
            if not queue:
                queue = list(libero.env_actions(model, obs, task, seed=step))
            action = queue.pop(0)
            t1 = time.perf_counter()
            obs, *_ = env.step(np.asarray(action)[None])
            t2 = time.perf_counter()
            policy, stepping = policy + t1 - t0, stepping + t2 - t1
    return (time.perf_counter() - start) / steps, policy / steps, stepping / steps


def scaling(name: str, counts: list[int], episodes: int, steps: int, camera_size: int) -> None:
    """Aggregate steps/s of N Ray workers, each running ``episodes`` episodes of ``steps`` steps."""
    import ray
    import torch

    from nnsight_vla.eval.parallel import Worker
    from nnsight_vla.remote import class_path

    model = nnsight_vla.load(name)
    key = model._remoteable_model_key()
    rates = {}
    for n in counts:
        ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)
        try:
            actors = [ray.remote(Worker).options(num_cpus=1).remote("libero_spatial", camera_size) for _ in range(n)]
            ray.get([a.load.remote(class_path(model), key, None, 1) for a in actors])
            ray.get([a.run.remote((0, 0, "baseline"), 1, None, 0, False) for a in actors])  # builds the simulator
            start = time.perf_counter()
            ray.get([a.run.remote((0, e % 10, "baseline"), steps, None, 0, False)
                     for a in actors for e in range(episodes)])
            wall = time.perf_counter() - start
            ray.get([a.close.remote() for a in actors])
        finally:
            ray.shutdown()
        rates[n] = n * episodes * steps / wall
        print(f"  {n} worker(s): {rates[n]:6.2f} steps/s aggregate ({wall:.1f} s for {n * episodes} episodes, "
              f"resets included), speed-up over 1 worker {rates[n] / rates[counts[0]]:.2f}x")
    print(f"  ({os.cpu_count()} CPUs; torch threads per worker 1; caller's torch threads {torch.get_num_threads()})")


def compare(args) -> None:
    """Unsteered vs steered vs same-path rollouts in one simulator, then the env.step split."""
    env = libero.make_env("libero_spatial", 0, args.camera_size)
    try:
        for name in args.models.split(","):
            model = nnsight_vla.load(name)
            clamp = STEERING[name]
            # Scale by 1.0 on the same neurons: all of the steering's work, the actions (and so the
            # trajectory, whose rendering cost varies) unchanged.
            same = Scale(clamp.cluster, 1.0, tower=clamp.tower)
            conditions = [("unsteered", None), ("steered", clamp), ("same-path", same)]
            results = {label: [] for label, _ in conditions}
            for round_ in range(args.rounds):  # rotate which goes first, so order effects cancel
                shift = round_ % len(conditions)
                for label, steering in conditions[shift:] + conditions[:shift]:
                    results[label].append(run(model, env, args.steps, steering))
            med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in results.items()}
            print(f"{name}: libero_spatial task 0, {args.steps} steps, {args.camera_size}px, median of {args.rounds}")
            for label, (total, policy, stepping) in med.items():
                print(f"  {label:10s}{1 / total:6.2f} steps/s  (policy {policy * 1000:6.1f} ms, env.step {stepping * 1000:6.1f} ms)")
            # Each round runs all back to back: the median of per-round ratios cancels slow drift.
            for label in ("steered", "same-path"):
                pairs = list(zip(results["unsteered"], results[label]))
                ratio = statistics.median(u[0] / s[0] for u, s in pairs)
                policy = statistics.median(u[1] / s[1] for u, s in pairs)
                print(f"  {label}/unsteered steps/s = {ratio:.3f} (target >= 0.95; median of per-round ratios), "
                      f"policy time alone {policy:.3f}")
        sim = env.envs[0]._env.env.sim
        t0 = time.perf_counter()
        for _ in range(5):
            for camera in ("agentview", "robot0_eye_in_hand"):
                sim.render(camera_name=camera, height=args.camera_size, width=args.camera_size)
        render = (time.perf_counter() - t0) / 5
        substeps = int(round(1 / (sim.model.opt.timestep * env.envs[0].control_freq)))
        t0 = time.perf_counter()
        for _ in range(10 * substeps):
            sim.step()
        physics = (time.perf_counter() - t0) / 10
        print(f"split of one env.step: rendering both cameras {render * 1000:.1f} ms, "
              f"physics ({substeps} substeps) {physics * 1000:.1f} ms, the rest is the controller and wrappers")
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny-openvla,tiny-pi0")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5, help="0 skips the steered/unsteered comparison")
    parser.add_argument("--camera-size", type=int, default=128)
    parser.add_argument("--workers", default="", help="e.g. 1,2: also measure Ray workers' scaling")
    parser.add_argument("--episodes", type=int, default=2, help="episodes per worker in the scaling run")
    args = parser.parse_args()
    if args.rounds:
        compare(args)
    if args.workers:
        counts = [int(n) for n in args.workers.split(",")]
        for name in args.models.split(","):
            print(f"{name}: Ray workers, libero_spatial task 0, {args.episodes} episodes x {args.steps} steps per worker")
            scaling(name, counts, args.episodes, args.steps, args.camera_size)


if __name__ == "__main__":
    main()
