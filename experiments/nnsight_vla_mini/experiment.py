"""The paper's experiment on a mini-openvla: the lens's concept clusters clamped vs random clusters, on a neutral instruction, open-loop and closed-loop.

    python -m nnsight_vla_mini.experiment open-loop --out runs/mini/open-loop --sizes 10,20,40 --values 0.5,2,8
    python -m nnsight_vla_mini.experiment closed-loop --out runs/mini/closed-loop --size 20 --value 8
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

#: The paper's motion concepts: the open-loop measure and the closed-loop metric each should move, and which way.
CONCEPTS = {"up": ("dz", "z_displacement", 1), "down": ("dz", "z_displacement", -1),
            "fast": ("speed", "mean_speed", 1), "slow": ("speed", "mean_speed", -1)}
#: The neutral instruction: it names no direction, so only the steering can.
NEUTRAL = "move the arm"
#: Closed-loop scenes: a task whose initial states were held out of training (`build.CHECK_TASKS`).
SUITE, TASK = "libero_spatial", 4


def concept_clusters(model, sizes: list[int], table: Any = None) -> dict:
    """``{(concept, size): NeuronCluster}`` from the value-vector lens (the paper's cosine rule);
    ``table``: the model's `ValueVectorTable` when already projected (top_k=10)."""
    from nnsight_vla import lens

    table = table if table is not None else lens.project_value_vectors(model, top_k=10)
    return {(concept, size): lens.cluster(table, concept, size=size) for concept in CONCEPTS for size in sizes}


#: The family-wise level of a grid: a cell holds when its Holm-corrected p is at most this.
ALPHA = 0.05


def open_loop_grid(model, name: str, out: Path, sizes: list[int], values: list[float], controls: int,
                   instruction: str = NEUTRAL, frames_used: int = 4, seed: int = 0, calls: Any = "all",
                   table: Any = None, concepts: list[str] | None = None, batch_size: int = 4,
                   escalate: bool = True) -> list[dict]:
    """Every concept × size × value on held-out frames vs ``controls`` random clusters each,
    one cell at a time (``out/cells/<cell>/``: `OpenLoopResult.save`'s files and ``row.json``;
    a cell already there with the same settings is read back, so an interrupted grid resumes).

    Each cell is scored on its concept's own measure by the rank p-value on the expected side;
    with ``escalate``, a cell with p <= `ALPHA` is rerun with enough controls that its p could
    pass the strictest Holm threshold (alpha / cells). ``summary.json`` holds every cell's row
    with its controls N, p, Holm-corrected p over the grid (``p_holm``) and words said.
    ``calls``: the forwards clamped (`Clamp`'s; ``"all"`` is the paper's OpenVLA rule,
    ``"prefill"`` its π0-FAST rule)."""
    from tqdm.auto import tqdm

    from nnsight_vla import Clamp, Observation
    from nnsight_vla.steering.controls import holm

    from . import frames

    obs = [Observation(frame, instruction) for frame in frames.load()[-frames_used:]]
    steering = {f"{concept}_{size}@{value:g}": Clamp(cluster, value, calls=calls)
                for (concept, size), cluster in concept_clusters(model, sizes, table).items()
                if concept in (concepts or CONCEPTS) for value in values}
    settings = {"model": name, "instruction": instruction, "frames": len(obs), "calls": calls, "seed": seed,
                "batch_size": batch_size}
    enough = int(np.ceil(len(steering) / ALPHA))  # controls + 1 > cells / alpha: p_min below alpha / cells
    rows = []
    for cell, clamp in tqdm(steering.items(), desc="open-loop cells", unit="cell"):
        row = _open_loop_cell(model, obs, cell, clamp, controls, settings, out / "cells" / cell)
        if escalate and row["p"] <= ALPHA and row["controls"] + 1 <= enough:
            row = _open_loop_cell(model, obs, cell, clamp, enough - 1, settings, out / "cells" / f"{cell}+")
        rows.append(row)
    for row, corrected in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = float(corrected)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    (out / "meta.json").write_text(json.dumps({**settings, "cells": len(rows), "alpha": ALPHA}, indent=1))
    return rows


def _open_loop_cell(model, obs: list, cell: str, clamp: Any, controls: int, settings: dict, folder: Path) -> dict:
    """One cell's row (its concept's measure, p on the expected side, words), run or read back."""
    from nnsight_vla.steering import open_loop

    done = folder / "row.json"
    if done.is_file():
        row = json.loads(done.read_text())
        if row.get("settings") == settings and row["controls"] == controls:
            return row
    concept = cell.split("_")[0]
    measure, _, sign = CONCEPTS[concept]
    options = {"predict": _say_and_act} if model.config.phrases is not None else {}  # keep the words said
    result = open_loop(model, obs, {cell: clamp}, controls=controls, seed=settings["seed"],
                       batch_size=settings["batch_size"], progress=False, **options)
    result.meta.update(settings)
    sides = {cell: {measure: sign}}
    result.save(folder, sides)
    row = next(r for r in result.table(sides) if r["measure"] == measure)
    row = with_words([{**row, "expected_sign": sign}], result.extras, controls)[0]
    row["settings"] = settings
    done.write_text(json.dumps(row, indent=1))
    return row


def _say_and_act(model, observations, **options):
    return model.say_and_act(observations, **options)


def with_words(rows: list[dict], words: dict[str, list[str]], controls: int) -> list[dict]:
    """Each row with what the model said under its steering, how often that names the concept,
    and how often it does under the steering's random controls."""
    out = []
    for row in rows:
        concept, said = row["steering"].split("_")[0], words.get(row["steering"], [])
        randoms = [w for k in range(controls) for w in words.get(f"{row['steering']}/random{k}", [])]
        out.append({**row, "words": said, "says_concept": _share(said, concept),
                    "random_says_concept": _share(randoms, concept)})
    return out


def _share(said: list[str], concept: str) -> float:
    return sum(concept in words.split() for words in said) / max(1, len(said))


def closed_loop(model, out: Path, size: int, value: float, controls: int, episodes: int = 2, max_steps: int = 15,
                instruction: str = NEUTRAL, seed: int = 7, concepts: list[str] | None = None, calls: Any = "all",
                table: Any = None, resume: bool = False):
    """Each concept cluster (one size, one value) vs ``controls`` random clusters each, in
    LIBERO, every condition told ``instruction``; `evaluate`'s files and statistics.

    ``resume``: continue the run in ``out``, or extend it with more ``controls``."""
    from nnsight_vla import Clamp
    from nnsight_vla.eval import evaluate

    clusters = concept_clusters(model, [size], table)
    steering = {f"{concept}_{size}@{value:g}": Clamp(clusters[concept, size], value, calls=calls)
                for concept in concepts or CONCEPTS}
    sides = {name: {CONCEPTS[name.split("_")[0]][1]: CONCEPTS[name.split("_")[0]][2]} for name in steering}
    return evaluate(model, SUITE, [TASK], episodes, steering=steering, random_controls=controls, seed=seed,
                    max_steps=max_steps, camera_size=256, instruction=instruction, out_dir=out, sides=sides,
                    resume=resume)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("open-loop", "closed-loop"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="mini-openvla")
    parser.add_argument("--sizes", default="20", help="open-loop: cluster sizes, comma-separated (the paper: 10,20,40)")
    parser.add_argument("--values", default="0.5,2,8", help="open-loop: clamp values, comma-separated")
    parser.add_argument("--size", type=int, default=20, help="closed-loop: the cluster size")
    parser.add_argument("--value", type=float, default=8.0, help="closed-loop: the clamp value")
    parser.add_argument("--controls", type=int, default=10, help="random clusters per steering")
    parser.add_argument("--instruction", default=NEUTRAL, help="the neutral instruction")
    parser.add_argument("--frames", type=int, default=4, help="open-loop: held-out scenes used")
    parser.add_argument("--batch-size", type=int, default=4, help="open-loop: scenes per prediction")
    parser.add_argument("--no-escalate", action="store_true",
                        help="open-loop: keep --controls for cells with p <= 0.05 (else they get enough for Holm)")
    parser.add_argument("--episodes", type=int, default=2, help="closed-loop: init states")
    parser.add_argument("--max-steps", type=int, default=15, help="closed-loop: steps per episode")
    parser.add_argument("--concepts", default=",".join(CONCEPTS), help="closed-loop: concepts, comma-separated")
    parser.add_argument("--calls", default="all", help="forwards clamped: all (the paper's OpenVLA rule), prefill "
                        "(its π0-FAST rule) or comma-separated indices")
    parser.add_argument("--resume", action="store_true",
                        help="closed-loop: continue the run in --out, or extend it with more --controls")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import nnsight_vla

    try:
        calls = args.calls if args.calls in ("all", "prefill") else [int(c) for c in args.calls.split(",")]
    except ValueError as error:
        from nnsight_vla import InputError

        raise InputError(f"--calls {args.calls!r}: use all, prefill or comma-separated ints, e.g. 0,1.") from error
    model = nnsight_vla.load(args.model)
    if args.mode == "open-loop":
        rows = open_loop_grid(model, args.model, args.out, [int(s) for s in args.sizes.split(",")],
                              [float(v) for v in args.values.split(",")], args.controls, args.instruction, args.frames,
                              calls=calls, batch_size=args.batch_size, escalate=not args.no_escalate)
        for row in rows:
            print(f"{row['steering']:>14s} {row['measure']:>5s} shift {row['shift']:+.3f}  random {row['random_mean']:+.3f}"
                  f" ± {row['random_std']:.3f}  z {row['z']:+.2f} (expected {'+' if row['expected_sign'] > 0 else '-'})"
                  f"  p {row['p']:.3f} of N={row['controls']}, Holm {row['p_holm']:.3f}"
                  f"  says it {row['says_concept']:.0%} (random {row['random_says_concept']:.0%})")
        return
    result = closed_loop(model, args.out, args.size, args.value, args.controls, args.episodes, args.max_steps,
                         args.instruction, concepts=args.concepts.split(","), calls=calls,
                         resume=args.resume)
    for name, scored in result.statistics.get("vs_random", {}).items():  # none with fewer than 2 controls
        _, metric, sign = CONCEPTS[name.split("_")[0]]
        s = scored[metric]
        print(f"{name:>12s} {metric}: shift {s['shift']:+.4f}  random {s['random_mean']:+.4f} ± {s['random_std']:.4f}"
              f"  z {s['z']:+.2f} (expected {'+' if sign > 0 else '-'}), p {s['p']:.3f} of N={s['controls']}; "
              f"path_length z {scored['path_length']['z']:+.2f}")


if __name__ == "__main__":
    main()
