"""The package's docstrings follow pyproject.toml's pydocstyle rules (ruff, Google convention)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docstrings_follow_the_configured_rules():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise",
                           "nnsight_vla", "plugins"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_catch_a_missing_docstring(tmp_path):
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text('"""A module."""\n\n\ndef public(x):\n    return x\n')
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "bad.py"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1 and "D103" in done.stdout, done.stdout + done.stderr
