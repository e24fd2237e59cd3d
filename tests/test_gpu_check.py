"""`make gpu-check` without a GPU: it stops at once with exit code 2 and one line saying why.
(The GPU checks themselves never run in tests.)"""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_without_cuda_it_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "gpu-check.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip() == (
        "gpu-check needs a CUDA GPU (torch.cuda.is_available() is False): run it on a machine with one; "
        "tests and CI never call it"
    )
    assert run.stdout == "" and not out.exists()
