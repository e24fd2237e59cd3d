"""The notebooks and the demo run end to end."""

import ast
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


#: Smaller settings for the heavy notebooks, set in a cell after their "parameters" cell (as
#: papermill does): every cell still runs, against the real components, on less data.
REDUCED = {
    "04_libero_eval.ipynb": {"STEPS": 4},
    "06_probes.ipynb": {"FRAMES": 20, "STRIDE": 24, "SHUFFLES": 1, "STEPS": 1},
    "07_mini_vla.ipynb": {"LENS_LAYERS": "range(24, 30)", "SCENES": 1, "CONTROLS": 2, "STEPS": 2, "LOOP_CONTROLS": 2},
}


def with_reduced_settings(notebook, settings: dict):
    """``notebook`` with a cell setting ``settings`` after its cell tagged "parameters", whose
    names must all be defined there (a renamed setting is caught, not silently kept full-size)."""
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    tree = ast.parse(notebook.cells[index].source)
    defined = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    assert set(settings) <= defined, f"the parameters cell defines no {sorted(set(settings) - defined)}"
    source = "\n".join(f"{name} = {value}" for name, value in settings.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return notebook


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    if path.name in REDUCED:
        notebook = with_reduced_settings(notebook, REDUCED[path.name])
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


@pytest.mark.slow
def test_demo_writes_its_results(tmp_path, capsys):
    assert _demo().main(["--out", str(tmp_path), "--steps", "4"]) == 0
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
    assert _demo().main(["--steps", "0", "--out", "/tmp/never"]) == 2
    assert "steps=0: the rollout needs a whole number of steps >= 1" in capsys.readouterr().err
    assert main(["lens", "no-such-model", "--out", "/tmp/never"]) == 2
    assert "registered families" in capsys.readouterr().err


def test_notebooks_are_written_from_their_cell_sources():
    """notebooks/NAME.ipynb is what scripts/make_notebooks.py writes from scripts/notebooks/NAME.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    sources = sorted(make.SOURCES.glob("[0-9][0-9]_*.py"))
    assert [s.stem + ".ipynb" for s in sources] == [p.name for p in NOTEBOOKS]
    for source, path in zip(sources, NOTEBOOKS):
        written = [(c.cell_type, c.source, c.metadata.get("tags")) for c in nbformat.read(path, as_version=4).cells]
        assert written == [(c.cell_type, c.source, c.metadata.get("tags")) for c in make.cells(source)], path.name


def test_the_reduced_settings_are_the_notebooks_own():
    for name, settings in REDUCED.items():
        notebook = with_reduced_settings(nbformat.read(ROOT / "notebooks" / name, as_version=4), settings)
        assert sum("injected-parameters" in c.metadata.get("tags", []) for c in notebook.cells) == 1
    with pytest.raises(AssertionError, match="defines no"):
        with_reduced_settings(nbformat.read(ROOT / "notebooks" / "07_mini_vla.ipynb", as_version=4), {"STEP": 1})
