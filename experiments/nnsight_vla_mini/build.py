"""Build the mini-openvla adapters: render LIBERO frames, train each recipe, check it, write adapters, frames and metrics.

    python -m nnsight_vla_mini.build --out runs/mini            # both recipes, ~10 min on 2 cores
    python -m nnsight_vla_mini.build --out runs/mini --ship     # and copy them into the package
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from nnsight_vla_openvla.mini import BUILTINS, adapter_file, instructions
from nnsight_vla_openvla.mini import DATA as ADAPTERS

from . import DATA, frames

#: Frames trained on and frames checked on (other initial states of other tasks).
TRAIN_TASKS, CHECK_TASKS = (0, 1, 2, 3), (4, 5)


def plot_loss(logs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, log in logs.items():
        loss = np.asarray(log["loss"])
        smooth = np.convolve(loss, np.ones(10) / 10, mode="valid")
        ax.plot(np.arange(len(smooth)) + 10, smooth, label=f"{name} ({log['settings']['recipe']})")
    ax.set(xlabel="step", ylabel="cross-entropy (10-step mean)", yscale="log", title="mini-openvla training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build(out: Path, names: list[str], settings: dict, episodes: int, ship: bool, frames_file: Path | None) -> dict:
    import nnsight_vla

    from . import check, lora_train, train

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if frames_file is not None:
        every = frames.load(frames_file)
        trained, checked = every[: len(TRAIN_TASKS) * episodes], every[len(TRAIN_TASKS) * episodes:]
    else:
        trained = frames.render(tasks=TRAIN_TASKS, episodes=episodes)
        checked = frames.render(tasks=CHECK_TASKS, episodes=2)
    frames.save(out / "frames.npz", np.concatenate([trained, checked]))
    rendered = time.perf_counter() - start
    base = nnsight_vla.load("smol-openvla")
    held_out = instructions.examples(held_out=True)[::3]  # every template, synonym and speed; a third of the pairs
    report, logs = {"seconds_render": rendered, "frames_trained": len(trained), "frames_checked": len(checked)}, {}
    for name in names:
        config = train.Settings(recipe=BUILTINS[name], **settings)
        adapters, log = train.train(base, trained, config)
        path = lora_train.save(out / f"{name}.safetensors", adapters, {"recipe": config.recipe})
        model = nnsight_vla.load(name, adapters=str(path))
        result = {"train": {k: v for k, v in log.items() if k != "loss"}, "final_loss": float(np.mean(log["loss"][-10:])),
                  "adapter_bytes": path.stat().st_size,
                  "held_out": check.accuracy(model, checked, held_out)}
        if config.recipe == "verbalise":
            result["follows_words"] = check.follows_words(model, checked, held_out[::2])
        report[name], logs[name] = result, log
        print(json.dumps({name: result}, indent=1))
        print(f"{name}: trained in {log['seconds_total']:.0f} s ({log['seconds_frozen_layers']:.0f} s caching the frozen "
              f"layers), {log['examples_per_second']:.1f} examples/s")
        del model
    report["seconds_total"] = time.perf_counter() - start
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    plot_loss(logs, out / "loss.png")
    if ship:
        ADAPTERS.mkdir(exist_ok=True)
        for name in names:
            shutil.copy(out / f"{name}.safetensors", adapter_file(name))
        shutil.copy(out / "frames.npz", frames.SHIPPED)
        shutil.copy(out / "metrics.json", DATA / "metrics.json")
        shutil.copy(out / "loss.png", DATA / "loss.png")
    return report


def main(argv: list[str] | None = None) -> None:
    from .train import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for adapters, frames, metrics.json, loss.png")
    parser.add_argument("--models", default=",".join(BUILTINS), help=f"which of {list(BUILTINS)}")
    parser.add_argument("--episodes", type=int, default=4, help="initial states rendered per training task")
    parser.add_argument("--frames", type=Path, help="a frames file written before (skips rendering)")
    parser.add_argument("--ship", action="store_true", help="copy the results into the package's data folder")
    for field in fields(Settings):
        if field.name != "recipe":
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = args.models.split(",")
    unknown = sorted(set(names) - set(BUILTINS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(BUILTINS)}")
    settings = {f.name: getattr(args, f.name) for f in fields(Settings) if f.name != "recipe"}
    build(args.out, names, settings, args.episodes, args.ship, args.frames)


if __name__ == "__main__":
    main()
