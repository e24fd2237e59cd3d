"""Ray rollouts equal serial ones: a local Ray, an existing cluster by address, a refused edited model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nnsight_vla import InputError
from nnsight_vla.eval import evaluate

#: The NDIF stack and the Ray check start many processes: `make test` runs them after the rest, at
#: the same time on two workers (scripts/test.sh), each in its own loopback-only namespace.
pytestmark = [pytest.mark.stacks, pytest.mark.xdist_group("ray")]

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_workers_equal_serial(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--net", "true"]).returncode != 0:
        pytest.skip("Ray must run in a loopback-only network namespace: needs unshare and root")
    proc = subprocess.run(
        [ROOT / "scripts" / "loopback.sh", sys.executable, ROOT / "tests" / "ray_check.py", tmp_path],
        capture_output=True, text=True, timeout=1200, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    openvla = result["tiny-openvla"]
    assert [r["condition"] for r in openvla["parallel"]] == ["baseline", "steered"]
    assert openvla["parallel"] == openvla["serial"]  # every metric, path point and action
    assert openvla["serial"][0]["actions"] != openvla["serial"][1]["actions"]  # the steering acted
    assert "changed in memory" in result["edited"] and result["edited"].startswith("VLAError")
    shards = ["baseline-task000-ep000.safetensors", "steered-task000-ep000.safetensors"]
    assert [sorted(s) for s in result["collected"]["shards"]] == [sorted(shards)] * 2
    assert result["collected"]["same"]
    cluster = result["cluster"]
    assert cluster["rows"] == openvla["serial"]  # the same jobs on an existing cluster, by its address
    assert len(cluster["pids"]) == 2 and os.getpid() not in cluster["pids"]  # two worker processes ran


def test_unreachable_cluster_address_names_the_fix(tiny):
    """Ray would retry an address where nothing listens for minutes; this fails at once."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(InputError, match="ray start --head"):
        evaluate(tiny, "libero_spatial", [0], 1, ray_address=f"127.0.0.1:{port}")
