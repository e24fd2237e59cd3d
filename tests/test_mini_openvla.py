"""mini-openvla: the shipped adapters follow held-out instructions, load strictly, save and reload; the verbalising decode."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import nnsight_vla
from nnsight_vla import CheckpointError, InputError
from nnsight_vla_mini import check, frames
from nnsight_vla_openvla.mini import adapter_file, instructions, lora

pytestmark = pytest.mark.xdist_group("mini_openvla")  # one worker builds the module's fixtures


@pytest.fixture(scope="module")
def mini():
    return nnsight_vla.load("mini-openvla")


@pytest.fixture(scope="module")
def shipped_frames():
    return frames.load()[-4:]  # the frames kept for checking: initial states of tasks never trained on


def test_merging_adds_b_times_a_and_refuses_what_does_not_fit():
    weights = {"x.weight": torch.eye(3)}
    a, b = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[1.0], [0.0], [-1.0]])
    out = lora.merged(weights, {"x.lora_A": a, "x.lora_B": b}, ["x"], "here")
    assert torch.equal(out["x.weight"], torch.tensor([[2.0, 2.0, 0.0], [0.0, 1.0, 0.0], [-1.0, -2.0, 1.0]]))
    with pytest.raises(CheckpointError, match="miss"):
        lora.merged(weights, {"x.lora_A": a}, ["x"], "here")
    with pytest.raises(CheckpointError, match="does not fit"):
        lora.merged(weights, {"x.lora_A": a[:, :2], "x.lora_B": b}, ["x"], "here")


@pytest.mark.slow
def test_held_out_instructions_are_followed(mini, shipped_frames):
    """Open-loop, from the shipped weights: templates and scenes never trained on."""
    held_out = instructions.examples(held_out=True)[::14]  # 25 of the 338
    result = check.accuracy(mini, shipped_frames, held_out, progress=False)
    assert result["direction"] >= 0.95 and result["words"] >= 0.95, result


@pytest.mark.slow
def test_the_verbalising_decode(mini, shipped_frames):
    obs = nnsight_vla.Observation(shipped_frames[0], "move up quickly")
    said, action = mini.say_and_act(obs)
    assert said == "up fast" and check.direction(action) == "up"
    np.testing.assert_array_equal(mini.predict_action(obs), action)  # predict_action: the actions alone
    words, forced = mini.say_and_act(obs, phrase="down slow")
    assert words == "down slow"
    np.testing.assert_array_equal(mini.predict_action(obs, phrase="down slow"), forced)
    assert mini.say_and_act([obs, obs])[0] == ["up fast", "up fast"]
    assert mini.action_calls("vlm") == range(2, 9) and mini.calls_per_prediction("vlm") == 9
    with mini.predict_action(obs) as tracer:  # the two word forwards, then the seven action forwards
        tokens = list().save()
        for step in tracer.iter[:9]:
            tokens.append(mini.lm_head.output[0, -1].argmax(-1).item())
    assert mini.tokenizer.decode(tokens[:2]).strip() == "up fast"
    assert all(t in mini.spec.action_token_ids for t in tokens[2:])
    with pytest.raises(InputError, match="is not one this model learned to say.*'up fast'"):
        mini.predict_action(obs, phrase="up")
    with pytest.raises(InputError, match="phrase='sideways zoom' is not one this model learned"):
        mini.predict_action(obs, phrase="sideways zoom")
    with pytest.raises(InputError, match="phrase=3 must be a str"):
        mini.predict_action(obs, phrase=3)
    assert len(mini.config.phrases.learned) == 19 and "stay still" in mini.config.phrases.learned


@pytest.mark.slow
def test_adapters_load_strictly(tmp_path):
    tensors = load_file(adapter_file("mini-openvla"))
    broken = dict(tensors)
    del broken[next(k for k in broken if k.endswith("layers.27.mlp.up_proj.lora_B"))]
    save_file(broken, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="up_proj"):
        nnsight_vla.load("mini-openvla", adapters=str(tmp_path / "missing.safetensors"))
    with pytest.raises(InputError, match="adapters="):
        nnsight_vla.load("smol-openvla", adapters=str(tmp_path / "missing.safetensors"))


@pytest.mark.slow
def test_a_saved_mini_reloads_identically(mini, shipped_frames, tmp_path):
    folder = mini.save_pretrained(tmp_path / "mini")
    loaded = nnsight_vla.load(folder)
    obs = nnsight_vla.Observation(shipped_frames[1], "go left gently")
    assert loaded.config.phrases.n_tokens == 2 and loaded.config.phrases == mini.config.phrases
    official = json.loads((folder / "config.json").read_text())
    assert not {"phrase_tokens", "phrases"} & set(official)  # the official config gets no new field
    assert json.loads((folder / "nnsight_vla.json").read_text())["phrase_tokens"] == 2  # the sidecar has them
    said, a = loaded.say_and_act(obs)
    said_here, b = mini.say_and_act(obs)
    np.testing.assert_array_equal(a, b)
    assert said == said_here
    (folder / "nnsight_vla.json").write_text("{}")
    with pytest.raises(CheckpointError, match="nnsight_vla.json is not this project's settings file"):
        nnsight_vla.load(folder)


@pytest.mark.slow
def test_a_reduced_open_loop_experiment_writes_its_table(mini, shipped_frames, tmp_path):
    """One concept cluster from the lens (of the trained layers, to keep it short), three random
    controls, a neutral instruction, two scenes."""
    from nnsight_vla import Clamp, Observation, lens
    from nnsight_vla.steering import open_loop

    table = lens.project_value_vectors(mini, top_k=10, layers=range(24, 30), progress=False)
    up = lens.cluster(table, "up", size=10)
    obs = [Observation(frame, "move the arm") for frame in shipped_frames[:2]]
    result = open_loop(mini, obs, {"up": Clamp(up, 4.0)}, controls=3, progress=False,
                       predict=lambda model, o, **options: model.say_and_act(o, **options))
    assert set(result.extras) == {"baseline", "up", "up/random0", "up/random1", "up/random2"}
    assert all(len(said) == 2 and all(isinstance(w, str) for w in said) for said in result.extras.values())
    np.testing.assert_array_equal(result.actions["baseline"][1], mini.predict_action(obs[1]))
    with mini.steer(Clamp(up, 4.0)):
        np.testing.assert_array_equal(result.actions["up"][0], mini.predict_action(obs[0]))
    rows = [r for r in result.table() if r["measure"] == "dz"]
    assert len(rows) == 1 and rows[0]["controls"] == 3 and rows[0]["observations"] == 2
    assert result.save(tmp_path).is_file() and (tmp_path / "actions.npz").is_file()


def test_the_instructions_contrast_and_their_gap_by_hand():
    from nnsight_vla_mini import explain

    features = {(0, 0): np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0], [9.0, 9.0]])}
    labels = ["up", "up", "down", "down", "left"]
    unit = explain.contrast(features, labels)[0, 0]  # mean(up) - mean(down) = (2, -2), normed
    np.testing.assert_allclose(unit, np.array([1.0, -1.0]) / np.sqrt(2))
    assert explain.separation(features, labels, {(0, 0): unit})[0, 0] == pytest.approx(2 * np.sqrt(2))


def test_the_evidence_plot_marks_what_survives_holm(tmp_path):
    from nnsight_vla_mini import report

    rows = [{"steering": f"up_{k}@2", "p": p, "p_min": 0.001, "controls": 999} for k, p in
            enumerate([0.001, 0.02, 0.5])]
    held = report.with_holm(rows)
    assert [round(r["p_holm"], 3) for r in held] == [0.003, 0.04, 0.5]  # 3 x 0.001, 2 x 0.02, 1 x 0.5
    assert report.plot_p({"grid": rows}, tmp_path / "p.png").stat().st_size > 10_000
    run = tmp_path / "open-loop-x"
    settings = {"model": "m", "frames": 4, "instruction": "move the arm", "calls": "all"}
    cells = {r["steering"]: {**r, "measure": "dz", "expected_sign": 1, "shift": 0.4, "random_mean": 0.0,
                             "random_std": 0.1, "z": 4.0, "words": ["up fast"], "says_concept": 1.0,
                             "random_says_concept": 0.05, "settings": settings} for r in rows}
    cells["up_1@2"] = {**cells["up_1@2"], "p": 0.04, "controls": 99}  # first run; escalated below
    cells["up_1@2+"] = {**cells["up_1@2"], "p": 0.02, "controls": 999}
    for name, row in cells.items():
        (run / "cells" / name).mkdir(parents=True)
        (run / "cells" / name / "row.json").write_text(json.dumps(row))
    assert [r["controls"] for r in report.grid_rows(run)] == [999, 999, 999]  # "+" stands for its cell
    page = report.grid_page(run, tmp_path / "docs").read_text()
    assert "3 cells, 999 random clusters each" in page and (tmp_path / "docs" / "open-loop-x_p.png").is_file()
    assert "| up_0@2 | dz (+ expected) | +0.400 | +0.000 ± 0.100 | 999 | +4.00 | **0.001** (≥ 0.001) | **0.003** |" in page


def test_the_closed_loop_grid_scores_each_cluster_on_its_own_metric():
    """Hand-made statistics: "up" is read on z_displacement (+ expected), "slow" on mean_speed
    (− expected), with the paired interval of that metric; the other metrics stay out."""
    from nnsight_vla_mini import report

    def scored(shift, z, p):
        return {"shift": shift, "random_mean": 0.0, "random_std": 1.0, "z": z, "p": p, "p_min": 0.02, "controls": 49}

    statistics = {
        "vs_random": {"up_20@2": {"z_displacement": scored(0.04, 4.5, 0.02), "mean_speed": scored(0.09, 0.5, 0.4)},
                      "slow_10@8": {"z_displacement": scored(0.0, 0.1, 0.5), "mean_speed": scored(-0.2, -2.5, 0.3)}},
        "up_20@2": {"z_displacement": {"ci_low": 0.03, "ci_high": 0.05}, "mean_speed": {}},
        "slow_10@8": {"z_displacement": {}, "mean_speed": {}},
    }
    rows = report.own_metric_rows(statistics)
    assert [(r["steering"], r["measure"], r["expected_sign"], r["z"]) for r in rows] == [
        ("up_20@2", "z_displacement", 1, 4.5), ("slow_10@8", "mean_speed", -1, -2.5)]
    table = report.grid_table(rows)
    assert table[2] == ("| up_20@2 | z_displacement (+ expected) | +0.0400 [+0.0300, +0.0500] | +0.000 ± 1.000 | "
                        "49 | +4.50 | **0.020** (≥ 0.020) | **0.040** |")  # Holm: 2 x 0.02
    assert table[3] == ("| slow_10@8 | mean_speed (− expected) | -0.2000 | +0.000 ± 1.000 | 49 | -2.50 | 0.300 "
                        "(≥ 0.020) | 0.300 |")


def test_the_closed_loop_page_of_the_kept_rerun(tmp_path):
    """The page of the closed-loop rerun kept in docs/mini_vla/grids: the own metric first, with
    its N and its rank p as recorded in statistics.json, and the trajectories plotted."""
    from nnsight_vla_mini import report

    run = Path(__file__).resolve().parent.parent / "docs" / "mini_vla" / "grids" / "closed-loop-same-scene"
    recorded = json.loads((run / "statistics.json").read_text())["vs_random"]["up_20@2"]["z_displacement"]
    page = report.closed_page(run, tmp_path).read_text().splitlines()
    own = next(line for line in page if line.startswith("| up_20@2 |"))
    assert "**z_displacement**" in own and f"| {recorded['controls']} |" in own
    assert f"**{recorded['p']:.3f}** (≥ {recorded['p_min']:.3f})" in own
    assert (tmp_path / "closed-loop-same-scene-trajectories.png").stat().st_size > 10_000


def test_the_open_loop_grid_of_the_kept_rerun():
    """The open-loop rerun kept in docs/mini_vla/grids: every cell with 99 controls and its
    Holm p over the cells run; cells whose controls all shifted as the cluster did read z 0."""
    from nnsight_vla_mini import report

    rows = report.grid_rows(Path(__file__).resolve().parent.parent / "docs" / "mini_vla" / "grids" / "open-loop-99")
    by_cell = {r["steering"]: r for r in rows}
    assert len(rows) >= 32 and {r["controls"] for r in rows} == {99}
    assert all(r["p_holm"] >= r["p"] for r in rows) and min(r["p"] for r in rows) == by_cell["up_20@2"]["p"] == 0.06
    assert by_cell["up_40@8"]["random_std"] < 1e-12 and by_cell["up_40@8"]["z"] == 0.0
