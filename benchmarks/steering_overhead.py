"""Steered traced `predict_action` vs plain `predict_action` with an equivalent torch hook.

Builds a mid-size random OpenVLA (8 Llama layers, width 1024, small vision towers), then
times, interleaved in rounds so machine noise hits all variants alike:

  traced   with model.predict_action(obs) as tracer: for step in tracer.iter[:7]: clamp
  plain    model.predict_action(obs) with a torch forward-pre-hook doing the same clamp
  raw      the family's generation loop on the bare torch module, same hook (no nnsight at all)

and prints the medians and the ratios traced/plain (target <= 1.10) and traced/raw.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nnsight_vla  # noqa: E402
from nnsight_vla import Observation  # noqa: E402
from nnsight_vla_openvla.tiny import tiny_config, write_random_checkpoint  # noqa: E402

LAYER, NEURONS, VALUE = 5, [11, 222, 333, 1444], 8.0


def clamp_hook(module, args):
    x = args[0].clone()
    x[..., NEURONS] = VALUE
    return (x,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args()

    config = tiny_config(
        num_hidden_layers=args.layers, hidden_size=args.width, intermediate_size=int(args.width * 2.75),
        num_attention_heads=16, num_key_value_heads=16,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = nnsight_vla.load(write_random_checkpoint(f"{tmp}/mid", config))
    obs = Observation(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8), "pick up the bowl")
    down_proj = model._module.language_model.model.layers[LAYER].mlp.down_proj
    inputs = model._inputs([obs])

    def traced():
        with model.predict_action(obs) as tracer:
            for step in tracer.iter[:7]:
                model.layers[LAYER].mlp.down_proj.input[..., NEURONS] = VALUE
            result = tracer.result.save()
        return result

    def with_hook(fn):
        def run():
            handle = down_proj.register_forward_pre_hook(clamp_hook)
            try:
                return fn()
            finally:
                handle.remove()
        return run

    variants = {
        "traced": traced,
        "plain": with_hook(lambda: model.predict_action(obs)),
        "raw": with_hook(lambda: model._predict_action(**inputs)),
    }
    results = {name: fn() for name, fn in variants.items()}  # warm-up, and a correctness check
    assert np.array_equal(results["traced"], results["plain"]), results
    assert np.array_equal(results["traced"], results["raw"]), results

    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(args.reps):
                fn()
            times[name].append((time.perf_counter() - start) / args.reps)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"mid-size OpenVLA: {args.layers} layers, width {args.width}; torch threads {torch.get_num_threads()}")
    for name, t in med.items():
        print(f"  {name:7s} {t * 1000:8.1f} ms per predict_action (median of {args.rounds} rounds x {args.reps})")
    print(f"ratio traced/plain = {med['traced'] / med['plain']:.3f}   (target <= 1.10)")
    print(f"ratio traced/raw   = {med['traced'] / med['raw']:.3f}")


if __name__ == "__main__":
    main()
