"""The ``collect`` and ``probe`` commands: activations to disk, per-layer probes on them."""

from __future__ import annotations

from ..errors import InputError


def _calls_or_positions(value: str):
    return value if not value.lstrip("-").replace(",", "").replace("-", "").isdigit() else [int(v) for v in value.split(",")]


def collect_command(args) -> None:
    """Collect activations over a dataset or LIBERO rollouts into shards."""
    if (args.data is None) == (args.suite is None):
        raise InputError("give one source: --data DATASET_ROOT or --suite LIBERO_SUITE.")
    from ..paths import probed_folder

    probed_folder(args.out, create=False, what="--out folder")
    from .. import probes
    from ..registry import load

    model = load(args.model)
    from ..sites import expand_sites

    sites = [site for spec in args.sites for site in expand_sites(spec, model)]
    calls, positions = _calls_or_positions(args.calls), _calls_or_positions(args.positions)
    if args.data is not None:
        source = probes.DatasetFrames(args.data, episodes=args.episodes)
        store = probes.collect_to_disk(model, source, sites, args.out, calls=calls, positions=positions,
                                       dtype=args.dtype, shard_rows=args.shard_rows, resume=args.resume)
    else:
        from ..eval import evaluate

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
    from ..paths import writable_folder

    writable_folder(args.out, "--out folder")
    from .. import probes

    results = probes.probe_folder(args.folder, targets=args.target, folds=args.folds, inner_folds=args.inner_folds,
                                  shuffles=args.shuffles)
    out = results.save(args.out)
    best = results.table.sort_values("score").groupby("target").tail(1)
    for row in best.itertuples():
        print(f"{row.target}: best {row.tower} {row.kind} layer {row.layer} call {row.call}: "
              f"{row.metric} {row.score:.3f} [{row.score_low:.3f}, {row.score_high:.3f}], chance {row.chance:.3f}")
    print(f"wrote {out}")
