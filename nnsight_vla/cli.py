"""The ``nnsight-vla`` command line."""

from __future__ import annotations

import argparse
import sys

from .errors import VLAError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nnsight-vla", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="load, trace, predict and steer a model (tiny by default)")
    demo.add_argument("--model", default="tiny-openvla", help="built-in name or checkpoint folder")
    demo.add_argument("--out", default=None, help="run folder (default: runs/demo-<time>)")
    demo.add_argument("--value", type=float, default=8.0, help="clamp value for the steered neurons")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run

            run(args.model, args.out, args.value)
    except VLAError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
