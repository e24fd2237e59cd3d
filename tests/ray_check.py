"""Run by test_eval_parallel inside a loopback-only network namespace: tiny-openvla's serial rollouts
vs the same jobs on a local Ray that evaluate() starts and stops, and on one existing cluster
reached by its address (started first, so that it comes up while the first part runs)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import nnsight_vla
from nnsight_vla import Clamp, Site, VLAError
from nnsight_vla.eval import EvalConfig, evaluate
from nnsight_vla.eval.parallel import job_order, run_parallel
from nnsight_vla.eval.records import episode_row
from nnsight_vla.probes import RolloutCollector, ShardFolder

out = Path(sys.argv[1])
result = {"seconds": {}}
clock = [time.perf_counter()]


def lap(phase: str) -> None:
    """Record the seconds since the last phase ended (the test prints them)."""
    now = time.perf_counter()
    result["seconds"][phase] = round(now - clock[0], 1)
    clock[0] = now

#: the cluster part's settings: the jobs below, two workers on the existing cluster
cluster = EvalConfig("libero_spatial", (0,), 1, max_steps=2, seed=7, camera_size=64, workers=2,
                     ray_address="127.0.0.1:6390")

# The existing cluster of the second part starts now, while the first part runs.
# Its own process group, stopped by id (`ray stop` would stop every Ray on the machine, such as
# the NDIF stack another test runs in its own namespace).
head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port=6390", "--num-cpus=2",
                         "--include-dashboard=false", "--disable-usage-stats"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

try:
    # tiny-openvla on a local Ray that evaluate() starts and stops itself.
    model = nnsight_vla.load("tiny-openvla")
    lap("load")
    args = {"steering": Clamp([(1, 3), (1, 17)], 8.0), "max_steps": 2, "camera_size": 64, "controls": ("baseline",)}
    sites = [Site(0, "resid"), Site(1, "neurons")]
    serial = evaluate(model, "libero_spatial", [0], 1, collect=RolloutCollector(sites, out / "serial"), **args).episodes
    lap("serial")
    parallel = evaluate(model, "libero_spatial", [0], 1, workers=2, collect=RolloutCollector(sites, out / "parallel"),
                        **args).episodes
    lap("local ray")
    result["tiny-openvla"] = {"serial": serial, "parallel": parallel}
    # each worker wrote its episodes' shards: the same files and arrays as the serial run's
    stores = [ShardFolder.read(out / name) for name in ("serial", "parallel")]
    loaded = [store.load() for store in stores]
    result["collected"] = {
        "shards": [[p.name for p in store.shards()] for store in stores],
        "same": all(np.array_equal(loaded[0]["activations"][s], loaded[1]["activations"][s]) for s in sites)
        and all(np.array_equal(loaded[0]["targets"][k], loaded[1]["targets"][k]) for k in loaded[0]["targets"]),
    }

    # The same jobs on that existing cluster, reached by its address: the serial run above is the reference.
    deadline = time.time() + 120
    while time.time() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 6390)) == 0:
                break
        time.sleep(0.5)
    # the GCS port opens before the head's raylet has registered its CPUs: actors placed on a
    # cluster that is still starting can be cancelled, so wait until `ray status` shows them
    while time.time() < deadline:
        status = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", "--address=127.0.0.1:6390"],
                                capture_output=True, text=True)
        if status.returncode == 0 and "/2.0 CPU" in status.stdout:
            break
        time.sleep(1)
    lap("wait for the cluster")
    conditions = {"baseline": None, "steered": args["steering"]}
    jobs = job_order([0], 1, conditions)  # two jobs: one for each worker
    timings: list = []
    parallel = run_parallel(model, jobs, conditions, cluster, timings=timings)
    rows = [episode_row("libero_spatial", job, parallel[job]) for job in jobs]
    result["cluster"] = {"rows": rows, "pids": sorted({pid for *_, pid in timings})}
    lap("cluster")
    # A model edited in memory cannot be rebuilt by the workers: refused (one worker shows it).
    edited = nnsight_vla.load("tiny-openvla")
    with torch.no_grad():
        edited._module.language_model.model.layers[1].mlp.down_proj.weight[:, 3] += 1.0
    try:
        evaluate(edited, "libero_spatial", [0], 1, workers=1, ray_address="127.0.0.1:6390", **args)
        result["edited"] = "no error"
    except VLAError as error:
        result["edited"] = f"{type(error).__name__}: {error}"
    lap("edited")
finally:
    import ray

    ray.shutdown()  # disconnect first: a driver still attached when the cluster is stopped can crash
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(1)
    except subprocess.TimeoutExpired:  # `ray start --block` can take half a minute to stop its children
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(10)
lap("stop")
(out / "result.json").write_text(json.dumps(result))
