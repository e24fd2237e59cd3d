"""Why a cluster does or does not steer: where the instruction's direction is readable (per-layer probes, the logit lens), its up-minus-down contrast, and each cluster's push along it.

    python -m nnsight_vla_mini.explain --out runs/mini/explain --value 8
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
from nnsight_vla_openvla.mini import instructions

#: Forward calls read: the prefill (whose last position says the first word, or for the act
#: recipe emits the x action), the first action forward of a verbalising model (after its
#: two words), and the forward that emits the z action (up/down).
CALLS = {"verbalise": (0, 2, 4), "act": (0, 2)}


def z_call(model: Any) -> int:
    """The forward whose last position emits the z (up/down) action token."""
    return model.action_calls("vlm")[2]


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
    calls = list(CALLS["verbalise" if model.config.phrases is not None else "act"])
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


def neutral_residuals(model: Any, scenes: np.ndarray, clamps: dict[str, Any], calls: list[int],
                      instruction: str = "move the arm") -> dict[str, dict[int, np.ndarray]]:
    """``{name: {call: [scenes, layers, width]}}``: the residual after every layer at the last
    position of each call, on a neutral instruction, unsteered (``"baseline"``) and under each clamp."""
    from nnsight_vla import Observation, Site, collect

    obs = [Observation(scene, instruction) for scene in scenes]
    sites = [Site(layer, "resid") for layer in range(model.spec.n_layers)]
    out = {}
    for name, steering in {"baseline": None, **clamps}.items():
        with model.steer(steering):
            acts = collect(model, obs, sites, calls=calls, positions="last")
        out[name] = {call: np.stack([acts[s][:, i, -1].float().numpy() for s in sites], 1)
                     for i, call in enumerate(calls)}
    return out


def pushes(residuals: dict[str, dict[int, np.ndarray]], directions: dict, call: int) -> dict[str, np.ndarray]:
    """``{name: [layers]}``: how far each clamp moves the residual along the contrast at each
    layer, at ``call``, averaged over scenes (`separation` is how far apart "up" and "down"
    instructions are there)."""
    base = residuals["baseline"][call]
    unit = np.stack([directions[layer, call] for layer in range(base.shape[1])])  # [layers, width]
    return {name: ((r[call] - base) * unit).sum(-1).mean(0) for name, r in residuals.items() if name != "baseline"}


def word_margin(model: Any, x: np.ndarray, a: str = " up", b: str = " down") -> np.ndarray:
    """Per row: the logit lens's logit of the word ``a`` minus that of ``b``."""
    from nnsight_vla import InputError
    from nnsight_vla.lens.logit_lens import read_out

    ids = [model.tokenizer.encode(w, add_special_tokens=False) for w in (a, b)]
    if any(len(i) != 1 for i in ids):
        raise InputError(f"{a!r} and {b!r} must be one token each in this vocabulary, not {ids}; pick other words.")
    logits = read_out(model, x)
    return (logits[..., ids[0][0]] - logits[..., ids[1][0]]).numpy()


def expected_action(model: Any, x: np.ndarray) -> np.ndarray:
    """Per row: the action value the logit lens reads, the mean of the action-token bins'
    centres under the softmax over action tokens alone (in [-1, 1])."""
    from nnsight_vla.lens.logit_lens import read_out

    ids = model.spec.action_token_ids
    centres = torch.from_numpy(np.asarray(model.action_tokenizer.decode(np.array(ids)), dtype=np.float32))
    probs = read_out(model, x)[..., ids.start:ids.stop].softmax(-1)
    return (probs * centres).sum(-1).numpy()


def lens_readings(model: Any, features: dict, labels: list[str], residuals: dict, n_layers: int) -> dict:
    """Per layer, the logit lens at the word position (call 0: logit " up" minus " down") and
    at the z action's forward (its read value): the mean over "up" and over "down"
    instructions, and on the neutral instruction unsteered and under each clamp."""
    labels = np.array(labels)
    readers = {"0": (word_margin, 0), "z": (expected_action, z_call(model))}
    out = {}
    for key, (reader, call) in readers.items():
        if model.config.phrases is None and key == "0":
            continue  # the act recipe says no word
        rows = {f"{d} instructions": np.array([reader(model, features[layer, call][labels == d]).mean()
                                                for layer in range(n_layers)]) for d in ("up", "down")}
        rows.update({name: reader(model, r[call]).mean(0) for name, r in residuals.items()})
        out[key] = {name: v.tolist() for name, v in rows.items()}
    return out


def separation(features: dict, labels: list[str], directions: dict, a: str = "up", b: str = "down") -> dict:
    """Per (layer, call): the distance between the ``a`` and ``b`` means along the contrast."""
    labels = np.array(labels)
    return {key: float((x[labels == a].mean(0) - x[labels == b].mean(0)) @ directions[key])
            for key, x in features.items()}


def explain(model: Any, out: Path, value: float, size: int = 20, controls: int = 10, scenes_used: int = 6,
            per_direction: int = 2, seed: int = 0) -> dict:
    """Probes, contrast, cluster pushes and the logit lens on ``scenes_used`` scenes; writes
    ``explain.json`` and ``explain.png``."""
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
    calls = CALLS["verbalise" if model.config.phrases is not None else "act"]
    residuals = neutral_residuals(model, scenes[: max(2, scenes_used // 3)], clamps, list(calls))
    moved = {call: pushes(residuals, directions, call) for call in calls}
    n = model.spec.n_layers
    result = {
        "value": value, "size": size, "scenes": int(scenes_used), "instructions_per_direction": per_direction,
        "probe": {str(call): [float(probes.table.query(f"layer == {layer} and call == {call}")["score"].iloc[0])
                              for layer in range(n)] for call in calls},
        "probe_chance": {str(call): [float(probes.table.query(f"layer == {layer} and call == {call}")["chance"].iloc[0])
                                     for layer in range(n)] for call in calls},
        "separation": {str(call): [apart[layer, call] for layer in range(n)] for call in calls},
        "push": {str(call): {name: p.tolist() for name, p in moved[call].items()} for call in calls},
        "lens": lens_readings(model, features, labels, residuals, n),
        "z_call": z_call(model),
    }
    (out / "explain.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "explain.png")
    return result


def plot(result: dict, path: Path) -> Path:
    """Top: probe accuracy per layer (per call), then per call each cluster's push along the
    up-minus-down contrast per layer, against random clusters and the instructions' own gap.
    Bottom: the logit lens per layer at the word position and at the z action's forward."""
    from nnsight_vla.plotting import figure, save_png

    calls = list(result["probe"])
    lens = result.get("lens", {})
    columns = 1 + len(calls)
    fig = figure(5.5 * columns, 4 * (1 + bool(lens)))
    axes = np.atleast_2d(fig.subplots(1 + bool(lens), columns))
    for call in calls:
        line, = axes[0, 0].plot(result["probe"][call], label=f"call {call}")
        axes[0, 0].plot(result["probe_chance"][call], linestyle=":", color=line.get_color())
    axes[0, 0].set_xlabel("layer")
    axes[0, 0].set_ylabel("balanced accuracy (held-out scenes)")
    axes[0, 0].set_title("direction of the instruction, linear probe\n(dotted: shuffled-label chance)", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    for ax, call in zip(axes[0, 1:], calls):
        pushes_ = result["push"][call]
        layers = np.arange(len(result["separation"][call]))
        gap = np.array(result["separation"][call])
        ax.plot(layers, gap, color="black", linestyle="--", label="'up' minus 'down' instruction")
        ax.plot(layers, -gap, color="black", linestyle=":", linewidth=0.8)
        _random_band(ax, layers, pushes_)
        for name, color in (("up", "tab:red"), ("down", "tab:green")):
            key = next(k for k in pushes_ if k.startswith(f"{name}_"))
            ax.plot(layers, pushes_[key], color=color, label=f"{key} clamped")
        ax.axhline(0, color="gray", linewidth=0.5)
        ax.set_xlabel("layer")
        ax.set_ylabel("shift of the residual along up−down")
        ax.set_title(f"clamp at {result['value']:g}, neutral instruction, {_where(call, result)}", fontsize=9)
        ax.legend(fontsize=7)
    titles = {"0": ("logit ' up' − logit ' down'", "the prompt's last position (says the 1st word)"),
              "z": ("z action read (bins' mean, in [-1, 1])", f"forward {result.get('z_call')} (emits the z action)")}
    for i, (key, readings) in enumerate(lens.items()):
        ax = axes[1, i]
        layers = np.arange(len(readings["baseline"]))
        _random_band(ax, layers, readings)
        for name, style in (("up instructions", ("tab:red", "--")), ("down instructions", ("tab:green", "--")),
                            ("baseline", ("black", "-"))):
            ax.plot(layers, readings[name], color=style[0], linestyle=style[1], label=name)
        for name, color in (("up", "tab:red"), ("down", "tab:green")):
            key_ = next(k for k in readings if k.startswith(f"{name}_"))
            ax.plot(layers, readings[key_], color=color, label=f"{key_} clamped (neutral)")
        ax.set_xlabel("layer")
        ax.set_ylabel(titles[key][0])
        ax.set_title(f"logit lens at {titles[key][1]}", fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes[1, len(lens):] if lens else []:
        ax.axis("off")
    return save_png(fig, path)


def _random_band(ax: Any, layers: np.ndarray, series: dict) -> None:
    randoms = np.array([v for k, v in series.items() if k.startswith("random")])
    ax.fill_between(layers, randoms.mean(0) - 2 * randoms.std(0), randoms.mean(0) + 2 * randoms.std(0),
                    color="tab:blue", alpha=0.25, label=f"{len(randoms)} random clusters (mean ± 2 sd)")


def _where(call: str, result: dict) -> str:
    if call == "0":
        return "prompt's last position"
    return f"forward {call}" + (" (emits the z action)" if int(call) == result.get("z_call") else "")


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
    for key, readings in result["lens"].items():
        print(f"logit lens {'word margin up-down' if key == '0' else 'z action'}, last layer: "
              + ", ".join(f"{name} {v[-1]:+.2f}" for name, v in readings.items() if not name.startswith("random")))
    print(f"wrote {args.out / 'explain.png'}")


if __name__ == "__main__":
    main()
