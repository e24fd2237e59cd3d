"""Round-trip latency of a remote trace on the real NDIF server (over loopback) vs the same trace locally.

Starts a local stack with `nnsight-vla serve run` (a loopback-only network namespace: needs root),
deploys tiny-openvla and a mid-size random OpenVLA (8 Llama layers, width 1024) from a folder, and
times, interleaved in rounds so that machine noise hits both alike, a trace that saves the last
position's FFN activations of one layer, run locally and with ``remote=True`` by a client that is
not dispatched. Prints the medians, the fixed overhead per request (remote minus local, ms) and
the remote/local ratio per model. One run; the server and the client share this machine's cores.

    python benchmarks/ndif_latency.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import nnsight_vla  # noqa: E402
from nnsight_vla import Observation  # noqa: E402

from steering_overhead import image  # noqa: E402


def write_mid(folder: str) -> str:
    from nnsight_vla_openvla.tiny import tiny_config, write_random_checkpoint

    config = tiny_config(num_hidden_layers=8, hidden_size=1024, intermediate_size=2816,
                         num_attention_heads=16, num_key_value_heads=16)
    return str(write_random_checkpoint(folder, config))


def client(models: list[tuple[str, str]], rounds: int) -> None:
    from nnsight import CONFIG

    CONFIG.APP.REMOTE_LOGGING = False
    obs = Observation(image(0, 256), "pick up the black bowl")
    print(f"{'model':<34}{'local ms':>10}{'remote ms':>11}{'overhead ms':>13}{'ratio':>8}")
    for label, source in models:
        local, remote = nnsight_vla.load(source), nnsight_vla.load(source, dispatch=False)

        def trace(model, **kw):
            with model.trace(obs, **kw):
                out = model.layers[1].mlp.down_proj.input[:, -1].save()
            return out

        for _ in range(2):  # warm-up: the first request provisions the replica
            trace(local), trace(remote, remote=True)
        times = {"local": [], "remote": []}
        for _ in range(rounds):
            for name, run in (("local", lambda: trace(local)), ("remote", lambda: trace(remote, remote=True))):
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
        lo, re = (1000 * statistics.median(times[k]) for k in ("local", "remote"))
        print(f"{label:<34}{lo:>10.1f}{re:>11.1f}{re - lo:>13.1f}{re / lo:>8.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--client", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client([("tiny-openvla", "tiny-openvla"), ("mid-size OpenVLA (8 layers, 1024)", args.client[0])], args.rounds)
        return
    with tempfile.TemporaryDirectory(prefix="ndif-bench-") as tmp:
        mid = write_mid(f"{tmp}/mid")
        command = [sys.executable, "-m", "nnsight_vla.cli", "serve", "run", "--run", "/tmp/ndif-bench-run",
                   "--deploy", "tiny-openvla", "--deploy", mid, "--",
                   sys.executable, __file__, "--rounds", str(args.rounds), "--client", mid]
        sys.exit(subprocess.run(command).returncode)


if __name__ == "__main__":
    main()
