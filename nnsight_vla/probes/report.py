"""`ProbeResults`: the probe table, its CSV/JSON/PNG files and the probes' directions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..paths import probed_folder, writing
from ..plotting import figure, save_png
from ..sites import Site

COLUMNS = ["tower", "kind", "layer", "call", "target", "task", "metric", "score", "score_low",
           "score_high", "chance", "chance_low", "chance_high", "alpha", "rows", "episodes"]
TEXT = {"tower": str, "kind": str, "target": str, "task": str, "metric": str}
METRICS = {"regression": "r2", "classification": "balanced_accuracy"}
R2_FLOOR = -0.5  # the plot's lowest R²: chance-level R² of a held-out fold can be far below 0


def t_interval(scores: Any, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``scores`` (one per fold) and its two-sided t-interval.

    Example:
        >>> t_interval([0.8, 0.9, 1.0])
        (0.9, 0.651..., 1.148...)
    """
    from scipy import stats

    scores = np.asarray(scores, dtype=np.float64)
    mean = float(scores.mean())
    if len(scores) < 2:
        return mean, np.nan, np.nan
    quantile = stats.t.ppf(0.5 + confidence / 2, len(scores) - 1)
    half = quantile * scores.std(ddof=1) / np.sqrt(len(scores))
    return mean, float(mean - half), float(mean + half)


def table_row(site: Site, call: int, target: str, task: str, scores, chance, alpha,
              episodes) -> dict:
    """A table row from the outer folds' ``scores`` and the ``[shuffles, folds]`` ``chance`` scores.

    Chance is the mean and t-interval of the folds' means over shuffles.
    """
    score, low, high = t_interval(scores)
    chance, c_low, c_high = t_interval(np.mean(chance, 0)) if len(chance) else (np.nan,) * 3
    return {"tower": site.tower, "kind": site.kind, "layer": site.layer, "call": int(call),
            "target": target, "task": task, "metric": METRICS[task], "score": score,
            "score_low": low, "score_high": high, "chance": chance, "chance_low": c_low,
            "chance_high": c_high, "alpha": float(alpha), "rows": len(episodes),
            "episodes": len(np.unique(episodes))}


@dataclass
class ProbeResults:
    """Probes per (tower, kind, layer, call, target): scores, chance levels and directions.

    Attributes:
        table: One row per probe; columns `COLUMNS` (``score`` is R² or balanced accuracy,
            ``alpha`` the regularisation chosen on all rows: ridge's alpha, 1/C for logistic).
        probes: ``(Site, call, target) -> (weights [1 or classes, width], classes or None)``
            in raw activation space (absent after `load`).
        settings: Folds, alphas, shuffles and seed of the fit.

    Example:
        >>> res = fit_probes(features, targets, episodes)
        >>> res.save("runs/probes")                     # probes.csv, probes.json, probes.png
        >>> ProbeResults.load("runs/probes").table
    """

    table: pd.DataFrame
    probes: dict = field(default_factory=dict, repr=False)
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: list[dict], probes: dict, settings: dict) -> ProbeResults:
        """Results from `table_row` rows, the table sorted by tower, kind, layer and call."""
        table = pd.DataFrame(rows, columns=COLUMNS)
        table = table.sort_values(["tower", "kind", "layer", "call"], kind="stable")
        return cls(table.reset_index(drop=True), probes, settings)

    def direction(self, site: Site | str, target: str, *, call: int | None = None,
                  label: Any = None) -> torch.Tensor:
        """The probe's weight mapped into ``site``'s raw activations: float32 ``[width]``.

        Moving an activation along it raises the prediction (ridge), or the logit of the
        second class (two classes; ``label=`` the first class gives the opposite sign), or
        the logit of ``label`` (required for more classes). Not unit-normed.

        Example:
            >>> d = res.direction(Site(12, "resid"), "gripper", call=0)
        """
        site = Site.of(site)
        calls = sorted(c for s, c, t in self.probes if s == site and t == target)
        if not calls:
            known = sorted({f"{s}: {t}" for s, _, t in self.probes})
            hint = f"known: {known[:8]}{' ...' if len(known) > 8 else ''}" if known else \
                "results loaded from files keep no directions; refit with fit_probes"
            raise InputError(f"no probe of target {target!r} at {site}; {hint}.")
        if call is None and len(calls) > 1:
            raise InputError(f"{site} has probes at calls {calls}; pass call= one of them.")
        call = calls[0] if call is None else call
        if call not in calls:
            raise InputError(f"no probe at {site}, call {call}; calls with probes: {calls}.")
        weights, classes = self.probes[(site, call, target)]
        if classes is None or (len(weights) == 1 and label in (None, classes[1])):
            return weights[0].clone()
        if label not in classes:
            raise InputError(f"target {target!r} has classes {classes}; pass label= one of them.")
        return -weights[0].clone() if len(weights) == 1 else weights[classes.index(label)].clone()

    def save(self, folder: str | Path) -> Path:
        """Write ``probes.csv``, ``probes.json`` (settings and rows) and ``probes.png``."""
        folder = probed_folder(folder)
        with writing(folder, "probe results"):
            self.table.to_csv(folder / "probes.csv", index=False)
            records = json.loads(self.table.to_json(orient="records"))
            meta = {"settings": self.settings, "rows": records}
            (folder / "probes.json").write_text(json.dumps(meta, indent=1))
            self.plot(folder / "probes.png")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ProbeResults:
        """The table and settings written by `save` (no directions: those need the fit)."""
        folder = Path(folder)
        if not (folder / "probes.csv").is_file():
            raise InputError(f"{folder} has no probes.csv; pass a folder that "
                             "ProbeResults.save wrote.")
        table = pd.read_csv(folder / "probes.csv", dtype=TEXT)
        meta = folder / "probes.json"
        settings = json.loads(meta.read_text()).get("settings", {}) if meta.is_file() else {}
        return cls(table[COLUMNS], {}, settings)

    def plot(self, path: str | Path) -> Path:
        """Score by layer, one panel per target, a line per (tower, kind, call), chance shaded."""
        from matplotlib.ticker import MaxNLocator

        targets = list(dict.fromkeys(self.table["target"]))
        cols = min(3, len(targets))
        rows = -(-len(targets) // cols)
        fig = figure(4.2 * cols + 2.2, 3.0 * rows)
        grid = fig.add_gridspec(rows, cols + 1, width_ratios=[1] * cols + [0.5])
        groups = list(dict.fromkeys(zip(self.table["tower"], self.table["kind"])))
        handles = {}
        for i, target in enumerate(targets):
            ax = fig.add_subplot(grid[i // cols, i % cols])
            part = self.table[self.table["target"] == target]
            band = part.groupby("layer").agg({"chance_low": "min", "chance_high": "max"})
            handles["chance (95% CI)"] = ax.fill_between(
                band.index, band["chance_low"], band["chance_high"].clip(upper=1.0), color="0.85")  # scores <= 1
            for g, (tower, kind) in enumerate(groups):
                same = (part["tower"] == tower) & (part["kind"] == kind)
                handles.update(_lines(ax, part[same], g))
            metric = part["metric"].iloc[0]
            low, high = ax.get_ylim()
            if metric == "r2" and high > R2_FLOOR:
                ax.set_ylim(max(R2_FLOOR, low), high)
            ax.set(title=target, xlabel="layer", ylabel=metric)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        legend = fig.add_subplot(grid[:, -1])
        legend.axis("off")
        legend.legend(list(handles.values()), list(handles), loc="center left", fontsize=7,
                      frameon=False)
        return save_png(fig, path)


def _lines(ax, lines: pd.DataFrame, group: int) -> dict:
    """One line per call of one (tower, kind); returns the legend handles by line name.

    A dash style per group; its calls' colours along a colour map (a single call: one plain
    colour).
    """
    from matplotlib import colormaps

    calls = sorted(lines["call"].unique())
    cmap = colormaps[("viridis", "plasma", "cividis", "magma")[group % 4]]
    handles = {}
    for j, call in enumerate(calls):
        line = lines[lines["call"] == call].sort_values("layer")
        tower, kind = line["tower"].iloc[0], line["kind"].iloc[0]
        name = f"{tower}.{kind}" + (f" call {call}" if len(calls) > 1 else "")
        color = cmap(0.85 * j / (len(calls) - 1)) if len(calls) > 1 else \
            ("black", "C3", "C1", "C2")[group % 4]
        style = ("-", "--", ":", "-.")[group % 4]
        (handles[name],) = ax.plot(line["layer"], line["score"], style, color=color, marker=".")
    return handles
