"""Run every CUDA path of nnsight-vla once and compare it with the CPU: `make gpu-check`.

For each built-in model and a mid-size random OpenVLA (8 Llama layers, width 1024), loaded in
bf16 on the GPU and in float32 on the CPU (the reference), it checks

  load     the weights: on the device, mostly in the dtype asked for, equal to the CPU's
           rounded to that dtype
  predict  model.predict_action(obs)
  trace    `with model.predict_action(obs) as tracer:` saving the residual stream of a middle
           layer of the action tower at every forward, and its result equal to a plain call
  steer    `with model.steer(Clamp(...))`, and the same clamp applied in a trace (equal on the device)
  collect  nnsight_vla.collect at the same site

then the value-vector lens (`project_value_vectors(model, dtype="bfloat16", device="cuda")`), a
TransformerLens bridge run on the device (`to_bridge`) and one LIBERO evaluation step
(`nnsight_vla.eval.evaluate`, max_steps=1, one episode), each against the same on the CPU.

Tolerances, per device dtype (`TOLERANCES`):
  values   max |device - cpu| / max |cpu| over a tensor (actions, activations, logits, scores)
  weights  the same for the loaded weights (one rounding to bf16 is 2**-8)
  tokens   the fraction of discrete action tokens (OpenVLA's bins, Pi0-FAST's actions) equal
Greedy decoding feeds each chosen token back, so for the families whose actions are tokens
activations are compared at the first forward (the prefill) only: a token flipped by bf16
rounding changes what every later forward sees. Flow-matching families are compared at every
forward (each denoising step).

Each check runs on its own: one that fails prints its error and the rest still run. The table
is printed and written as JSON (`--out`); the exit code is 1 if any check failed, 2 without a
CUDA GPU. `--device cpu` is a rehearsal on the CPU (the same checks, float32 vs float32), to
exercise this script where no GPU is. Tests and CI never run it.

    make gpu-check                                   # everything, bf16 on cuda (estimated 4-6 min)
    make gpu-check ARGS="--models tiny-openvla,tiny-pi0 --out /tmp/g.json"
    make gpu-check ARGS="--device cpu --models tiny-openvla --lens-model tiny-openvla --eval-models tiny-openvla"
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NO_CUDA = ("gpu-check needs a CUDA GPU (torch.cuda.is_available() is False): run it on a machine "
           "with one; tests and CI never call it")

# Per device dtype: the largest relative difference of values and of weights, and the smallest
# fraction of action tokens equal. bf16 keeps 8 significant bits and the errors grow through the
# layers and denoising steps: in bf16 on the CPU the tiny models' actions and activations differ
# from float32 by at most 1.1 % (`--device cpu --dtype bfloat16`), so 5 % leaves room for the
# GPU's other kernels. Weights: one rounding to bf16 at most. float32 on a GPU differs from the
# CPU by the order of summation (and cuDNN's TF32 convolutions in the vision towers).
TOLERANCES = {
    "bfloat16": {"values": 0.05, "weights": 2.0**-8, "tokens": 5 / 7},
    "float32": {"values": 2e-3, "weights": 0.0, "tokens": 1.0},
}
NEURONS, VALUE = [0, 1, 2, 3], 5.0  # the clamp of the steer check (every tower has >= 4 neurons)
MID = "mid-openvla"  # not a built-in: a random OpenVLA checkpoint written for the check
DEFAULT_BRIDGES = "tiny-openvla:vlm,tiny-pi0:expert"


class NotLoaded(Exception):
    """A check's model did not load (its load row says why)."""


class BudgetExceeded(BaseException):
    """The total time budget ran out while a check was running (a BaseException, so that code
    which records exceptions and goes on, as `evaluate` does per episode, lets it through)."""


# -- comparisons ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One comparison: what, the measured value, and the bound it must meet."""

    compared: str
    value: float
    bound: float
    at_least: bool = False  # True for agreement fractions (higher is better)

    @property
    def ok(self) -> bool:
        return self.value >= self.bound if self.at_least else self.value <= self.bound

    def __str__(self) -> str:
        sign = ">=" if self.at_least else "<="
        return f"{self.compared} {self.value:.3g} ({sign} {self.bound:.3g})"


def as_array(x: Any):
    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def relative(device_value: Any, cpu_value: Any) -> float:
    """max |device - cpu| / max |cpu| (shapes must agree)."""
    import numpy as np

    a, b = as_array(device_value), as_array(cpu_value)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: device {a.shape}, cpu {b.shape}")
    if not np.isfinite(a).all():
        raise AssertionError("the device's values are not all finite")
    scale = np.abs(b).max() if b.size else 0.0
    return float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a - b).max())


def agreement(device_value: Any, cpu_value: Any) -> float:
    """The fraction of entries equal (discrete actions decode equal tokens to equal floats)."""
    a, b = as_array(device_value), as_array(cpu_value)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: device {a.shape}, cpu {b.shape}")
    return float((a == b).mean()) if a.size else 1.0


# -- one model on both sides ---------------------------------------------------------------------


class Pair:
    """A model on the CPU in float32 (the reference) and on the device under test."""

    def __init__(self, name: str, device: str, dtype: str):
        self.name, self.device, self.dtype = name, device, dtype
        self.tol = TOLERANCES[dtype]
        self.ref = self.dev = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def source(self) -> str:
        if self.name != MID:
            return self.name
        from nnsight_vla_openvla.tiny import tiny_config, write_random_checkpoint

        self._tmp = tempfile.TemporaryDirectory(prefix="gpu-check-")
        config = tiny_config(num_hidden_layers=8, hidden_size=1024, intermediate_size=2816,
                             num_attention_heads=16, num_key_value_heads=16)
        return str(write_random_checkpoint(Path(self._tmp.name) / "mid", config))

    def load(self) -> list[Outcome]:
        import nnsight_vla

        source = self.source()
        self.ref = nnsight_vla.load(source, dtype="float32", device="cpu")
        self.dev = nnsight_vla.load(source, dtype=self.dtype, device=self.device)
        return placement_outcomes(self.dev, self.device, self.dtype) + [
            weights_outcome(self.dev, self.ref, self.tol["weights"])]

    def models(self):
        if self.ref is None or self.dev is None:
            raise NotLoaded(f"{self.name} did not load (see its load row)")
        return self.dev, self.ref

    @property
    def discrete(self) -> bool:
        return self.models()[1].spec.action_token_ids is not None

    def actions(self, compared: str, device_value: Any, cpu_value: Any) -> Outcome:
        if self.discrete:
            return Outcome(f"{compared}: tokens equal", agreement(device_value, cpu_value), self.tol["tokens"], True)
        return Outcome(f"{compared} rel", relative(device_value, cpu_value), self.tol["values"])

    def close(self) -> None:
        self.ref = self.dev = None
        if self._tmp is not None:
            self._tmp.cleanup()
        free_memory()


def placement_outcomes(model: Any, device: str, dtype: str) -> list[Outcome]:
    """The share of parameter elements on the device (all) and in the requested dtype (most:
    families may keep small parts in float32 on purpose, as lerobot's Pi0 does)."""
    params = list(model._module.parameters())
    total = sum(p.numel() for p in params)
    on_device = sum(p.numel() for p in params if p.device.type == device)
    in_dtype = sum(p.numel() for p in params if str(p.dtype) == f"torch.{dtype}")
    return [Outcome(f"params on {device}", on_device / total, 1.0, True),
            Outcome(f"params in {dtype}", in_dtype / total, 0.5, True)]


def weights_outcome(dev: Any, ref: Any, bound: float) -> Outcome:
    """The worst parameter: max |device - cpu rounded to the device's dtype| / max |cpu|."""
    ref_params = dict(ref._module.named_parameters())
    worst = 0.0
    for name, param in dev._module.named_parameters():
        want = ref_params[name].detach().to(param.dtype)
        worst = max(worst, relative(param, want))
    return Outcome(f"weights ({len(ref_params)} tensors) rel", worst, bound)


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def observation(model: Any):
    from nnsight_vla.testing.contract import example_observation

    return example_observation(model)


def action_tower(model: Any) -> str:
    return "expert" if "expert" in model.towers() else "vlm"


def probe_site(model: Any):
    """The residual stream after a middle layer of the tower that emits the actions."""
    from nnsight_vla import Site

    tower = action_tower(model)
    return Site(model.towers()[tower].n_layers // 2, "resid", tower)


def traced_residuals(model: Any, obs: Any, site: Any):
    """``site`` at the last position of every forward of one prediction, and the prediction."""
    import nnsight
    import torch
    from nnsight_vla.testing.contract import prediction_steps

    with model.predict_action(obs) as tracer:
        seen = nnsight.save([])
        for step in tracer.iter[: prediction_steps(model)]:
            if site.runs_at(model, step):
                seen.append(site.read(model)[:, -1].clone())
        result = tracer.result.save()
    return torch.stack([x.float().cpu() for x in seen], dim=1), result


def compared_calls(pair: Pair, values: Any) -> Any:
    """All forwards (dimension 1) for flow matching; the prefill only where actions are tokens."""
    return values[:, :1] if pair.discrete else values


# -- the checks of one model ------------------------------------------------------------------


def check_predict(pair: Pair) -> list[Outcome]:
    dev, ref = pair.models()
    return [pair.actions("actions", dev.predict_action(observation(dev)), ref.predict_action(observation(ref)))]


def check_trace(pair: Pair) -> list[Outcome]:
    dev, ref = pair.models()
    site = probe_site(ref)
    got, traced = traced_residuals(dev, observation(dev), site)
    want, _ = traced_residuals(ref, observation(ref), site)
    plain = dev.predict_action(observation(dev))
    return [
        Outcome(f"{site} rel", relative(compared_calls(pair, got), compared_calls(pair, want)), pair.tol["values"]),
        Outcome("traced = plain on device, max|diff|", float(abs(as_array(traced) - as_array(plain)).max()), 0.0),
    ]


def steered(model: Any, clamp: Any):
    with model.steer(clamp):
        return model.predict_action(observation(model))


def steered_in_trace(model: Any, clamp: Any):
    from nnsight_vla.steering import apply
    from nnsight_vla.testing.contract import prediction_steps

    with model.predict_action(observation(model)) as tracer:
        for step in tracer.iter[: prediction_steps(model)]:
            apply(model, clamp, step)
        result = tracer.result.save()
    return result


def check_steer(pair: Pair) -> list[Outcome]:
    from nnsight_vla import Clamp

    dev, ref = pair.models()
    site = probe_site(ref)
    clamp = Clamp([(site.layer, n) for n in NEURONS], VALUE, tower=site.tower)
    got = steered(dev, clamp)
    in_trace = steered_in_trace(dev, clamp)
    return [
        pair.actions("steered actions", got, steered(ref, clamp)),
        Outcome("steer = traced clamp on device, max|diff|", float(abs(as_array(got) - as_array(in_trace)).max()), 0.0),
    ]


def check_collect(pair: Pair) -> list[Outcome]:
    from nnsight_vla import collect

    dev, ref = pair.models()
    site = probe_site(ref)
    got = collect(dev, observation(dev), [site], calls="all", positions="last")[site]
    want = collect(ref, observation(ref), [site], calls="all", positions="last")[site]
    if got.device.type != "cpu":
        raise AssertionError(f"collect returned a tensor on {got.device}; it gathers on the CPU")
    return [Outcome(f"{site} {tuple(got.shape)} rel", relative(compared_calls(pair, got), compared_calls(pair, want)),
                    pair.tol["values"])]


MODEL_CHECKS = {"predict": check_predict, "trace": check_trace, "steer": check_steer, "collect": check_collect}


# -- lens, bridge, evaluation ----------------------------------------------------------------------


def rounding_bound(norms: Any, widest: float, scores: Any, dtype: str) -> Any:
    """How far a score computed in ``dtype`` may lie from float32's: the formula of
    `nnsight_vla.lens.value_vectors.bf16_error_bound` with that dtype's unit (float32 on a GPU:
    2**-16, a generous allowance for another summation order)."""
    import numpy as np

    eps = 2.0**-8 if dtype == "bfloat16" else 2.0**-16
    return 2 * eps * norms * widest + eps * np.abs(scores)


def check_lens(pair: Pair) -> list[Outcome]:
    """Top-1 tokens equal wherever the float32 margin exceeds both scores' rounding bounds;
    scores within the values tolerance."""
    import torch
    from nnsight_vla.lens import project_value_vectors
    from nnsight_vla.towers import get_tower

    dev, ref = pair.models()
    got = project_value_vectors(dev, top_k=2, dtype=pair.dtype, device=pair.device, progress=False)
    want = project_value_vectors(ref, top_k=2, dtype="float32", device="cpu", progress=False)
    tower = get_tower(ref, None)
    norms = as_array(torch.stack([tower.value_vectors(i).float().norm(dim=0) for i in want.layers]))
    widest = float(tower.unembedding(None).float().norm(dim=1).max())
    first, second = want.scores[..., 0], want.scores[..., 1]
    bound = rounding_bound(norms, widest, first, pair.dtype) + rounding_bound(norms, widest, second, pair.dtype)
    sure = first - second > bound
    return [
        Outcome(f"top-1 ids equal ({sure.mean():.0%} sure)", agreement(got.ids[..., 0][sure], want.ids[..., 0][sure]),
                1.0, True),
        Outcome(f"scores {got.scores.shape} rel", relative(got.scores, want.scores), pair.tol["values"]),
    ]


def check_bridge(pair: Pair, part: str) -> list[Outcome]:
    """A TransformerLens bridge of ``part`` run on the device: its output and the residual
    stream after a middle block, against the same bridge on the CPU."""
    from nnsight_vla.transformer_lens import bridge_inputs, to_bridge

    dev, ref = pair.models()
    hook = f"blocks.{dev.towers()[part].n_layers // 2}.hook_resid_post"
    outputs = []
    for model in (dev, ref):
        bridge = to_bridge(model, part)
        out, cache = bridge.run_with_cache(**bridge_inputs(model, observation(model), part))
        outputs.append((out, cache[hook]))
        del bridge, cache
    (out_dev, resid_dev), (out_ref, resid_ref) = outputs
    if resid_dev.device.type != pair.device:
        raise AssertionError(f"the bridge ran on {resid_dev.device}, not on {pair.device}")
    return [
        Outcome(f"output {tuple(out_dev.shape)} rel", relative(out_dev, out_ref), pair.tol["values"]),
        Outcome(f"{hook} rel", relative(resid_dev, resid_ref), pair.tol["values"]),
    ]


def check_eval(pair: Pair) -> list[Outcome]:
    """One LIBERO step (libero_spatial task 0, init state 0, baseline only): the action the
    model took and the end effector's path."""
    from nnsight_vla.eval import evaluate

    dev, ref = pair.models()
    rows = []
    for model in (dev, ref):
        with tempfile.TemporaryDirectory(prefix="gpu-check-eval-") as out:
            result = evaluate(model, "libero_spatial", [0], episodes=1, controls=("baseline",), max_steps=1,
                              camera_size=128, out_dir=out)
        row = result.episodes[0]
        if row.get("error"):
            raise AssertionError(f"the episode on {model.target_device or 'cpu'} failed: {row['error']}")
        rows.append(row)
    (got, want) = rows
    return [
        pair.actions("actions", got["actions"], want["actions"]),
        Outcome("path rel", relative(got["path"], want["path"]), pair.tol["values"]),
    ]


# -- the plan ------------------------------------------------------------------------------------


@dataclass
class Row:
    check: str
    seconds: float = 0.0
    ok: bool = False
    outcomes: list[str] = field(default_factory=list)
    error: str = ""


@dataclass
class Check:
    name: str
    run: Callable[[], list[Outcome]]
    after: Callable[[], None] | None = None  # frees what the check's group loaded


def plan(args: argparse.Namespace) -> list[Check]:
    """Per model (those of --models, then those only the lens, bridges or evaluation use): its
    load, its model checks, then the lens, bridges and evaluation step on it. Each model is
    loaded once and freed after its last check."""
    bridges = [(model, part or "vlm") for model, _, part in (item.partition(":") for item in args.bridges)]
    others = [args.lens_model] * bool(args.lens_model) + [model for model, _ in bridges] + args.eval_models
    checks: list[Check] = []
    for name in dict.fromkeys(args.models + others):
        pair = Pair(name, args.device, args.dtype)
        group = [Check(f"{name} load", pair.load)]
        if name in args.models:
            group += [Check(f"{name} {what}", partial(fn, pair)) for what, fn in MODEL_CHECKS.items()]
        if name == args.lens_model:
            group.append(Check(f"{name} lens", partial(check_lens, pair)))
        group += [Check(f"{name} bridge {part}", partial(check_bridge, pair, part)) for model, part in bridges
                  if model == name]
        if name in args.eval_models:
            group.append(Check(f"{name} eval step", partial(check_eval, pair)))
        group[-1].after = pair.close
        checks += group
    return checks


def run_check(check: Check, deadline: float) -> Row:
    """Run one check on its own: an error fails its row only; the budget interrupts it."""
    row = Row(check.name)
    left = deadline - time.monotonic()
    start = time.monotonic()
    try:
        if left <= 0:
            raise BudgetExceeded("not run: the time budget was spent")
        signal.setitimer(signal.ITIMER_REAL, left)
        try:
            outcomes = check.run()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        row.outcomes = [str(o) for o in outcomes]
        row.ok = all(o.ok for o in outcomes)
    except BaseException as error:  # noqa: BLE001 -- a failed check must not stop the others
        if isinstance(error, KeyboardInterrupt):
            raise
        row.error = f"{type(error).__name__}: {error}".strip()
        if not isinstance(error, (BudgetExceeded, NotLoaded)):
            traceback.print_exc()
    finally:
        try:
            if check.after is not None:
                check.after()
        except Exception as error:  # noqa: BLE001
            row.error = row.error or f"cleanup: {type(error).__name__}: {error}"
            row.ok = False
    row.seconds = time.monotonic() - start
    return row


def on_alarm(signum: int, frame: Any) -> None:
    raise BudgetExceeded("the time budget ran out during this check")


# -- output --------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    """A plain-text table: check, seconds, result, then its comparisons or error."""
    width = max(len(r.check) for r in rows) if rows else 5
    lines = [f"{'check':{width}}  {'s':>6}  result  comparisons (device vs cpu)", "-" * (width + 60)]
    for r in rows:
        detail = "; ".join(r.outcomes) if not r.error else r.error.splitlines()[0][:300]
        lines.append(f"{r.check:{width}}  {r.seconds:6.1f}  {'ok' if r.ok else 'FAIL':6}  {detail}")
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> dict:
    import torch

    info = {"device": args.device, "dtype": args.dtype, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "tolerances": TOLERANCES[args.dtype], "budget_s": args.budget}
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return info


def write_json(path: Path, args: argparse.Namespace, rows: list[Row], seconds: float) -> None:
    data = {"environment": environment(args), "seconds": round(seconds, 1), "ok": all(r.ok for r in rows),
            "checks": [{**r.__dict__, "seconds": round(r.seconds, 2)} for r in rows]}
    path.write_text(json.dumps(data, indent=2) + "\n")


# -- main ----------------------------------------------------------------------------------------


def builtins() -> list[str]:
    import nnsight_vla

    return [name for family in nnsight_vla.families().values() for name in family.builtins]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: a rehearsal on the CPU, the same checks, float32 vs float32")
    parser.add_argument("--dtype", choices=sorted(TOLERANCES),
                        help="the device's dtype (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--models", help=f"comma-separated (default: every built-in and {MID})")
    parser.add_argument("--lens-model", default="smol-openvla", help="the lens check's model ('' skips it)")
    parser.add_argument("--bridges", default=DEFAULT_BRIDGES, help="MODEL:PART,... ('' skips them)")
    parser.add_argument("--eval-models", default="tiny-openvla,tiny-pi0", help="the evaluation step's ('' skips)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds for all checks; a check still running then fails, the rest are not run")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check.json"), help="the table as JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    split = lambda text: [x for x in (text or "").split(",") if x]  # noqa: E731
    args.models = split(args.models) if args.models is not None else None
    args.bridges, args.eval_models = split(args.bridges), split(args.eval_models)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.touch()  # a path that cannot be written fails now, not after the checks
    if args.models is None:
        args.models = builtins() + [MID]
    signal.signal(signal.SIGALRM, on_alarm)
    checks = plan(args)
    print(f"gpu-check: {len(checks)} checks, {args.dtype} on {args.device} vs float32 on cpu, "
          f"budget {args.budget:.0f} s", flush=True)
    start = time.monotonic()
    deadline = start + args.budget
    rows = []
    for i, check in enumerate(checks, 1):
        print(f"[{i}/{len(checks)}] {check.name} ...", flush=True)
        row = run_check(check, deadline)
        rows.append(row)
        print(f"[{i}/{len(checks)}] {check.name}: {'ok' if row.ok else 'FAIL'} in {row.seconds:.1f} s", flush=True)
    seconds = time.monotonic() - start
    print("\n" + table(rows))
    failed = [r.check for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks ok in {seconds:.0f} s; "
          f"tolerances ({args.dtype}): {TOLERANCES[args.dtype]}")
    write_json(args.out, args, rows, seconds)
    print(f"written: {args.out}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
