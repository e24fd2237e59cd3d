"""Plots of an evaluation: end-effector trajectories per condition, metric means with intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plotting import figure, save_png
from .metrics import METRICS

COLORS = {"baseline": "tab:gray", "steered": "tab:red", "random": "tab:blue"}
#: Colours of named steerings, in the order they first appear.
NAMED = ("tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def is_control(condition: str) -> bool:
    """A random control: ``random``, ``random3`` or ``up/random3``."""
    return condition.rsplit("/", 1)[-1].startswith("random")


def condition_color(condition: str, named: list[str] | None = None) -> str:
    """The plot colour of a condition.

    Gray for the baseline, blue for random controls, red for ``steered``, and a colour per
    named steering (by its place in ``named``).
    """
    if is_control(condition):
        return COLORS["random"]
    if condition in COLORS or not named or condition not in named:
        return COLORS.get(condition, "tab:green")
    return NAMED[named.index(condition) % len(NAMED)]


def _named(rows: list[dict]) -> list[str]:
    return [c for c in dict.fromkeys(r["condition"] for r in rows) if c not in COLORS and not is_control(c)]


def plot_trajectories(rows: list[dict], path: Path) -> Path:
    """Top (x-y) and side (x-z) views of every episode's end-effector path, by condition.

    A failed episode's path (up to the failure) is dashed and ends in a cross.
    """
    fig = figure(10, 4.5)
    axes = fig.subplots(1, 2)
    labelled, named = set(), _named(rows)
    for row in sorted(rows, key=lambda r: not is_control(r["condition"])):  # controls first, steerings on top
        p = np.asarray(row["path"], dtype=np.float64).reshape(-1, 3)
        if not len(p):
            continue  # failed before its first observation
        color = condition_color(row["condition"], named)
        group = "random controls" if is_control(row["condition"]) and row["condition"] != "random" else row["condition"]
        label = None if group in labelled else group
        labelled.add(group)
        failed = row.get("error") is not None
        style = {"color": color, "alpha": 0.4 if is_control(row["condition"]) else 0.9,
                 "linestyle": "--" if failed else "-"}
        axes[0].plot(p[:, 0], p[:, 1], label=label, **style)
        axes[1].plot(p[:, 0], p[:, 2], **style)
        if failed:
            axes[0].plot(p[-1:, 0], p[-1:, 1], marker="x", color=color)
            axes[1].plot(p[-1:, 0], p[-1:, 2], marker="x", color=color)
    for ax, (a, b) in zip(axes, (("x", "y"), ("x", "z"))):
        ax.set_xlabel(f"{a} (m)")
        ax.set_ylabel(f"{b} (m)")
        ax.set_title(f"end effector, {a}-{b}")
    if labelled:
        axes[0].legend()
    else:  # every episode failed before its first observation
        axes[0].text(0.5, 0.5, "no path: every episode failed before its first step", ha="center",
                     transform=axes[0].transAxes)
    return save_png(fig, path)


def plot_metrics(rows: list[dict], path: Path, seed: int = 0) -> Path:
    """Mean of each metric per condition, with 95% bootstrap intervals of the mean.

    Failed episodes count in success, as failures, and are left out of the other metrics.
    """
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    rng = np.random.default_rng(seed)
    fig = figure(2.6 * len(METRICS), 3.2)
    axes = fig.subplots(1, len(METRICS))
    for ax, metric in zip(axes, METRICS):
        for i, condition in enumerate(conditions):
            values = np.array([float(r[metric]) for r in rows if r["condition"] == condition
                               and (metric == "success" or r.get("error") is None)])
            if not len(values):
                continue
            boot = values[rng.integers(0, len(values), (2000, len(values)))].mean(1)
            low, high = np.quantile(boot, [0.025, 0.975])
            ax.bar(i, values.mean(), color=condition_color(condition, _named(rows)))
            ax.errorbar(i, values.mean(), yerr=[[values.mean() - low], [high - values.mean()]], color="black", capsize=3)
        ax.set_xticks(range(len(conditions)), conditions, rotation=30)
        ax.set_title(metric, fontsize=9)
    return save_png(fig, path)
