"""Why a cluster does or does not steer: where the instruction's direction is readable (per-layer probes), its up-minus-down contrast, and each cluster's push along it.

    python -m nnsight_vla_openvla.mini.explain --out runs/mini/explain --value 8
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import frames as frame_files
from . import instructions

#: Forward calls read: the prefill (whose last position says the first word) and, for a
#: verbalising model, the first action forward (after its two words).
CALLS = {"verbalise": (0, 2), "act": (0,)}


def instructed(model: Any, scenes: np.ndarray, per_direction: int = 2, seed: int = 0,
               steering: Any = None) -> tuple[dict, list[str], np.ndarray]:
    """The residual after every layer at the last position of each read call, for
    ``per_direction`` held-out instructions per direction on every scene.

    Returns ``{(layer, call): [rows, width]}``, each row's direction word, and its scene index."""
    from nnsight_vla import Observation, Site, collect

    rng = np.random.default_rng(seed)
    pool = instructions.examples(held_out=True)
    chosen = []
    for direction in instructions.DIRECTIONS:
        mine = [e for e in pool if e.phrase[0] == direction]
        chosen += [mine[i] for i in rng.choice(len(mine), per_direction, replace=False)]
    # each scene gets the instructions in its own order, so that the probes' chance level
    # (labels shuffled across scenes, in row order) does not keep every label in place
    rows = [(scene, chosen[i]) for scene in scenes for i in rng.permutation(len(chosen))]
    obs = [Observation(scene, e.instruction) for scene, e in rows]
    calls = list(CALLS["verbalise" if model.config.phrase_tokens else "act"])
    sites = [Site(layer, "resid") for layer in range(model.spec.n_layers)]
    with model.steer(steering):
        acts = collect(model, obs, sites, calls=calls, positions="last", progress=True)
    features = {(site.layer, call): acts[site][:, i, -1].float().numpy() for site in sites
                for i, call in enumerate(calls)}
    labels = [e.phrase[0] for _, e in rows]
    groups = np.repeat(np.arange(len(scenes)), len(chosen))
    return features, labels, groups


def probe_table(features: dict, labels: list[str], groups: np.ndarray):
    """Per layer and call: how well a linear probe reads the instruction's direction on
    scenes it was not fitted on (`nnsight_vla.probes.fit_probes`, balanced accuracy)."""
    from nnsight_vla import Site
    from nnsight_vla.probes import fit_probes

    return fit_probes({(Site(layer, "resid"), call): x for (layer, call), x in features.items()},
                      {"direction": np.array(labels)}, groups, folds=min(4, len(set(groups))), inner_folds=2,
                      shuffles=1, progress=False)


def contrast(features: dict, labels: list[str], a: str = "up", b: str = "down") -> dict:
    """``{(layer, call): unit vector}``: the mean residual of ``a`` instructions minus that of ``b``."""
    labels = np.array(labels)
    out = {}
    for key, x in features.items():
        d = x[labels == a].mean(0) - x[labels == b].mean(0)
        out[key] = d / max(np.linalg.norm(d), 1e-12)
    return out


def pushes(model: Any, scenes: np.ndarray, clamps: dict[str, Any], directions: dict, call: int,
           instruction: str = "move the arm") -> dict[str, np.ndarray]:
    """``{name: [layers]}``: how far each clamp moves the residual along the contrast at each
    layer, at the last position of ``call`` of a neutral instruction, averaged over scenes
    (`separation` is how far apart "up" and "down" instructions are there)."""
    from nnsight_vla import Observation, Site, collect

    obs = [Observation(scene, instruction) for scene in scenes]
    sites = [Site(layer, "resid") for layer in range(model.spec.n_layers)]

    def residual(steering):
        with model.steer(steering):
            acts = collect(model, obs, sites, calls=[call], positions="last")
        return np.stack([acts[s][:, 0, -1].float().numpy() for s in sites], 1)  # [scenes, layers, width]

    base = residual(None)
    unit = np.stack([directions[layer, call] for layer in range(model.spec.n_layers)])  # [layers, width]
    return {name: ((residual(c) - base) * unit).sum(-1).mean(0) for name, c in clamps.items()}


def separation(features: dict, labels: list[str], directions: dict, a: str = "up", b: str = "down") -> dict:
    """Per (layer, call): the distance between the ``a`` and ``b`` means along the contrast."""
    labels = np.array(labels)
    return {key: float((x[labels == a].mean(0) - x[labels == b].mean(0)) @ directions[key])
            for key, x in features.items()}


def explain(model: Any, out: Path, value: float, size: int = 20, controls: int = 10, scenes_used: int = 6,
            per_direction: int = 2, seed: int = 0) -> dict:
    """Probes, contrast and cluster pushes on ``scenes_used`` scenes; writes ``explain.json`` and ``explain.png``."""
    from nnsight_vla import Clamp
    from nnsight_vla.steering import random_control

    from .experiment import concept_clusters

    out.mkdir(parents=True, exist_ok=True)
    every = frame_files.load()
    scenes = every[np.linspace(0, len(every) - 1, scenes_used).round().astype(int)]
    features, labels, groups = instructed(model, scenes, per_direction, seed)
    probes = probe_table(features, labels, groups)
    directions = contrast(features, labels)
    apart = separation(features, labels, directions)
    clusters = concept_clusters(model, [size])
    clamps = {f"{c}_{size}": Clamp(clusters[c, size], value) for c in ("up", "down")}
    clamps.update({f"random{k}": random_control(clamps[f"up_{size}"], seed + k, model) for k in range(controls)})
    calls = CALLS["verbalise" if model.config.phrase_tokens else "act"]
    moved = {call: pushes(model, scenes[: max(2, scenes_used // 3)], clamps, directions, call) for call in calls}
    n = model.spec.n_layers
    result = {
        "value": value, "size": size, "scenes": int(scenes_used), "instructions_per_direction": per_direction,
        "probe": {str(call): [float(probes.table.query(f"layer == {layer} and call == {call}")["score"].iloc[0])
                              for layer in range(n)] for call in calls},
        "probe_chance": {str(call): [float(probes.table.query(f"layer == {layer} and call == {call}")["chance"].iloc[0])
                                     for layer in range(n)] for call in calls},
        "separation": {str(call): [apart[layer, call] for layer in range(n)] for call in calls},
        "push": {str(call): {name: p.tolist() for name, p in moved[call].items()} for call in calls},
    }
    (out / "explain.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "explain.png")
    return result


def plot(result: dict, path: Path) -> Path:
    """Left: probe accuracy per layer (per call). Then per call: each cluster's push along the
    up-minus-down contrast per layer, against random clusters and the instructions' own gap."""
    from nnsight_vla.plotting import figure, save_png

    calls = list(result["probe"])
    fig = figure(5 + 5.5 * len(calls), 4)
    axes = fig.subplots(1, 1 + len(calls))
    for call in calls:
        line, = axes[0].plot(result["probe"][call], label=f"call {call}")
        axes[0].plot(result["probe_chance"][call], linestyle=":", color=line.get_color())
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("balanced accuracy (held-out scenes)")
    axes[0].set_title("direction of the instruction, linear probe\n(dotted: shuffled-label chance)", fontsize=9)
    axes[0].legend(fontsize=8)
    for ax, call in zip(axes[1:], calls):
        pushes_ = result["push"][call]
        randoms = np.array([v for k, v in pushes_.items() if k.startswith("random")])
        layers = np.arange(randoms.shape[1])
        gap = np.array(result["separation"][call])
        ax.plot(layers, gap, color="black", linestyle="--", label="'up' minus 'down' instruction")
        ax.plot(layers, -gap, color="black", linestyle=":", linewidth=0.8)
        ax.fill_between(layers, randoms.mean(0) - 2 * randoms.std(0), randoms.mean(0) + 2 * randoms.std(0),
                        color="tab:blue", alpha=0.25, label=f"{len(randoms)} random clusters (mean ± 2 sd)")
        for name, color in (("up", "tab:red"), ("down", "tab:green")):
            key = next(k for k in pushes_ if k.startswith(f"{name}_"))
            ax.plot(layers, pushes_[key], color=color, label=f"{key} clamped")
        ax.axhline(0, color="gray", linewidth=0.5)
        ax.set_xlabel("layer")
        ax.set_ylabel("shift of the residual along up−down")
        where = "prompt's last position (says the 1st word)" if call == "0" else f"forward {call} (1st action token)"
        ax.set_title(f"clamp at {result['value']:g}, neutral instruction, {where}", fontsize=9)
        ax.legend(fontsize=7)
    return save_png(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="mini-openvla")
    parser.add_argument("--value", type=float, default=8.0)
    parser.add_argument("--size", type=int, default=20)
    parser.add_argument("--controls", type=int, default=10)
    parser.add_argument("--scenes", type=int, default=6)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import nnsight_vla

    torch.manual_seed(0)
    result = explain(nnsight_vla.load(args.model), args.out, args.value, args.size, args.controls, args.scenes)
    for call in result["probe"]:
        best = int(np.argmax(result["probe"][call]))
        print(f"call {call}: direction best read at layer {best} ({result['probe'][call][best]:.2f});"
              f" last layer: instructions' gap {result['separation'][call][-1]:.2f}, up clamp pushes"
              f" {result['push'][call][f'up_{args.size}'][-1]:+.2f}, down {result['push'][call][f'down_{args.size}'][-1]:+.2f}")
    print(f"wrote {args.out / 'explain.png'}")


if __name__ == "__main__":
    main()
