"""The experiment's results as one Markdown file and figures: open-loop and closed-loop tables per recipe, z-scores against random clusters.

    python -m nnsight_vla_mini.report --runs runs/mini --out docs/mini_vla
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from nnsight_vla.eval.plots import plot_trajectories
from nnsight_vla.steering.controls import holm, z_score

from .experiment import ALPHA, CONCEPTS, with_words

#: Run folders under ``--runs``: a title (it names the figures), the open-loop run, the
#: closed-loop runs (one per cluster size and clamp value).
RUNS = (("mini-openvla", "open-loop",
         ("closed-loop-s10", "closed-loop", "closed-loop-s40", "closed-loop-v0.5", "closed-loop-v8")),
        ("mini-openvla, clamped at the prefill only", "prefill-open-loop", ()),
        ("mini-openvla-act", "act-open-loop", ("act-closed-loop",)))
#: Closed-loop metrics reported, besides each concept's own.
CLOSED = ("z_displacement", "mean_speed", "path_length", "displacement_per_step")


def _p(row: dict, key: str = "p") -> str:
    """A p-value as a table cell: bold where it is at most `ALPHA` ("–" where the run had none)."""
    value = row.get(key)
    if value is None or not np.isfinite(value):
        return "–"
    return f"**{value:.3f}**" if value <= ALPHA else f"{value:.3f}"


def _scores(r: dict) -> str:
    """The cells shared by every table: controls' mean ± sd, N, z, p (with its minimum), Holm p
    ("–" for runs made before p-values)."""
    p = f"{_p(r)} (≥ {r['p_min']:.3f})" if "p" in r else "–"
    return (f"{r['random_mean']:+.3f} ± {r['random_std']:.3f} | {r.get('controls', '–')} | {r['z']:+.2f} | "
            f"{p} | {_p(r, 'p_holm')}")


SCORE_HEADER = "random clusters (mean ± sd) | N | z (if normal) | p, rank (min) | p, Holm over the grid"


def open_loop_table(rows: list[dict]) -> list[str]:
    lines = [f"| cluster @ value | measure | shift | {SCORE_HEADER} | says the concept (random) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        says = f"{r['says_concept']:.0%} ({r['random_says_concept']:.0%})" if r["words"] else "–"
        lines.append(f"| {r['steering']} | {r['measure']} ({'+' if r['expected_sign'] > 0 else '−'} expected) "
                     f"| {r['shift']:+.3f} | {_scores(r)} | {says} |")
    return lines


def closed_loop_table(statistics: dict) -> list[str]:
    lines = ["| cluster @ value | metric | shift from baseline [95 % CI], paired | random clusters (mean ± sd) | N | "
             "z (if normal) | p, rank (min) |", "|---|---|---|---|---|---|---|"]
    for name, scored in statistics["vs_random"].items():
        own = CONCEPTS[name.split("_")[0]][1]
        for metric in (own, *[m for m in CLOSED if m != own]):
            s, paired = scored[metric], statistics[name][metric]
            ci = f" [{paired['ci_low']:+.4f}, {paired['ci_high']:+.4f}]" if "ci_low" in paired else ""
            mark = "**" if metric == own else ""
            p = f"{_p(s)} (≥ {s['p_min']:.3f})" if "p" in s else "–"
            lines.append(f"| {name} | {mark}{metric}{mark} | {s['shift']:+.4f}{ci} | {s['random_mean']:+.4f} ± "
                         f"{s['random_std']:.4f} | {s.get('controls', '–')} | {s['z']:+.2f} | {p} |")
    return lines


def own_metric_rows(statistics: dict) -> list[dict]:
    """Each steering of a closed-loop run, scored on its concept's own metric (`plot_z`'s rows)."""
    rows = []
    for name, scored in statistics["vs_random"].items():
        _, metric, sign = CONCEPTS[name.split("_")[0]]
        paired = statistics[name][metric]
        rows.append({"steering": name, "measure": metric, "expected_sign": sign, **scored[metric],
                     "ci": (paired.get("ci_low"), paired.get("ci_high"))})
    return rows


def with_holm(rows: list[dict]) -> list[dict]:
    """The rows of one grid with ``p_holm``: Holm's correction over the grid's cells."""
    if not all("p" in r for r in rows):
        return rows
    return [{**r, "p_holm": float(h)} for r, h in zip(rows, holm([r["p"] for r in rows]))]


def grid_table(rows: list[dict]) -> list[str]:
    """One line per closed-loop steering: its own metric's shift, interval, random band, N, z and p."""
    lines = [f"| cluster @ value | metric | shift [95 % CI], paired | {SCORE_HEADER} |",
             "|---|---|---|---|---|---|---|---|"]
    for r in with_holm(rows):
        ci = f" [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]" if r["ci"][0] is not None else ""
        lines.append(f"| {r['steering']} | {r['measure']} ({'+' if r['expected_sign'] > 0 else '−'} expected) | "
                     f"{r['shift']:+.4f}{ci} | {_scores(r)} |")
    return lines


def plot_z(tables: dict[str, list[dict]], path: Path, protocol: str = "open-loop") -> Path:
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
        ax.set_title(f"{name}, {protocol}: does the cluster move its measure the expected way?", fontsize=9)
    return save_png(fig, path)


def plot_p(tables: dict[str, list[dict]], path: Path, protocol: str = "open-loop") -> Path:
    """Per recipe: each cell's rank p on its expected side as -log10(p); red where it holds
    after Holm's correction over the grid, orange where only uncorrected p <= alpha; a tick at
    the best p its N controls allow; dashed at alpha."""
    from nnsight_vla.plotting import figure, save_png

    fig = figure(12, 3.2 * len(tables))
    axes = np.atleast_1d(fig.subplots(len(tables), 1))
    for ax, (name, rows) in zip(axes, tables.items()):
        rows = with_holm(rows) if not all("p_holm" in r for r in rows) else rows
        height = -np.log10([r["p"] for r in rows])
        colors = ["tab:red" if r["p_holm"] <= ALPHA else "tab:orange" if r["p"] <= ALPHA else "tab:gray"
                  for r in rows]
        ax.bar(range(len(rows)), height, color=colors)
        ax.scatter(range(len(rows)), -np.log10([r["p_min"] for r in rows]), marker="_", color="black", s=60,
                   label="best p its N controls allow")
        ax.axhline(-np.log10(ALPHA), color="black", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(rows)), [f"{r['steering']} (N={r['controls']})" for r in rows], rotation=90, fontsize=7)
        ax.set_ylabel("-log10 p (rank, expected side)")
        ax.legend(fontsize=7, loc="upper right")
        ax.set_title(f"{name}, {protocol}: red holds after Holm over the grid, orange only uncorrected "
                     f"(dashed: p = {ALPHA})", fontsize=9)
    return save_png(fig, path)


def report(runs: Path, out: Path) -> Path:
    """Write ``results.md``, ``open_loop_z.png``, ``closed_loop_z.png``, each closed-loop run's
    trajectories and a copy of the explanation figure."""
    out.mkdir(parents=True, exist_ok=True)
    lines, tables, grids = ["# mini-openvla: clamping semantic clusters vs random clusters", ""], {}, {}
    for name, open_dir, closed_dirs in RUNS:
        lines += [f"## {name}", ""]
        summary = runs / open_dir / "summary.json"
        if summary.is_file():
            meta = json.loads((runs / open_dir / "meta.json").read_text())
            rows = json.loads(summary.read_text())
            if rows and "says_concept" not in rows[0]:  # a grid run before the per-cell runner
                rows = with_words(rows, meta.get("extras", meta.get("words")), meta["controls"])
            tables[name] = rows
            counts = sorted({r.get("controls", meta.get("controls")) for r in rows})
            lines += [f"### Open-loop: {meta['frames']} held-out scenes, instruction {meta['instruction']!r}, "
                      f"{' or '.join(map(str, counts))} random clusters per cell, forwards clamped: "
                      f"{meta.get('calls', 'all')}", "", *open_loop_table(rows), ""]
        done = [d for d in closed_dirs if (runs / d / "statistics.json").is_file()]
        runs_statistics = {d: json.loads((runs / d / "statistics.json").read_text()) for d in done}
        grid = [row for d in done for row in own_metric_rows(runs_statistics[d])]
        if len(done) > 1:
            grids[name] = grid
            lines += ["### Closed-loop, every size and value: each cluster on its own metric", "",
                      *grid_table(grid), ""]
        for d in done:
            settings = json.loads((runs / d / "run.json").read_text())["settings"]
            lines += [f"### Closed-loop: LIBERO {settings['suite']} task {settings['tasks']}, {settings['episodes']} "
                      f"init states, {settings['max_steps']} steps, instruction {settings['instruction']!r}", "",
                      *closed_loop_table(runs_statistics[d]), ""]
            rows = [json.loads(line) for line in (runs / d / "episodes.jsonl").read_text().splitlines()]
            plot_trajectories(rows, out / f"{d}-trajectories.png")
    for found, protocol in ((tables, "open-loop"), (grids, "closed-loop")):
        if found:
            plot_z(found, out / f"{protocol.replace('-', '_')}_z.png", protocol)
        scored = {name: rows for name, rows in found.items() if all("p" in r for r in rows)}
        if scored:
            plot_p(scored, out / f"{protocol.replace('-', '_')}_p.png", protocol)
    explained = runs / "explain" / "explain.png"
    if explained.is_file():
        shutil.copy(explained, out / "explain.png")
        shutil.copy(runs / "explain" / "explain.json", out / "explain.json")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return out / "results.md"


def grid_rows(run: Path) -> list[dict]:
    """The rows of an open-loop grid's finished cells (``cells/<cell>/row.json``; a cell rerun
    with more controls, ``<cell>+``, stands for it), each with Holm's p over those cells: the
    grid as far as it has run, also while it runs or after an interruption."""
    cells = {}
    for done in sorted(run.glob("cells/*/row.json")):
        cells[done.parent.name.rstrip("+")] = json.loads(done.read_text())  # "<cell>+" sorts after "<cell>"
    rows = list(cells.values())
    for row in rows:  # rescored: rows saved before z_against's tolerance for equal shifts read -inf
        row["z"] = z_score(row["shift"], row["random_mean"], row["random_std"], row["controls"])
    for row, corrected in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = float(corrected)
    return rows


def grid_page(run: Path, out: Path) -> Path:
    """One open-loop grid's page, ``<run name>.md`` (its table, with N, p and Holm p per cell)
    and its p plot, ``<run name>_p.png``, in ``out``; from the cells finished so far."""
    out.mkdir(parents=True, exist_ok=True)
    rows = grid_rows(run)
    settings = rows[0]["settings"]
    counts = sorted({r["controls"] for r in rows})
    png = plot_p({settings["model"]: rows}, out / f"{run.name}_p.png")
    lines = [f"# {settings['model']}, open-loop: {settings['frames']} held-out scenes, instruction "
             f"{settings['instruction']!r}, forwards clamped: {settings['calls']}", "",
             f"{len(rows)} cells, {' or '.join(map(str, counts))} random clusters each; p is the rank p-value on the "
             f"concept's expected side, Holm's correction is over these {len(rows)} cells (α = {ALPHA}). "
             f"Bold: p ≤ α. Plot: [{png.name}]({png.name}).", "", *open_loop_table(rows), ""]
    page = out / f"{run.name}.md"
    page.write_text("\n".join(lines))
    return page


def closed_page(run: Path, out: Path) -> Path:
    """One closed-loop run's page, ``<run name>.md`` (every steering against its random
    clusters, with N and the rank p), and its trajectories, ``<run name>-trajectories.png``."""
    out.mkdir(parents=True, exist_ok=True)
    settings = json.loads((run / "run.json").read_text())["settings"]
    statistics = json.loads((run / "statistics.json").read_text())
    rows = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    png = plot_trajectories(rows, out / f"{run.name}-trajectories.png")
    lines = [f"# {settings['model']['source']}, closed-loop: LIBERO {settings['suite']} task {settings['tasks']}, "
             f"{settings['episodes']} init states, {settings['max_steps']} steps, instruction "
             f"{settings['instruction']!r}", "",
             "Each steering's paired shift from the baseline against the shifts of its random clusters; p is the "
             "rank p-value on the concept's expected side for its own metric (bold), two-sided for the others. "
             f"Trajectories: [{png.name}]({png.name}).", "", *closed_loop_table(statistics), ""]
    page = out / f"{run.name}.md"
    page.write_text("\n".join(lines))
    return page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True,
                        help="the folder holding the experiment's run folders (with --grid: one open-loop grid's folder)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--grid", action="store_true", help="write only the page of the open-loop grid in --runs")
    parser.add_argument("--closed", action="store_true", help="write only the page of the closed-loop run in --runs")
    args = parser.parse_args(argv)
    page = grid_page if args.grid else closed_page if args.closed else report
    print(f"wrote {page(args.runs, args.out)}")


if __name__ == "__main__":
    main()
