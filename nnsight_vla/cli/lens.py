"""The ``lens`` and ``clusters`` commands: value vectors onto the vocabulary, concept clusters as YAML."""

from __future__ import annotations

import argparse

from ..errors import InputError


def _positive(value: int | None, option: str) -> None:
    if value is not None and value < 1:
        raise InputError(f"{option} {value} must be a positive integer.")


def lens_command(args: argparse.Namespace) -> None:
    """Project a model's value vectors; write the table, its text file and the rewired plot."""
    from ..paths import writable_folder

    _positive(args.top_k, "--top-k")
    _positive(args.batch_size, "--batch-size")
    out = writable_folder(args.out, "--out folder")  # before loading the model

    from .. import lens
    from ..registry import load

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
    from ..paths import writable_file

    _positive(args.size, "--size")
    out = writable_file(args.out, "--out file")  # before reading the table

    from ..lens import ValueVectorTable, cluster

    table = ValueVectorTable.load(args.table)
    found = cluster(table, args.concept, size=args.size, allow_unmatched=args.allow_unmatched)
    path = found.to_yaml(out)
    print(found.describe())  # first line: which tokens matched, and how many neurons list them
    print(f"wrote {found.name!r} ({len(found)} neurons) to {path}")
