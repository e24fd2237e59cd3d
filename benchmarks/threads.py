"""What taking turns costs: threads sharing one model, with and without its run lock.

A model holds a re-entrant lock through every run (`VLA.exclusive`), because nnsight's one
interleaver per model cannot serve two runs at once. Plain predictions on their own never
touched the interleaver, so they were correct in parallel before the lock; this measures
what the lock takes from them, on the mid-size random OpenVLA (8 Llama layers, width 1024):

  serial      N predictions, one after another, in one thread
  locked      the same N split over T threads, each prediction holding the lock
  unlocked    the same, the lock replaced by a no-op (plain predictions only: safe)

Rounds alternate the variants so machine noise hits all alike; prints the medians and the
ratios locked/serial and locked/unlocked. What the lock gives up is the overlap of one
thread's Python work with another's matmuls: on the 2-core AVX2 machine (3 threads, 12
predictions) locked/serial was 1.08 and locked/unlocked 1.33.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from steering_overhead import mid_openvla  # noqa: E402


def run_threads(model, obs, n: int, threads: int) -> float:
    share = [n // threads + (i < n % threads) for i in range(threads)]
    start = threading.Barrier(threads + 1)

    def work(k: int) -> None:
        start.wait()
        for _ in range(k):
            model.predict_action(obs)

    workers = [threading.Thread(target=work, args=(k,)) for k in share]
    for w in workers:
        w.start()
    t0 = time.perf_counter()
    start.wait()
    for w in workers:
        w.join()
    return time.perf_counter() - t0


def serial(model, obs, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        model.predict_action(obs)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=int, default=12)
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model, obs, *_ = mid_openvla(8, 1024)
    model.predict_action(obs)  # warm up
    lock = model.exclusive()
    times: dict[str, list[float]] = {"serial": [], "locked": [], "unlocked": []}
    for _ in range(args.rounds):
        times["serial"].append(serial(model, obs, args.predictions))
        times["locked"].append(run_threads(model, obs, args.predictions, args.threads))
        model.__dict__["_run_lock"] = contextlib.nullcontext()  # what plain predictions did before
        try:
            times["unlocked"].append(run_threads(model, obs, args.predictions, args.threads))
        finally:
            model.__dict__["_run_lock"] = lock
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, value in med.items():
        print(f"{name:9s} {value:7.2f} s for {args.predictions} predictions ({args.threads} threads where threaded)")
    print(f"locked/serial   {med['locked'] / med['serial']:.2f}")
    print(f"locked/unlocked {med['locked'] / med['unlocked']:.2f}")


if __name__ == "__main__":
    main()
