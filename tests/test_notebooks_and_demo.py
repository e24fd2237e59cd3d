"""The notebooks and the demo run end to end."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}).execute()
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_there_are_the_quickstart_and_lens_notebooks():
    assert {"01_quickstart.ipynb", "02_lenses.ipynb"} <= {p.name for p in NOTEBOOKS}


def _demo():
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo", ROOT / "examples" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_writes_its_results(tmp_path, capsys):
    assert _demo().main(["--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "demo.json").read_text())
    assert result["model"] == "tiny-openvla"
    assert len(result["action_baseline"]) == 7
    assert result["action_steered"] != result["action_baseline"]
    assert result["action_after_steering"] == result["action_baseline"]
    lens = result["lens"]  # the lens step, on the real SmolLM2 inside smol-openvla
    assert lens["model"] == "smol-openvla" and lens["layers"] == list(range(20, 30))
    assert all(len(c["cluster"]) == 10 for c in lens["clusters"].values())
    assert lens["clusters"]["up"]["top3_hits"] > 10
    assert {p.name for p in (tmp_path / "lens").iterdir()} == {"top_tokens.txt", "clusters.yaml", "logit_lens.png"}
    # clamping the lens's "up" cluster raises P(" up"); its random control does not
    smol = lens["steering"]
    assert smol["steered_p_up"] > 20 * max(smol["baseline_p_up"], smol["control_p_up"])
    tiny = result["cluster_steering"]
    assert not set(map(tuple, tiny["control"])) & set(map(tuple, tiny["cluster"]))
    assert tiny["steered_action"] != tiny["baseline_action"]
    pi0 = result["pi0"]
    assert pi0["chunk_shape"] == [10, 7] and pi0["expert_steering_max_change"] > 0
    assert pi0["last_vlm_layer_max_change"] == 0.0 and pi0["inert_warnings"] >= 1
    assert set(result["rollout"]) == {"baseline", "steered", "random"}
    assert len(list((tmp_path / "rollout" / "videos").glob("*.mp4"))) == 3
    assert (tmp_path / "rollout" / "trajectories.png").is_file()
    assert f"wrote {tmp_path / 'demo.json'}" in capsys.readouterr().out


def test_demo_and_cli_report_project_errors(capsys):
    from nnsight_vla.cli import main

    assert _demo().main(["--model", "no-such-model", "--out", "/tmp/never"]) == 2
    assert "registered families" in capsys.readouterr().err
    assert main(["lens", "no-such-model", "--out", "/tmp/never"]) == 2
    assert "registered families" in capsys.readouterr().err
