"""The ``eval`` command: a closed-loop LIBERO evaluation from `EvalConfig`'s options, with ``--steer``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError, VLAError


def _steer_spec(spec: str) -> tuple[str, str, float]:
    """``FILE.yaml[#NAME]:VALUE`` -> (file, cluster name, value), checked against the file.

    The check needs no model: the file exists, and holds that cluster, or exactly one without
    #NAME.
    """
    import yaml

    from ..errors import InputError

    path, _, value = spec.rpartition(":")
    path, _, name = path.partition("#")
    if not path or not value:
        raise InputError(f"--steer {spec!r} is not FILE.yaml[#NAME]:VALUE, e.g. clusters.yaml#up_10:4.0.")
    try:
        value = float(value)
    except ValueError as err:
        raise InputError(f"--steer {spec!r}: the clamp value {value!r} is not a number.") from err
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a folder, not a YAML file" if file.is_dir() else "does not exist"
        raise InputError(
            f"--steer: no such file {path} (it {what}); write clusters with "
            f"`nnsight-vla clusters TABLE --concept WORD --out {path}`, or fix the path."
        )
    try:
        entries = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise InputError(f"--steer: {path} is not a readable YAML file ({err}).") from err
    if not isinstance(entries, dict) or not entries:
        raise InputError(
            f"--steer: {path} holds no clusters (a YAML mapping name -> cluster); write them with "
            f"`nnsight-vla clusters TABLE --concept WORD --out {path}`."
        )
    names = [str(n) for n in entries]
    if not name:
        if len(names) != 1:
            raise InputError(f"--steer: {path} holds clusters {names}; pick one with {path}#NAME:{value}.")
        name = names[0]
    elif name not in names:
        raise InputError(
            f"--steer: {path} has no cluster {name!r}; it has {names}: pass one as {path}#NAME:{value}."
        )
    return str(file), name, value


def parse_steer(spec: str, model) -> object:
    """``FILE.yaml[#NAME]:VALUE`` -> a Clamp of that cluster (the file's only one without #NAME)."""
    from ..neurons import NeuronCluster
    from ..steering import Clamp

    path, name, value = _steer_spec(spec)
    cluster = NeuronCluster.from_yaml(path, name, d_mlp=model.spec.d_mlp, n_layers=model.spec.n_layers)
    return Clamp(cluster, value)


def _print_summary(result) -> None:
    """Each condition's metric means, then the success rate per task and condition."""
    from ..eval.metrics import METRICS

    for condition, means in result.summary.items():
        values = "  ".join(f"{k} {'-' if means[k] is None else format(means[k], '.4g')}" for k in METRICS)
        failed = f", {means['failed']} failed" if means["failed"] else ""
        print(f"{condition:9s} {values}  ({means['episodes']} episodes{failed})")
    for name, scored in result.statistics.get("vs_random", {}).items():
        print(f"{name} vs its {scored['success']['controls']} random controls, z: "
              + "  ".join(f"{k} {scored[k]['z']:+.2f}" for k in METRICS if k != "success"))
    table = result.per_task
    conditions = list(table)
    print("success rate per task (failed episodes count as failures):")
    print("task  " + "  ".join(f"{c:>16s}" for c in conditions))
    for task in next(iter(table.values()), {}):
        cells = []
        for condition in conditions:
            cell = table[condition][task]
            failed = f", {cell['failed']} failed" if cell["failed"] else ""
            cells.append(f"{cell['success_rate']:.2f} of {cell['episodes']}{failed}".rjust(16))
        print(f"{task:<4d}  " + "  ".join(cells))


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``eval`` options: one per `EvalConfig` field, with its default and help."""
    from ..eval.config import EvalConfig

    for item in dataclasses.fields(EvalConfig):
        flag = item.metadata["flag"]
        if flag == "":
            continue
        flag = flag or "--" + item.name.replace("_", "-")
        if item.type in ("bool", bool):
            parser.add_argument(flag, dest=item.name, action="store_true", help=item.metadata["help"])
        elif item.name == "tasks":
            parser.add_argument(flag, dest=item.name, default=",".join(map(str, item.default)),
                                help=item.metadata["help"] + ", comma-separated, e.g. 0,1")
        else:
            kind = int if "int" in str(item.type) else str
            parser.add_argument(flag, dest=item.name, type=kind, default=item.default, help=item.metadata["help"])


def eval_config(args) -> Any:
    """The `EvalConfig` of the ``eval`` command's options (checked before the model loads)."""
    from ..eval.config import EvalConfig

    try:
        tasks = [int(t) for t in args.tasks.split(",")]
    except ValueError as err:
        raise InputError(f"--tasks {args.tasks!r} must be comma-separated ints, e.g. 0,1.") from err
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig) if f.metadata["flag"] != ""}
    return EvalConfig(**{**options, "tasks": tasks})


def eval_command(args) -> None:
    """Run the ``eval`` command: evaluate the model, then print the summary.

    Options, ``--steer`` and ``--out`` are checked before the model loads; Ctrl-C exits with 130
    and says how to ``--resume``. Raises `VLAError` when every episode of a condition failed.
    """
    config = eval_config(args)
    if args.steer is not None:
        _steer_spec(args.steer)  # a missing file or cluster fails before the model loads
    from ..paths import probed_folder

    probed_folder(args.out, create=False, what="--out folder")  # nor is anything created yet

    from ..eval import evaluate
    from ..registry import load

    model = load(args.model)
    steering = None if args.steer is None else parse_steer(args.steer, model)
    try:
        result = evaluate(model, config, steering=steering, out_dir=args.out, resume=args.resume)
    except KeyboardInterrupt:
        episodes = args.out / "episodes.jsonl"
        done = sum(1 for _ in episodes.open()) if episodes.is_file() else 0
        print(f"\ninterrupted: {done} finished episodes are saved in {episodes}; run the same "
              "command with --resume to continue.", file=sys.stderr)
        raise SystemExit(130) from None
    _print_summary(result)
    print(f"wrote {result.out_dir}")
    for condition in dict.fromkeys(row["condition"] for row in result.episodes):
        rows = [row for row in result.episodes if row["condition"] == condition]
        if all(row["error"] is not None for row in rows):
            first = rows[0]["error"]
            raise VLAError(f"every episode of condition {condition!r} failed ({len(rows)} of {len(rows)}); the first: "
                           f"{first['type']}: {first['message']} (at {first['where']}). The rows are in "
                           f"{result.out_dir / 'episodes.jsonl'}.")
