"""The paper's experiment on a mini-openvla, open-loop: concept clusters from the lens clamped vs random clusters, on a neutral instruction.

    python -m nnsight_vla_openvla.mini.experiment --out runs/mini-open-loop --sizes 20 --values 2,4,8 --controls 10
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

#: The paper's motion concepts and the measure each should move (and which way).
CONCEPTS = {"up": ("dz", 1), "down": ("dz", -1), "fast": ("speed", 1), "slow": ("speed", -1)}


def run(model_name: str, out: Path, sizes: list[int], values: list[float], controls: int, instruction: str,
        frames_used: int, seed: int = 0) -> list[dict]:
    import nnsight_vla
    from nnsight_vla import Clamp, Observation, lens
    from nnsight_vla.steering import open_loop

    from . import frames

    model = nnsight_vla.load(model_name)
    table = lens.project_value_vectors(model, top_k=10)
    scenes = frames.load()[-frames_used:]
    obs = [Observation(frame, instruction) for frame in scenes]
    steering = {}
    for concept in CONCEPTS:
        for size in sizes:
            cluster = lens.cluster(table, concept, size=size)
            for value in values:
                steering[f"{concept}_{size}@{value:g}"] = Clamp(cluster, value)
    options = {"with_phrase": True} if model.config.phrase_tokens else {}
    result = open_loop(model, obs, steering, controls=controls, seed=seed, **options)
    result.meta.update(model=model_name, instruction=instruction, frames=len(scenes))
    result.save(out)
    rows = []
    for row in result.table():
        concept = row["steering"].split("_")[0]
        measure, sign = CONCEPTS[concept]
        if row["measure"] == measure:
            rows.append({**row, "expected_sign": sign, "words": result.words.get(row["steering"], [])})
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="mini-openvla")
    parser.add_argument("--sizes", default="20", help="cluster sizes, comma-separated (the paper: 10,20,40)")
    parser.add_argument("--values", default="2,4,8", help="clamp values, comma-separated")
    parser.add_argument("--controls", type=int, default=10, help="random clusters per steering")
    parser.add_argument("--instruction", default="move the arm", help="the neutral instruction")
    parser.add_argument("--frames", type=int, default=4, help="held-out scenes used")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = run(args.model, args.out, [int(s) for s in args.sizes.split(",")], [float(v) for v in args.values.split(",")],
               args.controls, args.instruction, args.frames)
    for row in rows:
        print(f"{row['steering']:>14s} {row['measure']:>5s} shift {row['shift']:+.3f}  random {row['random_mean']:+.3f}"
              f" ± {row['random_std']:.3f}  z {row['z']:+.2f}  (expected {'+' if row['expected_sign'] > 0 else '-'})"
              f"  words {sorted(set(row['words']))}")


if __name__ == "__main__":
    main()
