"""Closed-loop LIBERO evaluation end to end on tiny models: paired conditions, files, plots, videos."""

import json

import numpy as np
import pytest

import nnsight_vla
from nnsight_vla import Clamp, InputError
from nnsight_vla.eval import evaluate, random_control


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, steering",
    [("tiny-openvla", Clamp([(1, 3), (1, 17)], 8.0)), ("tiny-pi0", Clamp([(1, 3)], 4.0, tower="expert"))],
)
def test_evaluate_end_to_end(name, steering, tmp_path):
    model = nnsight_vla.load(name)
    result = evaluate(model, "libero_spatial", [0], episodes=1, steering=steering, max_steps=13,
                      camera_size=64, record_video=True, out_dir=tmp_path)
    assert [r["condition"] for r in result.episodes] == ["baseline", "steered", "random"]
    starts = {tuple(r["path"][0]) for r in result.episodes}
    assert len(starts) == 1  # every condition starts from the same init state
    for row in result.episodes:
        assert row["length"] == 13 and len(row["actions"]) == 13 and len(row["path"]) == 14
    assert result.episodes[0]["actions"] != result.episodes[1]["actions"]  # the steering acted
    files = {p.name for p in tmp_path.iterdir()}
    assert {"episodes.jsonl", "episodes.csv", "summary.json", "statistics.json", "trajectories.png", "metrics.png"} <= files
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"baseline", "steered", "random"}
    stats = json.loads((tmp_path / "statistics.json").read_text())
    assert stats["steered"]["path_length"]["note"] == "one pair: no test"
    rows = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert rows[1]["path_length"] == pytest.approx(result.episodes[1]["path_length"])


def test_random_control_keeps_layers_and_size(tiny):
    steering = [Clamp([(1, 3), (1, 17), (0, 42)], 8.0), nnsight_vla.Add(np.ones(64), layer=0, alpha=2.0)]
    control = random_control(steering, seed=0, model=tiny)
    assert control[0].cluster.by_layer().keys() == {0, 1} and len(control[0].cluster) == 3
    assert not set(control[0].cluster) & set(steering[0].cluster)
    assert float(control[1].direction.norm()) == pytest.approx(8.0)  # |ones(64)| = 8
    assert control[0].value == 8.0 and steering[0].cluster.pairs[0] == (1, 3)  # the original is kept


@pytest.mark.parametrize(
    "kwargs, message",
    [({"suite": "libero_100"}, "unknown LIBERO suite"), ({"tasks": [12]}, "tasks 0..9"),
     ({"controls": ("baseline", "shuffled")}, "unknown controls"), ({"episodes": 0}, "at least 1"),
     ({"workers": 0}, "workers must be at least 1"),
     ({"steering": Clamp([(5, 0)], 1.0)}, "layer 5 is out of range")],
)
def test_bad_inputs(tiny, kwargs, message):
    args = {"suite": "libero_spatial", "tasks": [0], "episodes": 1, **kwargs}
    with pytest.raises((InputError, nnsight_vla.LayerIndexError), match=message):
        evaluate(tiny, **args)


@pytest.mark.slow
def test_cli_eval(tmp_path, tiny, capsys):
    from nnsight_vla import NeuronCluster
    from nnsight_vla.cli import main

    NeuronCluster([(1, 3), (0, 42)], name="up_2", tokens=[["up"], ["up"]], d_mlp=256).to_yaml(tmp_path / "c.yaml")
    out = tmp_path / "run"
    argv = ["eval", "tiny-openvla", "--suite", "libero_spatial", "--tasks", "0", "--episodes", "1",
            "--steer", f"{tmp_path / 'c.yaml'}:6.0", "--max-steps", "11", "--camera-size", "64", "--out", str(out)]
    assert main(argv) == 0
    assert "steered" in json.loads((out / "summary.json").read_text())
    assert f"wrote {out}" in capsys.readouterr().out
    assert main(argv[:-2] + ["--steer", f"{tmp_path / 'c.yaml'}:fast", "--out", str(out)]) == 2
    assert "is not a number" in capsys.readouterr().err


@pytest.mark.slow
def test_rollout_collection_equals_a_fresh_trace_of_the_same_observations(tiny, tmp_path, monkeypatch):
    from nnsight_vla import Site, collect
    from nnsight_vla.probes import RolloutCollector, ShardFolder

    seen = []
    predict = type(tiny).predict_action

    def spy(self, observation, **options):
        seen.append(observation)
        return predict(self, observation, **options)

    monkeypatch.setattr(type(tiny), "predict_action", spy)
    sites = [Site(0, "resid"), Site(1, "neurons")]
    collector = RolloutCollector(sites, tmp_path / "acts", calls="actions", positions="last")
    result = evaluate(tiny, "libero_spatial", [0], episodes=1, controls="baseline", max_steps=2,
                      camera_size=64, out_dir=tmp_path / "run", collect=collector)
    monkeypatch.undo()
    store = ShardFolder.read(tmp_path / "acts")
    assert [p.name for p in store.shards()] == ["baseline-task000-ep000.safetensors"]
    data = store.load()
    fresh = collect(tiny, seen, sites, calls="actions", positions="last")
    assert len(seen) == 2 and data["frame"].tolist() == [0, 1] and data["episode"].tolist() == [0, 0]
    for site in sites:
        np.testing.assert_array_equal(data["activations"][site], fresh[site].numpy())
    targets = data["targets"]
    np.testing.assert_array_equal(targets["action"], np.asarray(result.episodes[0]["actions"], np.float32))
    path = np.asarray(result.episodes[0]["path"])
    np.testing.assert_allclose(targets["ee_pose"][:, :3], path[:2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(targets["ee_velocity"], np.diff(path, axis=0) * 20, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(targets["gripper"], (targets["action"][:, -1] > 0).astype(np.int64))
    assert targets["state"].shape == (2, 8) and targets["task"].tolist() == [0, 0]
    assert targets["action_bins"].shape == (2, 7) and targets["action_bins"].dtype == np.int64
    # resumed with the evaluation: nothing reruns, the shard stays; another collection there is refused
    shard = store.shards()[0]
    written = shard.stat().st_mtime_ns
    again = evaluate(tiny, "libero_spatial", [0], episodes=1, controls="baseline", max_steps=2, camera_size=64,
                     out_dir=tmp_path / "run", collect=collector, resume=True)
    assert again.episodes == result.episodes and shard.stat().st_mtime_ns == written
    with pytest.raises(InputError, match="other settings"):
        evaluate(tiny, "libero_spatial", [0], episodes=1, controls="baseline", max_steps=2, camera_size=64,
                 out_dir=tmp_path / "run", resume=True, collect=RolloutCollector(sites[:1], tmp_path / "acts"))
