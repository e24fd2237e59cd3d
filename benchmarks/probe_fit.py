"""Nested cross-validated ridge probes: fit_probes's closed form vs scikit-learn's default path.

On synthetic activations (default 50,000 rows x 1,024 features per layer, 100 episodes, a
target carried by each layer with a strength that grows with depth, per-episode offsets so
rows of an episode are alike), for each layer, one after the other so machine noise hits both
alike:

  project  fit_probes(..., shuffles=0): GroupKFold(5) by episode, alpha chosen by an inner
           GroupKFold(3) in each outer training set, plus the final selection and fit on all
           rows (alpha, direction) that the reference does not do
  sklearn  cross_val_score(GridSearchCV(make_pipeline(StandardScaler(), Ridge()),
           {"ridge__alpha": alphas}, cv=GroupKFold(3)), cv=GroupKFold(5), groups=episodes),
           on a float64 copy (made before timing: the project also computes in float64)

Same folds, same alphas, the same BLAS threads (``--threads``; on a machine shared with other
jobs, 1 thread avoids OpenBLAS's busy-waiting, which can slow small solves 100x). Prints the
median seconds per layer of each, the ratio project/sklearn (target <= 1) and the largest
difference of mean score and interval bounds (target <= 1e-6), then the project's time for 7
targets with 3 shuffles each (the chance level) on one layer, which scikit-learn's path would
pay 28 times over.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from nnsight_vla.probes.fit import DEFAULT_ALPHAS, fit_probes
from nnsight_vla.probes.report import t_interval
from nnsight_vla.sites import Site


def layer_data(rng, layer, layers, rows, width, episodes):
    """Activations with a planted readout (stronger with depth) and one target."""
    ids = np.repeat(np.arange(episodes), rows // episodes)
    x = rng.standard_normal((rows, width), dtype=np.float32)
    x += rng.standard_normal((episodes, width), dtype=np.float32)[ids]
    x *= np.exp(rng.uniform(-2, 2, width)).astype(np.float32)  # columns of different scales
    w = rng.standard_normal(width) / np.sqrt(width)
    signal = x.astype(np.float64) @ w
    strength = (layer + 1) / layers
    y = strength * signal / signal.std() + rng.standard_normal(rows)
    return x, y, ids


def sklearn_nested(x, y, ids, alphas, folds, inner_folds):
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    search = GridSearchCV(
        make_pipeline(StandardScaler(), Ridge()),
        {"ridge__alpha": list(alphas)},
        cv=GroupKFold(inner_folds),
    )
    return cross_val_score(search, x, y, groups=ids, cv=GroupKFold(folds), params={"groups": ids})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--inner-folds", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="BLAS threads for both paths"
    )
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(args.threads):
        run(args)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


def run(args) -> None:
    rng = np.random.default_rng(0)
    alphas = DEFAULT_ALPHAS
    print(
        f"{args.rows} rows x {args.width} features, {args.episodes} episodes, "
        f"{args.layers} layers; folds {args.folds} (inner {args.inner_folds}); {len(alphas)} "
        f"alphas {alphas[0]:g} ... {alphas[-1]:g}; {args.threads} BLAS threads; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    x, y, ids = layer_data(rng, 0, 1, 1000, 8, 20)  # warm-up: imports and first calls, untimed
    fit_probes({(Site(0), 0): x}, {"y": y}, ids, shuffles=0, progress=False)
    sklearn_nested(x.astype(np.float64), y, ids, alphas[:2], args.folds, args.inner_folds)
    ours, theirs, diffs = [], [], []
    for layer in range(args.layers):
        x, y, ids = layer_data(rng, layer, args.layers, args.rows, args.width, args.episodes)
        start = time.perf_counter()
        res = fit_probes(
            {(Site(layer), 0): x},
            {"action[0]": y},
            ids,
            folds=args.folds,
            inner_folds=args.inner_folds,
            shuffles=0,
            progress=False,
        )
        ours.append(time.perf_counter() - start)
        x64 = x.astype(np.float64)
        start = time.perf_counter()
        reference = sklearn_nested(x64, y, ids, alphas, args.folds, args.inner_folds)
        theirs.append(time.perf_counter() - start)
        got = res.table.iloc[0]
        diffs.append(
            np.abs(
                np.array([got.score, got.score_low, got.score_high]) - t_interval(reference)
            ).max()
        )
        print(
            f"  layer {layer}: R² {got.score:.4f} (sklearn {reference.mean():.4f}), "
            f"alpha {got.alpha:g}; project {ours[-1]:6.2f} s, sklearn {theirs[-1]:7.2f} s, "
            f"|score difference| {diffs[-1]:.1e}"
        )
        del x64
    per_ours, per_theirs = np.median(ours), np.median(theirs)
    print(
        f"median seconds per layer: project {per_ours:.2f}, sklearn {per_theirs:.2f}; "
        f"e.g. 32 layers: project {32 * per_ours / 60:.1f} min, "
        f"sklearn {32 * per_theirs / 60:.1f} min"
    )
    print(f"ratio project/sklearn = {per_ours / per_theirs:.3f}   (target <= 1)")
    print(f"max |score difference| (mean, low, high) = {max(diffs):.2e}   (target <= 1e-6)")

    targets = {f"action[{i}]": y + 0.5 * i * rng.standard_normal(len(y)) for i in range(7)}
    start = time.perf_counter()
    fit_probes(
        {(Site(0), 0): x},
        targets,
        ids,
        folds=args.folds,
        inner_folds=args.inner_folds,
        shuffles=3,
        progress=False,
    )
    seconds = time.perf_counter() - start
    print(
        f"project, 7 targets x (1 + 3 shuffles) on one layer: {seconds:.2f} s "
        f"(sklearn's path: about 28 x {per_theirs:.0f} s = {28 * per_theirs / 60:.0f} min)"
    )


if __name__ == "__main__":
    main()
