"""The examples `nnsight-vla --help` prints run, in order, on the built-ins: each one's output
is the next one's input (LIBERO episodes shortened to 2 steps at 64 pixels, one shuffle)."""

import shlex
from contextlib import nullcontext

import pytest

from nnsight_vla.cli import EPILOG, main
from nnsight_vla.probes import ShardFolder
from nnsight_vla.probes.demos import convert_robosuite_demos
from nnsight_vla.probes.sources import as_source

pytestmark = pytest.mark.slow
#: Added to two examples: the same commands, cheaper (shorter episodes, one chance-level rerun).
SHORTER = {"eval": ["--max-steps", "2", "--camera-size", "64"], "probe": ["--shuffles", "1"]}


def examples() -> list[list[str]]:
    return [shlex.split(line)[1:] for line in EPILOG.splitlines() if line.startswith("  nnsight-vla ")]


def test_the_help_examples_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    convert_robosuite_demos("lift", "data/lift", max_frames=8, stride=24, progress=False)
    commands = examples()
    assert [c[0] for c in commands] == ["lens", "clusters", "eval", "collect", "probe"]
    for argv in commands:
        # the scripted demonstrations never move along some axes: the probe says which it leaves out
        warns = pytest.warns(UserWarning, match=r"action\[.*\] are constant") if argv[0] == "probe" else nullcontext()
        with warns:
            assert main(argv + SHORTER.get(argv[0], [])) == 0, (argv, capsys.readouterr().err[-2000:])
    assert (tmp_path / "runs" / "clusters.yaml").is_file()
    assert (tmp_path / "runs" / "eval" / "summary.json").is_file()
    assert ShardFolder.read(tmp_path / "runs" / "acts").rows() == len(as_source(tmp_path / "data" / "lift"))
    assert {"probes.csv", "probes.json", "probes.png"} <= {p.name for p in (tmp_path / "runs" / "probes").iterdir()}
