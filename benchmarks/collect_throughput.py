"""Collection throughput: `probes.collect_to_disk` vs a plain forward with raw torch hooks saving the same tensors.

On the mid-size random OpenVLA (8 Llama layers, width 1024) and tiny-pi0, each variant
collects the residual stream after every layer at the last position of every
action-emitting forward (OpenVLA's 7 decoding calls; Pi0's 10 denoising steps of the
expert) for the same frames and writes them as safetensors shards of the same size:

  project  collect_to_disk(model, frames, sites, out, calls="actions", positions="last")
  plain    the family's prediction on the bare torch module, forward hooks on the layers
           copying ``output[:, -1]``, the rows stacked and saved with safetensors

Rounds alternate the variants so machine noise hits both; prints frames/s (median) and the
ratio project/plain (target >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import nnsight_vla  # noqa: E402
from nnsight_vla import Observation, Site  # noqa: E402
from nnsight_vla.probes import ObservationFrames, collect_to_disk  # noqa: E402
from steering_overhead import image, mid_openvla  # noqa: E402


def frames_of(model, count: int) -> list[Observation]:
    state = None if model.spec.state_dim is None else np.zeros(model.spec.state_dim)
    size = 256 if model.spec.family == "openvla" else 64
    return [Observation({c: image(i * 7 + j, size) for j, c in enumerate(model.spec.camera_names)},
                        "pick up the bowl", state=state) for i in range(count)]


def plain(model, frames: list[Observation], tower: str, shard_rows: int, out: Path) -> None:
    """Raw torch hooks on the bare module; the same rows written as shards."""
    layers = model.towers()[tower].layers
    calls = list(model.action_calls(tower))
    rows: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    current: dict[int, list[torch.Tensor]] = {}

    def hook(index):
        def save(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            current[index].append(hidden[:, -1].detach().float().cpu())
        return save

    handles = [layer._module.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        first, shard = 0, 0
        for frame in frames:
            current.clear()
            current.update({i: [] for i in rows})
            model._predict_action(**model._inputs([frame]), **({} if tower == "vlm" else {"seed": 0}))
            for i in rows:  # [1, calls, 1, width]
                rows[i].append(torch.stack([current[i][c] for c in calls], dim=1)[:, :, None])
            shard += 1
            if shard == shard_rows or frame is frames[-1]:
                save_file({f"{tower}.resid.{i}": torch.cat(v) for i, v in rows.items()},
                          str(out / f"shard-{first:09d}.safetensors"))
                first += shard
                shard = 0
                for v in rows.values():
                    v.clear()
    finally:
        for handle in handles:
            handle.remove()


def measure(label: str, model, tower: str, count: int, shard_rows: int, rounds: int) -> None:
    frames = frames_of(model, count)
    sites = [Site(i, "resid", tower) for i in range(model.towers()[tower].n_layers)]
    options = {} if tower == "vlm" else {"seed": 0}
    times: dict[str, list[float]] = {"project": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds + 1):  # round 0 warms up and checks the two agree
            for name in times:
                out = Path(tmp) / f"{name}-{r}"
                out.mkdir()
                start = time.perf_counter()
                if name == "project":
                    collect_to_disk(model, ObservationFrames(frames), sites, out, calls="actions", positions="last",
                                    shard_rows=shard_rows, progress=False, **options)
                else:
                    plain(model, frames, tower, shard_rows, out)
                if r:
                    times[name].append(time.perf_counter() - start)
            if r == 0:
                from safetensors.torch import load_file

                ours = load_file(str(Path(tmp) / "project-0" / "shard-000000000.safetensors"))
                theirs = load_file(str(Path(tmp) / "plain-0" / "shard-000000000.safetensors"))
                for key, value in theirs.items():
                    assert torch.equal(ours["acts/" + key], value), key
    rate = {name: count / statistics.median(t) for name, t in times.items()}
    print(f"{label}: {count} frames, {len(sites)} sites, calls='actions', shards of {shard_rows}")
    for name, value in rate.items():
        print(f"  {name:8s} {value:7.2f} frames/s (median of {rounds} rounds)")
    print(f"  ratio project/plain = {rate['project'] / rate['plain']:.3f}   (target >= 0.9)")


def build(name: str) -> tuple[str, object, str]:
    """``(label, model, tower)`` of a benchmark model name."""
    if name == "openvla-mid":
        return "mid-size OpenVLA (8 layers, width 1024)", mid_openvla(8, 1024)[0], "vlm"
    return name, nnsight_vla.load(name), "expert"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--shard-rows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default="openvla-mid,tiny-pi0")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    for label, model, tower in map(build, args.models.split(",")):
        measure(label, model, tower, args.frames, args.shard_rows, args.rounds)


if __name__ == "__main__":
    main()
