"""The ``nnsight-vla`` command line: the parser and the exit codes.

Each command's work is in its module (`lens`, `evaluation`, `probes`; ``serve`` is
`nnsight_vla.ndif.stack`).

Importing this package loads nothing heavy (argparse and the error types): torch,
transformers and nnsight are imported by the commands themselves, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import VLAError
from .evaluation import _config_arguments, eval_command, parse_steer  # parse_steer: for callers of the CLI's forms
from .lens import clusters_command, lens_command
from .probes import collect_command, probe_command

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


def main(argv: list[str] | None = None) -> int:
    """Run ``nnsight-vla ARGV`` (``sys.argv[1:]`` when None); return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # its own parser: it passes a command after `--` through
        from ..ndif.stack import main as serve

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
