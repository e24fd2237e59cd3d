"""The ``nnsight-vla`` command line.

Importing this module loads nothing heavy (argparse and the error types): torch,
transformers and nnsight are imported by the commands themselves, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from .errors import InputError, VLAError

DESCRIPTION = """\
Robot vision-language-action policies as nnsight models: project FFN value vectors
onto the vocabulary (lens), build concept clusters from a saved table (clusters), and
run closed-loop LIBERO evaluations with and without steering (eval), collect activations
to disk (collect) and fit per-layer probes on them (probe)."""
EPILOG = """examples:
  nnsight-vla lens tiny-openvla --out runs/lens
  nnsight-vla clusters runs/lens --concept up --size 10 --allow-unmatched --out runs/clusters.yaml
  nnsight-vla eval tiny-openvla --suite libero_spatial --steer runs/clusters.yaml#up_10:4.0 --out runs/eval
  nnsight-vla collect tiny-pi0 --data data/lift --sites resid@expert:all --out runs/acts
  nnsight-vla probe runs/acts --target action --folds 3 --inner-folds 2 --out runs/probes

(tiny-openvla has random weights: no neuron lists "up", hence --allow-unmatched; data/lift is a
LeRobotDataset, e.g. three robosuite demonstrations from nnsight_vla.probes.demos.convert_robosuite_demos,
hence 3 folds.)

Run "nnsight-vla COMMAND --help" for a command's options."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except None (the help says what None means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class _TopFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The top level keeps the line breaks of its description and examples."""


class _Parser(argparse.ArgumentParser):
    """Every sub-command's parser shows defaults too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _positive(value: int | None, option: str) -> None:
    if value is not None and value < 1:
        raise InputError(f"{option} {value} must be a positive integer.")


def lens_command(args: argparse.Namespace) -> None:
    """Project a model's value vectors; write the table, its text file and the rewired plot."""
    from .paths import writable_folder

    _positive(args.top_k, "--top-k")
    _positive(args.batch_size, "--batch-size")
    out = writable_folder(args.out, "--out folder")  # before loading the model

    from . import lens
    from .registry import load

    print(f"loading {args.model} ...")
    model = load(args.model)
    if args.tower is not None and args.tower in model.towers() and model.towers()[args.tower].unembed is None:
        raise InputError(
            f"--tower {args.tower}: that tower has no vocabulary to project onto (no unembedding of its own); "
            f"omit --tower for the VLM, or use lens.project_value_vectors(model, tower={args.tower!r}, unembed=...) "
            "in Python to borrow one of the same width."
        )
    table = lens.project_value_vectors(
        model,
        top_k=args.top_k,
        norm=args.norm,
        layers=args.layers,
        batch_size=args.batch_size,
        tower=args.tower,
        dtype=args.dtype,
        device=args.device,
    )
    out = table.save(out)
    print(f"wrote {out / lens.table.ARRAYS} and {out / lens.table.META}")
    print(f"wrote {table.write_text(out / lens.table.TEXT)} (one line per neuron; ▁ marks a leading space)")
    if table.action_token_ids is not None:
        k = min(10, table.top_k)
        fraction = lens.rewired_mask(table, k).mean()
        png = lens.plot_rewired(table, out / "rewired.png", k)
        print(f"wrote {png} (rewired: half or more of the top {k} tokens are actions; "
              f"{100 * fraction:.1f} % of all)")


def clusters_command(args: argparse.Namespace) -> None:
    """The paper's concept cluster from a saved table, appended to a YAML dictionary file."""
    from .paths import writable_file

    _positive(args.size, "--size")
    out = writable_file(args.out, "--out file")  # before reading the table

    from .lens import ValueVectorTable, cluster

    table = ValueVectorTable.load(args.table)
    found = cluster(table, args.concept, size=args.size, allow_unmatched=args.allow_unmatched)
    path = found.to_yaml(out)
    print(found.describe())  # first line: which tokens matched, and how many neurons list them
    print(f"wrote {found.name!r} ({len(found)} neurons) to {path}")


def _steer_spec(spec: str) -> tuple[str, str, float]:
    """``FILE.yaml[#NAME]:VALUE`` -> (file, cluster name, value), checked against the file
    (it exists, and holds that cluster, or exactly one without #NAME) without a model."""
    import yaml

    from .errors import InputError

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
    from .neurons import NeuronCluster
    from .steering import Clamp

    path, name, value = _steer_spec(spec)
    cluster = NeuronCluster.from_yaml(path, name, d_mlp=model.spec.d_mlp, n_layers=model.spec.n_layers)
    return Clamp(cluster, value)


def _print_summary(result) -> None:
    """Each condition's metric means, then the success rate per task and condition."""
    from .eval.metrics import METRICS

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
    from .eval.config import EvalConfig

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
    from .eval.config import EvalConfig

    try:
        tasks = [int(t) for t in args.tasks.split(",")]
    except ValueError as err:
        raise InputError(f"--tasks {args.tasks!r} must be comma-separated ints, e.g. 0,1.") from err
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig) if f.metadata["flag"] != ""}
    return EvalConfig(**{**options, "tasks": tasks})


def eval_command(args) -> None:
    config = eval_config(args)
    if args.steer is not None:
        _steer_spec(args.steer)  # a missing file or cluster fails before the model loads
    from .paths import probed_folder

    probed_folder(args.out, create=False, what="--out folder")  # nor is anything created yet

    from .eval import evaluate
    from .registry import load

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


def _calls_or_positions(value: str):
    return value if not value.lstrip("-").replace(",", "").replace("-", "").isdigit() else [int(v) for v in value.split(",")]


def collect_command(args) -> None:
    """Collect activations over a dataset or LIBERO rollouts into shards."""
    if (args.data is None) == (args.suite is None):
        raise InputError("give one source: --data DATASET_ROOT or --suite LIBERO_SUITE.")
    from .paths import probed_folder

    probed_folder(args.out, create=False, what="--out folder")
    from . import probes
    from .registry import load

    model = load(args.model)
    from .sites import expand_sites

    sites = [site for spec in args.sites for site in expand_sites(spec, model)]
    calls, positions = _calls_or_positions(args.calls), _calls_or_positions(args.positions)
    if args.data is not None:
        source = probes.DatasetFrames(args.data, episodes=args.episodes)
        store = probes.collect_to_disk(model, source, sites, args.out, calls=calls, positions=positions,
                                       dtype=args.dtype, shard_rows=args.shard_rows, resume=args.resume)
    else:
        from .eval import evaluate

        tasks = [int(t) for t in args.tasks.split(",")]
        if args.episodes is not None and len(args.episodes) != 1:
            raise InputError(f"with --suite, --episodes is one count (episodes per task), got {args.episodes}.")
        collector = probes.RolloutCollector(sites, args.out, calls=calls, positions=positions, dtype=args.dtype)
        evaluate(model, args.suite, tasks, args.episodes[0] if args.episodes else 1, controls="baseline",
                 seed=args.seed, max_steps=args.max_steps, camera_size=args.camera_size, out_dir=args.out / "eval",
                 workers=args.workers, resume=args.resume, collect=collector)
        store = probes.ShardFolder.read(args.out)
    print(f"wrote {store.rows()} rows at {len(sites)} sites in {len(store.shards())} shards under {store.folder}")


def probe_command(args) -> None:
    """Fit per-layer probes on collected activations; write the table and plot."""
    from .paths import writable_folder

    writable_folder(args.out, "--out folder")
    from . import probes

    results = probes.probe_folder(args.folder, targets=args.target, folds=args.folds, inner_folds=args.inner_folds,
                                  shuffles=args.shuffles)
    out = results.save(args.out)
    best = results.table.sort_values("score").groupby("target").tail(1)
    for row in best.itertuples():
        print(f"{row.target}: best {row.tower} {row.kind} layer {row.layer} call {row.call}: "
              f"{row.metric} {row.score:.3f} [{row.score_low:.3f}, {row.score_high:.3f}], chance {row.chance:.3f}")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # its own parser: it passes a command after `--` through
        from .ndif.stack import main as serve

        status = []
        return exit_code(lambda: status.append(serve(argv[1:]))) or status[0]
    parser = _Parser(prog="nnsight-vla", description=DESCRIPTION, epilog=EPILOG, formatter_class=_TopFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    lens = commands.add_parser(
        "lens", help="project FFN value vectors onto the vocabulary",
        description="Project every FFN value vector of a model onto its vocabulary; write the table "
        "(value_vectors.npz/.json), top_tokens.txt (one line per neuron, ▁ marking a leading space) "
        "and rewired.png.",
    )
    lens.add_argument("model", help="a built-in name, checkpoint folder or Hub id")
    lens.add_argument("--top-k", type=int, default=10, help="tokens kept per value vector")
    lens.add_argument(
        "--norm",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="apply the final norm first (nnterp's rule); off is the paper's rule",
    )
    lens.add_argument("--layers", type=int, nargs="+", default=None, help="layer indices (omit for all)")
    lens.add_argument("--tower", default=None, help="which tower (omit for the VLM)")
    lens.add_argument("--batch-size", type=int, default=None,
                      help="value vectors per chunk (omit for 256 MiB of logits)")
    lens.add_argument("--dtype", default=None, help="bfloat16 (the paper's), float16 or float32 (omit for the model's)")
    lens.add_argument("--device", default=None, help="where the matmuls run, e.g. cuda (omit for the model's device)")
    lens.add_argument("--out", required=True, type=Path, help="folder for table, text file, plot")

    clusters = commands.add_parser(
        "clusters", help="a concept cluster from a saved table, as YAML",
        description="The paper's concept cluster (value vectors nearest to a word) from a table "
        "written by the lens command, added to a YAML dictionary file. Refused when no neuron "
        "lists the word among its top tokens, unless --allow-unmatched.",
    )
    clusters.add_argument("table", type=Path, help="folder written by the lens command")
    clusters.add_argument("--concept", required=True, help="the concept word, e.g. up")
    clusters.add_argument("--size", type=int, default=10, help="cluster size (paper: 10, 20, 40)")
    clusters.add_argument(
        "--allow-unmatched", action="store_true",
        help="take the nearest vectors even when no neuron lists the word among its top tokens",
    )
    clusters.add_argument("--out", required=True, type=Path, help="YAML file (created or extended)")

    evaluation = commands.add_parser("eval", help="closed-loop LIBERO evaluation, baseline vs steered vs random")
    evaluation.add_argument("model", help="built-in name or checkpoint folder")
    evaluation.add_argument("--steer", default=None, help="CLUSTERS.yaml[#NAME]:VALUE — clamp a cluster")
    evaluation.add_argument("--out", required=True, type=Path, help="output folder")
    _config_arguments(evaluation)
    evaluation.add_argument("--resume", action="store_true",
                            help="continue the run in --out from its saved episodes (same settings; "
                            "without it a run there is started over)")

    gather = commands.add_parser("collect", help="activations at sites over a dataset or LIBERO rollouts, to disk")
    gather.add_argument("model", help="built-in name or checkpoint folder")
    gather.add_argument("--data", type=Path, default=None, help="a LeRobotDataset root folder")
    gather.add_argument("--suite", default=None, help="a LIBERO suite: collect along closed-loop rollouts")
    gather.add_argument("--tasks", default="0", help="with --suite: comma-separated task ids")
    gather.add_argument("--episodes", type=int, nargs="+", default=None,
                        help="with --data: episode indices (omit for all); with --suite: episodes per task (default 1)")
    gather.add_argument("--sites", nargs="+", required=True, help="KIND[@TOWER]:LAYERS, e.g. resid:all neurons@expert:0-2")
    gather.add_argument("--calls", default="actions", help="actions, prefill, all or call indices 0,1")
    gather.add_argument("--positions", default="last", help="last, mean, all or indices -1,-2")
    gather.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    gather.add_argument("--shard-rows", type=int, default=1024, help="rows per shard (memory holds one)")
    gather.add_argument("--seed", type=int, default=7, help="with --suite: the evaluation's seed")
    gather.add_argument("--max-steps", type=int, default=None, help="with --suite: step limit of an episode")
    gather.add_argument("--camera-size", type=int, default=256, help="with --suite: camera side in pixels")
    gather.add_argument("--workers", type=int, default=1, help="with --suite: Ray workers (each writes its shards)")
    gather.add_argument("--resume", action="store_true", help="continue an interrupted collection in --out")
    gather.add_argument("--out", required=True, type=Path, help="folder for the shards and manifest.json")

    probe = commands.add_parser("probe", help="per-layer probes on collected activations")
    probe.add_argument("folder", type=Path, help="a folder written by the collect command")
    probe.add_argument("--target", nargs="+", default=["action"],
                       help="targets: action, action[2], gripper, state, ee_velocity, task, ...")
    probe.add_argument("--folds", type=int, default=5, help="outer folds, split by episode")
    probe.add_argument("--inner-folds", type=int, default=3,
                       help="folds of each outer training set that choose the ridge penalty, split by episode")
    probe.add_argument("--shuffles", type=int, default=3, help="shuffled-target reruns for the chance level")
    probe.add_argument("--out", required=True, type=Path, help="folder for probes.csv, probes.json, probes.png")

    commands.add_parser("serve", help="a local NDIF server on loopback: serve run|up|deploy|down (serve -h)")

    args = parser.parse_args(argv)
    commands = {"lens": lens_command, "clusters": clusters_command, "eval": eval_command,
                "collect": collect_command, "probe": probe_command}
    return exit_code(lambda: commands[args.command](args))


def exit_code(run) -> int:
    """Run ``run()``; a project error prints ``error: ...`` on stderr and gives 2, else 0."""
    try:
        run()
    except VLAError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
