"""Activations collected to disk from a LeRobotDataset built here, resumed bit for bit; probes recover a planted direction."""

import numpy as np
import pytest
import torch

import nnsight_vla
from nnsight_vla import InputError, Observation, Site, VLAError, collect
from nnsight_vla.probes import DatasetFrames, ObservationFrames, ShardFolder, collect_to_disk

from conftest import random_image

pytestmark = pytest.mark.xdist_group("probes")  # one worker builds the module's fixtures

EPISODES, FRAMES, PLANTED = 10, 8, 3  # PLANTED: the state dimension the planted direction carries
EXPERT_0 = Site(0, "resid", "expert")
VLM_LAST = Site(2, "resid", "vlm")


def make_dataset(root, episodes=EPISODES, frames=FRAMES, cameras=("image", "image2"), state=8, seed=0):
    """A LeRobotDataset written with lerobot's own API: random frames, random states and actions."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    image = {"dtype": "image", "shape": (64, 64, 3), "names": ["height", "width", "channel"]}
    features = {f"observation.images.{c}": image for c in cameras}
    if state:
        features["observation.state"] = {"dtype": "float32", "shape": (state,), "names": None}
    features["action"] = {"dtype": "float32", "shape": (7,), "names": None}
    dataset = LeRobotDataset.create("local/test", fps=10, features=features, root=root, use_videos=False)
    rng = np.random.default_rng(seed)
    for episode in range(episodes):
        for _ in range(frames):
            frame = {f"observation.images.{c}": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for c in cameras}
            if state:
                frame["observation.state"] = (rng.standard_normal(state) / 4).astype(np.float32)
            frame["action"] = rng.uniform(-1, 1, 7).astype(np.float32)
            frame["task"] = ["pick up the black bowl", "open the top drawer"][episode % 2]
            dataset.add_frame(frame)
        dataset.save_episode()
    dataset.finalize()
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "planted")


@pytest.fixture(scope="module")
def planted():
    """tiny-pi0 whose expert carries state[PLANTED] along a known unit direction ``u`` after
    layer 0 at the state token: ``state_proj`` writes ``c * state[PLANTED]`` along ``u`` and
    layer 0's attention and MLP write nothing along ``u``."""
    model = nnsight_vla.load("tiny-pi0")
    policy = model._module.model
    generator = torch.Generator().manual_seed(1)
    u = torch.randn(policy.state_proj.out_features, generator=generator)
    u /= u.norm()
    away = torch.eye(len(u)) - torch.outer(u, u)
    with torch.no_grad():
        weight = policy.state_proj.weight
        along = torch.zeros(weight.shape[1])
        along[PLANTED] = 3.0
        weight.copy_(away @ weight + torch.outer(u, along))
        layer = policy.paligemma_with_expert.gemma_expert.model.layers[0]
        layer.self_attn.o_proj.weight.copy_(away @ layer.self_attn.o_proj.weight)
        layer.mlp.down_proj.weight.copy_(away @ layer.mlp.down_proj.weight)
    return model, u


@pytest.fixture(scope="module")
def collected(planted, dataset, tmp_path_factory):
    model, _ = planted
    out = tmp_path_factory.mktemp("acts") / "planted"
    collect_to_disk(model, dataset, [EXPERT_0, VLM_LAST], out, calls=[0], positions=[0], shard_rows=16,
                    progress=False, seed=0)
    return out


def test_dataset_collection_equals_collect_on_the_same_frames(planted, dataset, collected):
    model, _ = planted
    store = ShardFolder.read(collected)
    assert len(store.shards()) == 5 and store.manifest["source"]["frames"] == EPISODES * FRAMES
    first = store.manifest["shards"]["shard-000000000.safetensors"]  # the manifest indexes each shard
    assert first["rows"] == 16 and first["episodes"] == [0, 1] and first["frames"] == [0, FRAMES - 1]
    assert first["targets"]["action"] == ["float32", [7]] and first["targets"]["gripper"] == ["int64", []]
    data = store.load()
    frames = DatasetFrames(dataset)
    observations = [f.observation for f in frames.frames()][:3]
    fresh = collect(model, observations, [EXPERT_0, VLM_LAST], calls=[0], positions=[0], seed=0)
    for site in (EXPERT_0, VLM_LAST):
        np.testing.assert_array_equal(data["activations"][site][:3], fresh[site].numpy())
    assert data["episode"].tolist() == np.repeat(np.arange(EPISODES), FRAMES).tolist()
    assert data["frame"].tolist() == np.tile(np.arange(FRAMES), EPISODES).tolist()
    targets = data["targets"]
    assert {"action", "state", "gripper", "ee_velocity", "task"} <= set(targets)
    np.testing.assert_array_equal(targets["gripper"], (targets["action"][:, -1] > 0).astype(np.int64))
    np.testing.assert_allclose(targets["ee_velocity"][0], (targets["state"][1, :3] - targets["state"][0, :3]) * 10,
                               rtol=1e-6)
    assert targets["task"].tolist()[: FRAMES + 1] == [0] * FRAMES + [1]


def test_an_interrupted_collection_resumes_to_the_same_arrays(tiny, tmp_path):
    observations = [Observation(random_image(i, 64), "pick up the black bowl") for i in range(6)]
    sites = [Site(0, "resid"), Site(1, "neurons")]
    whole = collect_to_disk(tiny, observations, sites, tmp_path / "whole", shard_rows=2, progress=False).load()

    class Interrupted(ObservationFrames):
        def frames(self, start=0):
            for i, frame in enumerate(super().frames(start)):
                if start == 0 and i == 3:  # mid-shard: rows 2 and 3 of shard 1 are never written
                    raise KeyboardInterrupt
                yield frame

    with pytest.raises(KeyboardInterrupt) as interrupted:
        collect_to_disk(tiny, Interrupted(observations), sites, tmp_path / "cut", shard_rows=2, progress=False)
    assert interrupted.value.__notes__ == [f"2 of 6 frames are saved in {tmp_path / 'cut'}; run the same collect_to_disk "
                                           "with resume=True (CLI: --resume) to continue from them."]
    store = ShardFolder.read(tmp_path / "cut")
    assert [p.name for p in store.shards()] == ["shard-000000000.safetensors"] and store.rows() == 2
    assert list(store.manifest["shards"]) == ["shard-000000000.safetensors"]
    assert not list(store.folder.glob("*.tmp"))
    with pytest.raises(InputError, match="resume=True"):
        collect_to_disk(tiny, Interrupted(observations), sites, tmp_path / "cut", shard_rows=2, progress=False)
    resumed = collect_to_disk(tiny, Interrupted(observations), sites, tmp_path / "cut", shard_rows=2,
                              progress=False, resume=True).load()
    for site in sites:
        assert np.array_equal(resumed["activations"][site], whole["activations"][site])
    assert resumed["frame"].tolist() == whole["frame"].tolist() == list(range(6))


def test_bad_inputs_are_refused_before_anything_is_written(planted, tiny, dataset, tmp_path):
    model, _ = planted
    out = tmp_path / "bad"
    with pytest.raises(VLAError, match="layer 7"):
        collect_to_disk(model, dataset, [Site(7, "resid", "expert")], out, progress=False)
    with pytest.raises(InputError, match="no column"):
        collect_to_disk(model, DatasetFrames(dataset, columns=["speed"]), [EXPERT_0], out, progress=False)
    total = len(set(DatasetFrames(dataset).episodes.tolist()))
    for bad in ([total], [-1], [], ["0"]):
        with pytest.raises(InputError, match=rf"the dataset at .* has {total} episodes \(0..{total - 1}\)"):
            DatasetFrames(dataset, episodes=bad)
    with pytest.raises(InputError, match=r"cameras \['image', 'image2'\] are not the model's \['image'\]"):
        collect_to_disk(tiny, dataset, [Site(0, "resid")], out, progress=False)
    stateless = make_dataset(tmp_path / "stateless", episodes=1, frames=1, state=0)
    with pytest.raises(InputError, match="takes a 8-D state, the dataset has none"):
        collect_to_disk(model, DatasetFrames(stateless), [EXPERT_0], out, progress=False)
    one_camera = make_dataset(tmp_path / "one", episodes=1, frames=1, cameras=("image",), state=0)
    with pytest.raises(InputError, match="not a LeRobotDataset"):
        collect_to_disk(model, tmp_path / "nowhere", [EXPERT_0], out, progress=False)
    with pytest.raises(InputError, match="has no frames"):
        collect_to_disk(model, make_dataset(tmp_path / "empty", episodes=0), [EXPERT_0], out, progress=False)
    with pytest.raises(InputError, match="observations is empty"):
        collect_to_disk(model, ObservationFrames([]), [EXPERT_0], out, progress=False)
    assert not out.exists() or not list(out.glob("*.safetensors"))
    mine = tmp_path / "mine"
    collect_to_disk(tiny, DatasetFrames(one_camera), [Site(0, "resid")], mine, progress=False)
    with pytest.raises(InputError, match="other settings.*model"):
        collect_to_disk(model, dataset, [EXPERT_0], mine, progress=False, resume=True)
    with pytest.raises(InputError, match="holds no complete shard|not empty"):
        collect_to_disk(model, dataset, [EXPERT_0], tmp_path, progress=False)


def test_probes_recover_the_planted_direction(planted, collected, tmp_path):
    from nnsight_vla.probes import probe_folder, probe_steering

    model, u = planted
    target = f"state[{PLANTED}]"
    results = probe_folder(collected, targets=[target, "gripper"], progress=False)
    table = results.table.set_index(["tower", "layer", "target"])
    planted_row, blind_row = table.loc[("expert", 0, target)], table.loc[("vlm", 2, target)]
    assert planted_row["score"] >= 0.99
    # the VLM never sees Pi0's state: its probe is at chance
    assert blind_row["score"] < 0.2 and blind_row["score_low"] <= blind_row["chance_high"]
    direction = results.direction(EXPERT_0, target, call=0)
    cosine = float(direction @ u / direction.norm())
    assert abs(cosine) >= 0.99
    steering = probe_steering(results, EXPERT_0, target, alpha=2.0)
    assert steering.tower == "expert" and steering.layer == 0
    assert float(steering.direction @ u) == pytest.approx(np.sign(cosine) * abs(cosine), abs=1e-5)
    results.save(tmp_path / "probes")
    assert {p.name for p in (tmp_path / "probes").iterdir()} >= {"probes.csv", "probes.json", "probes.png"}
    with pytest.raises(InputError, match="no target 'speed'"):
        probe_folder(collected, targets=["speed"], progress=False)
    with pytest.raises(InputError, match="residual stream"):
        probe_steering(results, Site(0, "neurons", "expert"), target, alpha=1.0)


@pytest.mark.slow
def test_cli_collect_then_probe(dataset, tmp_path, capsys):
    from nnsight_vla.cli import main

    acts, out = tmp_path / "acts", tmp_path / "probes"
    assert main(["collect", "tiny-pi0", "--data", str(dataset), "--episodes", "0", "1", "2", "3", "4",
                 "--sites", "resid@expert:0-1", "--calls", "0", "--positions", "0", "--shard-rows", "16",
                 "--out", str(acts)]) == 0
    assert "wrote 40 rows at 2 sites in 3 shards" in capsys.readouterr().out
    assert main(["probe", str(acts), "--target", "action[0]", "gripper", "--shuffles", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "action[0]: best expert resid layer" in printed and (out / "probes.png").is_file()
    assert main(["collect", "tiny-pi0", "--data", str(dataset), "--sites", "resid@arm:0", "--out", str(tmp_path / "x")]) == 2
    assert "has towers ['expert', 'vlm'], not 'arm'" in capsys.readouterr().err


def test_constant_dimensions_of_a_target_are_left_out(tiny, tmp_path):
    from nnsight_vla.probes import probe_folder

    observations = [Observation(random_image(i, 64), "pick up the black bowl") for i in range(10)]
    vec = np.stack([np.linspace(-1, 1, 10), np.ones(10)], axis=1)  # dimension 1 never varies
    frames = ObservationFrames(observations, targets={"vec": vec})
    collect_to_disk(tiny, frames, [Site(0, "resid")], tmp_path / "acts", calls=[0], progress=False)
    with pytest.warns(UserWarning, match=r"vec\[1\] are constant"):
        results = probe_folder(tmp_path / "acts", targets=["vec"], shuffles=0, progress=False)
    assert results.table["target"].tolist() == ["vec[0]"]
    with pytest.warns(UserWarning, match=r"vec\[1\] are constant"):  # one name is one target, not its letters
        assert probe_folder(tmp_path / "acts", targets="vec", shuffles=0, progress=False).table.equals(results.table)
    with pytest.raises(InputError, match="constant"):
        probe_folder(tmp_path / "acts", targets=["vec[1]"], shuffles=0, progress=False)


def test_shuffles_zero_leaves_chance_out_for_classification_too():
    from nnsight_vla.probes import fit_probes

    rng = np.random.default_rng(0)
    episodes = np.repeat(np.arange(10), 6)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    results = fit_probes({(Site(0, "resid"), 0): x}, {"grip": (x[:, 0] > 0).astype(np.int64)}, episodes,
                         shuffles=0, progress=False)
    row = results.table.iloc[0]
    assert row["metric"] == "balanced_accuracy" and row["score"] > 0.8 and np.isnan(row["chance"])


def test_a_call_refused_mid_collection_leaves_nothing_that_blocks_the_corrected_one(planted, dataset, tmp_path):
    """Errors found only while predicting (calls that never run, targets the model cannot
    give) come after the folder was opened: the folder is put back as it was."""
    model, _ = planted
    out = tmp_path / "acts" / "x7"
    with pytest.raises(InputError, match=r"calls \[10\] never ran"):
        collect_to_disk(model, dataset, [EXPERT_0], out, calls=[10], progress=False)
    assert not out.exists()
    with pytest.raises(InputError, match="has no action-token bins"):
        collect_to_disk(model, dataset, [EXPERT_0], out, calls=[9], targets=["action_bins"], progress=False)
    assert not out.exists()
    store = collect_to_disk(model, dataset, [EXPERT_0], out, calls=[9], progress=False)
    assert store.rows() == len(DatasetFrames(dataset))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(InputError, match="already holds"):  # an existing collection is left alone
        collect_to_disk(model, dataset, [EXPERT_0], out, calls=[9], progress=False)
    assert sorted(p.name for p in out.iterdir()) == before
