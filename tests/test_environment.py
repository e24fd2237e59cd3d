"""Two clones side by side: each runs its own code and plugins, whichever ran scripts/env.sh last.

The clones share the heavy venv already built for this lock (a test never builds one) and each
gets its own `<clone>/.venv` holding only its editable install.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("environment")  # one worker builds the module's fixtures

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("NNSIGHT_VLA_HOME") or Path.home() / ".cache" / "nnsight-vla")
# The files that key the shared venv, and the script under test: the working tree's copies (they
# may not be committed yet), so that the clones find the shared venv this checkout uses.
KEYED = ("requirements.lock", "requirements-nodeps.txt", ".python-version")
SCRIPT = "scripts/env.sh"

PROBE = """
import importlib.metadata as md, importlib.util, json, sys
import nnsight_vla
from nnsight_vla.registry import ENTRY_POINT_GROUP, families

found = families()
points = md.entry_points(group=ENTRY_POINT_GROUP)
files = [nnsight_vla.__file__]
files += [sys.modules[point.module].__file__ for point in points]
files += [importlib.util.find_spec(f.model_class.split(":")[0]).origin for f in found.values()]
print(json.dumps({"version": nnsight_vla.__version__, "families": sorted(found), "files": files,
                  "dist": json.loads(md.distribution("nnsight-vla").read_text("direct_url.json"))["url"]}))
"""


def _shared() -> Path:
    digest = hashlib.sha256(b"".join((ROOT / name).read_bytes() for name in KEYED)).hexdigest()[:12]
    return HOME / f"venv-{digest}"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "NNSIGHT_VLA_HOME": str(HOME)}


def _setup(clone: Path) -> str:
    out = subprocess.run(["bash", str(clone / SCRIPT)], capture_output=True, text=True, env=_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == str(clone / ".venv")
    return out.stderr


def _probe(clone: Path, cwd: Path) -> dict:
    python = clone / ".venv" / "bin" / "python"
    out = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, env=_env(), cwd=cwd, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _assert_own(clone: Path, version: str, cwd: Path, families=("openvla", "pi0")) -> None:
    seen = _probe(clone, cwd)
    assert seen["version"] == version
    assert set(families) <= set(seen["families"])
    assert all(Path(f).is_relative_to(clone) for f in seen["files"]), seen["files"]
    assert seen["dist"] == clone.as_uri()
    for command in ("nnsight-vla", "pytest", "ray"):  # the console scripts run this clone's Python
        launcher = clone / ".venv" / "bin" / command
        assert launcher.read_text().splitlines()[0] == f"#!{clone / '.venv' / 'bin' / 'python'}", command


@pytest.fixture(scope="module")
def clones(tmp_path_factory):
    if not (_shared() / ".complete").is_file():
        pytest.skip(f"the shared venv for this lock ({_shared()}) is not built; `make env` builds it")
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode:
        pytest.skip("needs git and a git checkout")
    base = tmp_path_factory.mktemp("clones")
    made = []
    for name in ("a", "b"):
        clone = base / name
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, capture_output=True, timeout=120)
        for path in (*KEYED, SCRIPT):
            shutil.copy2(ROOT / path, clone / path)
        made.append(clone)
    a, b = made
    init = b / "nnsight_vla" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]*"', '__version__ = "0.0.0+clone.b"', init.read_text()))
    elsewhere = base / "elsewhere"  # a working directory that is neither clone
    elsewhere.mkdir()
    return a, b, elsewhere


@pytest.mark.slow  # fresh clones and processes: `make test`, not the edit-test loop
def test_each_clone_imports_its_own_code_and_plugins(clones):
    a, b, elsewhere = clones
    version = _probe_version_of(a)
    stderr = _setup(a)
    assert "Editable installation" not in stderr and "BuildBackendWarning" not in stderr, stderr
    _assert_own(a, version, elsewhere)
    _setup(b)  # B ran last: A still runs A's code
    _assert_own(b, "0.0.0+clone.b", elsewhere)
    _assert_own(a, version, elsewhere)
    _setup(a)  # and the other way round
    _assert_own(a, version, elsewhere)
    _assert_own(b, "0.0.0+clone.b", elsewhere)
    # the shared venv holds no copy of the project
    shared = _shared() / "bin" / "python"
    out = subprocess.run([str(shared), "-c", "import importlib.util; print(importlib.util.find_spec('nnsight_vla'))"],
                         capture_output=True, text=True, env=_env(), cwd=elsewhere, timeout=120)
    assert out.stdout.strip() == "None", out.stdout + out.stderr


@pytest.mark.slow  # fresh clones and processes: `make test`, not the edit-test loop
def test_setup_is_idempotent_and_follows_pyproject(clones):
    a, b, elsewhere = clones
    _setup(a)
    stamp = a / ".venv" / ".nnsight-vla"
    before = stamp.stat().st_mtime_ns
    _setup(a)  # nothing to do: no re-install
    assert stamp.stat().st_mtime_ns == before
    # a new plugin in A's pyproject: A's next set-up installs it, B never sees it
    plugin = a / "plugins" / "nnsight_vla_toy"
    plugin.mkdir()
    (plugin / "__init__.py").write_text(
        'from nnsight_vla.registry import Family\n\nFAMILY = Family("toy", "nnsight_vla_toy:Toy", ("toy",))\n'
    )
    pyproject = a / "pyproject.toml"
    text = pyproject.read_text()
    group = '[project.entry-points."nnsight_vla.models"]\n'
    assert group in text
    pyproject.write_text(text.replace(group, group + 'toy = "nnsight_vla_toy:FAMILY"\n'))
    _setup(a)
    _assert_own(a, _probe_version_of(a), elsewhere, families=("openvla", "pi0", "toy"))
    _setup(b)
    assert "toy" not in _probe(b, elsewhere)["families"]


def _probe_version_of(clone: Path) -> str:
    return re.search(r'__version__ = "([^"]*)"', (clone / "nnsight_vla" / "__init__.py").read_text())[1]


def test_xdist_groups_reach_the_scheduler(request):
    """`make test` runs with --dist loadgroup: a module's group must show in its tests' ids, or
    its expensive fixtures are silently built on every worker (as with pytest 9)."""
    if not request.config.getoption("loadgroup", False):  # set on xdist's workers for --dist loadgroup
        pytest.skip("not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@environment"), request.node.nodeid
