"""The experiment's results as one Markdown file and figures: open-loop and closed-loop tables per recipe, z-scores against random clusters.

    python -m nnsight_vla_openvla.mini.report --runs runs/mini --out docs/mini_vla
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from nnsight_vla.eval.plots import plot_trajectories

from .experiment import CONCEPTS, with_words

#: Run folders under ``--runs``: a title, the open-loop run, the closed-loop run (files of the
#: built-in's name prefix the figures).
RUNS = (("mini-openvla", "open-loop", "closed-loop"),
        ("mini-openvla, clamped at the prefill only", "prefill-open-loop", None),
        ("mini-openvla-act", "act-open-loop", "act-closed-loop"))
#: Closed-loop metrics reported, besides each concept's own.
CLOSED = ("z_displacement", "mean_speed", "path_length", "displacement_per_step")


def open_loop_table(rows: list[dict]) -> list[str]:
    lines = ["| cluster @ value | measure | shift | random clusters (mean ± sd) | z | says the concept (random) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        says = f"{r['says_concept']:.0%} ({r['random_says_concept']:.0%})" if r["words"] else "–"
        lines.append(f"| {r['steering']} | {r['measure']} ({'+' if r['expected_sign'] > 0 else '−'} expected) "
                     f"| {r['shift']:+.3f} | {r['random_mean']:+.3f} ± {r['random_std']:.3f} | {r['z']:+.2f} | {says} |")
    return lines


def closed_loop_table(statistics: dict) -> list[str]:
    lines = ["| cluster @ value | metric | shift from baseline [95 % CI], paired | random clusters (mean ± sd) | z |",
             "|---|---|---|---|---|"]
    for name, scored in statistics["vs_random"].items():
        own = CONCEPTS[name.split("_")[0]][1]
        for metric in (own, *[m for m in CLOSED if m != own]):
            s, paired = scored[metric], statistics[name][metric]
            ci = f" [{paired['ci_low']:+.4f}, {paired['ci_high']:+.4f}]" if "ci_low" in paired else ""
            mark = "**" if metric == own else ""
            lines.append(f"| {name} | {mark}{metric}{mark} | {s['shift']:+.4f}{ci} | {s['random_mean']:+.4f} ± "
                         f"{s['random_std']:.4f} | {s['z']:+.2f} |")
    return lines


def plot_z(tables: dict[str, list[dict]], path: Path) -> Path:
    """Per recipe: each cluster's z-score against its random clusters, signed so that the
    paper's hypothesis predicts a positive bar; dashed at ±2."""
    from nnsight_vla.plotting import figure, save_png

    fig = figure(12, 3.2 * len(tables))
    axes = np.atleast_1d(fig.subplots(len(tables), 1))
    for ax, (name, rows) in zip(axes, tables.items()):
        z = np.array([r["z"] * r["expected_sign"] for r in rows], dtype=float)
        shown = np.clip(np.nan_to_num(z, nan=0.0, posinf=10, neginf=-10), -10, 10)
        ax.bar(range(len(rows)), shown, color=["tab:red" if v > 2 else "tab:gray" for v in shown])
        ax.axhline(2, color="black", linestyle="--", linewidth=0.8)
        ax.axhline(-2, color="black", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(rows)), [r["steering"] for r in rows], rotation=90, fontsize=7)
        ax.set_ylabel("signed z vs random (clipped ±10)")
        ax.set_title(f"{name}, open-loop: does the cluster move its measure the expected way?", fontsize=9)
    return save_png(fig, path)


def report(runs: Path, out: Path) -> Path:
    """Write ``results.md``, ``open_loop_z.png`` and copies of the closed-loop and explanation figures."""
    out.mkdir(parents=True, exist_ok=True)
    lines, tables = ["# mini-openvla: clamping semantic clusters vs random clusters", ""], {}
    for name, open_dir, closed_dir in RUNS:
        lines += [f"## {name}", ""]
        summary = runs / open_dir / "summary.json"
        if summary.is_file():
            meta = json.loads((runs / open_dir / "meta.json").read_text())
            rows = with_words(json.loads(summary.read_text()), meta["words"], meta["controls"])
            tables[name] = rows
            lines += [f"### Open-loop: {meta['frames']} held-out scenes, instruction {meta['instruction']!r}, "
                      f"{meta['controls']} random clusters per row, forwards clamped: {meta.get('calls', 'all')}",
                      "", *open_loop_table(rows), ""]
        statistics = runs / str(closed_dir) / "statistics.json"
        if closed_dir is not None and statistics.is_file():
            settings = json.loads((runs / closed_dir / "run.json").read_text())["settings"]
            lines += [f"### Closed-loop: LIBERO {settings['suite']} task {settings['tasks']}, {settings['episodes']} "
                      f"init states, {settings['max_steps']} steps, instruction {settings['instruction']!r}", "",
                      *closed_loop_table(json.loads(statistics.read_text())), ""]
            rows = [json.loads(line) for line in (runs / closed_dir / "episodes.jsonl").read_text().splitlines()]
            plot_trajectories(rows, out / f"{name}-closed-loop-trajectories.png")
    if tables:
        plot_z(tables, out / "open_loop_z.png")
    explained = runs / "explain" / "explain.png"
    if explained.is_file():
        shutil.copy(explained, out / "explain.png")
        shutil.copy(runs / "explain" / "explain.json", out / "explain.json")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return out / "results.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="the folder holding the experiment's run folders")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(f"wrote {report(args.runs, args.out)}")


if __name__ == "__main__":
    main()
