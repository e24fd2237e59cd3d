"""The ``nnsight-vla`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import VLAError


def lens_command(args: argparse.Namespace) -> None:
    """Project a model's value vectors; write the table, its text file and the rewired plot."""
    from . import lens
    from .registry import load

    print(f"loading {args.model} ...")
    model = load(args.model)
    table = lens.project_value_vectors(
        model,
        top_k=args.top_k,
        norm=args.norm,
        layers=args.layers,
        batch_size=args.batch_size,
        tower=args.tower,
    )
    out = table.save(args.out)
    print(f"wrote {out / lens.table.ARRAYS} and {out / lens.table.META}")
    print(f"wrote {table.write_text(out / lens.table.TEXT)} (one line per neuron)")
    if table.action_token_ids is not None:
        k = min(10, table.top_k)
        fraction = lens.rewired_mask(table, k).mean()
        png = lens.plot_rewired(table, out / "rewired.png", k)
        print(f"wrote {png} (rewired: half or more of the top {k} tokens are actions; "
              f"{100 * fraction:.1f} % of all)")


def clusters_command(args: argparse.Namespace) -> None:
    """The paper's concept cluster from a saved table, appended to a YAML dictionary file."""
    from .lens import ValueVectorTable, cluster

    table = ValueVectorTable.load(args.table)
    found = cluster(table, args.concept, size=args.size)
    path = found.to_yaml(args.out)
    print(found.describe())
    print(f"wrote {found.name!r} ({len(found)} neurons) to {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nnsight-vla", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="load, trace, predict and steer a model (tiny by default)")
    demo.add_argument("--model", default="tiny-openvla", help="built-in name or checkpoint folder")
    demo.add_argument("--out", default=None, help="run folder (default: runs/demo-<time>)")
    demo.add_argument("--value", type=float, default=8.0, help="clamp value for the steered neurons")
    demo.add_argument(
        "--lens-model", default="smol-openvla", help="model of the lens step ('none' skips it)"
    )
    demo.add_argument(
        "--pi0-model", default="tiny-pi0", help="model of the Pi0 step ('none' skips it)"
    )

    lens = commands.add_parser("lens", help="project FFN value vectors onto the vocabulary")
    lens.add_argument("model", help="built-in name (e.g. smol-openvla) or checkpoint folder")
    lens.add_argument("--top-k", type=int, default=10, help="tokens kept per value vector")
    lens.add_argument(
        "--norm",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="apply the final norm first (default: no, the paper's rule)",
    )
    lens.add_argument("--layers", type=int, nargs="+", default=None, help="layers (default: all)")
    lens.add_argument("--tower", default=None, help="which tower (default: vlm)")
    lens.add_argument("--batch-size", type=int, default=None, help="value vectors per chunk")
    lens.add_argument("--out", required=True, type=Path, help="folder for table, text file, plot")

    clusters = commands.add_parser("clusters", help="a concept cluster from a saved table, as YAML")
    clusters.add_argument("table", type=Path, help="folder written by `nnsight-vla lens`")
    clusters.add_argument("--concept", required=True, help="the concept word, e.g. up")
    clusters.add_argument("--size", type=int, default=10, help="cluster size (paper: 10, 20, 40)")
    clusters.add_argument("--out", required=True, type=Path, help="YAML file (created or extended)")

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run

            lens_model = None if args.lens_model == "none" else args.lens_model
            pi0_model = None if args.pi0_model == "none" else args.pi0_model
            run(args.model, args.out, args.value, lens_model=lens_model, pi0_model=pi0_model)
        elif args.command == "lens":
            lens_command(args)
        elif args.command == "clusters":
            clusters_command(args)
    except VLAError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
