"""Steered traced `predict_action` vs plain `predict_action` with an equivalent torch hook.

For each model (a mid-size random OpenVLA: 8 Llama layers, width 1024, small vision
towers; tiny-pi0; tiny-pi05; tiny-pi0_fast, steered at each of its 6 decoding forwards;
tiny-smolvla, whose expert layers run as parts; tiny-xvla, its action head at each of its 4 denoising steps)
it times, interleaved in rounds so machine noise hits all variants alike:

  traced   with model.predict_action(obs) as tracer: clamp FFN neurons on every forward
  empty    the same trace with no intervention in it (what tracing alone costs)
  steer    with model.steer(Clamp(...)): model.predict_action(obs)
  plain    model.predict_action(obs) with a torch forward-pre-hook doing the same clamp
  raw      the family's prediction on the bare torch module, same hook (no nnsight at all)

and prints the medians, the ratios traced/plain and steer/plain (targets <= 1.10), and where
the traced time goes: the module calls one predict_action makes, what a trace costs per module
call (empty - plain: nnsight asks at every wrapped module's call whether an intervention waits
there), and what each intervened forward adds (traced - empty, per step).
"""

from __future__ import annotations

import argparse
import os
import warnings
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# a steered tiny-pi0_fast may emit no FAST sequence: its mean-action fallback warns on every call
warnings.filterwarnings("ignore", message=".*not a FAST token sequence")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nnsight_vla  # noqa: E402
from nnsight_vla import Observation  # noqa: E402

NEURONS, VALUE = [1, 22, 33, 44], 8.0


def clamp_hook(module, args):
    x = args[0].clone()
    x[..., NEURONS] = VALUE
    return (x,)


def image(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def mid_openvla(layers: int, width: int):
    from nnsight_vla_openvla.tiny import tiny_config, write_random_checkpoint

    config = tiny_config(
        num_hidden_layers=layers, hidden_size=width, intermediate_size=int(width * 2.75),
        num_attention_heads=16, num_key_value_heads=16,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = nnsight_vla.load(write_random_checkpoint(f"{tmp}/mid", config))
    obs = Observation(image(0, 256), "pick up the bowl")
    return model, obs, "vlm", layers // 2, model.spec.action_dim


def tiny_lerobot(name: str):
    """A tiny lerobot policy, steered in its action tower (the expert, else the VLM) at every
    forward that emits actions: each denoising step, or each of Pi0-FAST's decoding forwards."""
    model = nnsight_vla.load(name)
    obs = Observation({c: image(i, 64) for i, c in enumerate(model.spec.camera_names)}, "pick up the bowl",
                      state=np.zeros(model.spec.state_dim))
    tower = "expert" if "expert" in model.towers() else "vlm"
    return model, obs, tower, 1, len(model.action_calls(tower))


def measure(label: str, model, obs, tower: str, layer: int, steps: int, rounds: int, reps: int) -> None:
    inputs = model._inputs([obs])
    site = nnsight_vla.Site(layer, "neurons", tower).envoy(model)  # the FFN output projection
    clamp = nnsight_vla.Clamp([(layer, n) for n in NEURONS], VALUE, tower=tower)

    def steered():
        with model.steer(clamp):
            return model.predict_action(obs)

    def traced():
        with model.predict_action(obs) as tracer:
            for step in tracer.iter[:steps]:
                site.input[..., NEURONS] = VALUE
            result = tracer.result.save()
        return result

    def with_hook(fn):
        def run():
            handle = site._module.register_forward_pre_hook(clamp_hook)
            try:
                return fn()
            finally:
                handle.remove()
        return run

    def empty():
        with model.predict_action(obs) as tracer:
            result = tracer.result.save()
        return result

    variants = {
        "traced": traced,
        "empty": empty,
        "steer": steered,
        "plain": with_hook(lambda: model.predict_action(obs)),
        "raw": with_hook(lambda: model._predict_action(**inputs)),
    }
    results = {name: fn() for name, fn in variants.items()}  # warm-up and a correctness check
    for name in ("steer", "plain", "raw"):
        assert np.array_equal(results["traced"], results[name]), (name, results)
    calls = module_calls(lambda: model.predict_action(obs))
    start = time.perf_counter()
    variants["plain"]()
    reps = max(reps, int(0.5 / (time.perf_counter() - start)))  # >= 0.5 s per measurement
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - start) / reps)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{label} (steered: {site.path}, {steps} forward calls)")
    for name, t in med.items():
        print(f"  {name:7s} {t * 1000:8.1f} ms per predict_action (median of {rounds} rounds x {reps})")
    print(f"  ratio traced/plain = {med['traced'] / med['plain']:.3f}   (target <= 1.10)")
    print(f"  ratio steer/plain  = {med['steer'] / med['plain']:.3f}   (target <= 1.10)")
    print(f"  ratio traced/raw   = {med['traced'] / med['raw']:.3f}")
    print(f"  {calls} module calls per predict_action; a trace costs "
          f"{(med['empty'] - med['plain']) / calls * 1e6:+.1f} us per module call (empty - plain), "
          f"each intervened forward {(med['traced'] - med['empty']) / steps * 1e3:+.2f} ms (traced - empty)")


def module_calls(fn) -> int:
    """How many ``nn.Module`` calls ``fn`` makes."""
    count = [0]

    def tick(module, args):
        count[0] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(tick)
    try:
        fn()
    finally:
        handle.remove()
    return count[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--models", default="openvla-mid,tiny-pi0,tiny-pi05,tiny-pi0_fast,tiny-smolvla,tiny-xvla")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    for name in args.models.split(","):
        if name == "openvla-mid":
            setup, label = mid_openvla(8, 1024), "mid-size OpenVLA (8 layers, width 1024)"
        else:
            setup, label = tiny_lerobot(name), name
        measure(label, *setup, args.rounds, args.reps)


if __name__ == "__main__":
    main()
