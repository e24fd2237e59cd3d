"""robosuite's lift demos replayed into a LeRobotDataset, checked against the hdf5 and the sim."""

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from nnsight_vla.errors import InputError
from nnsight_vla.probes import demos as demos_module
from nnsight_vla.probes.demos import convert_robosuite_demos, resolve_demos

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("probes_demos")]  # one worker builds the module's fixtures

REPO = "local/lift_test"
EPISODES, MAX_FRAMES, STRIDE = [0, 1], 4, 7


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("lift") / "dataset"
    converted = convert_robosuite_demos("lift", root, repo_id=REPO, episodes=EPISODES,
                                        max_frames=MAX_FRAMES, stride=STRIDE, progress=False)
    assert converted == root
    return root


@pytest.fixture(scope="module")
def recorded():
    """Per converted episode: the recorded states and actions at the kept steps, read with h5py."""
    with h5py.File(resolve_demos("lift"), "r") as f:
        env_info = json.loads(f["data"].attrs["env_info"])
        names = sorted(f["data"], key=lambda n: int(n.split("_")[1]))
        steps = np.arange(0, MAX_FRAMES * STRIDE, STRIDE)
        groups = [f["data"][names[e]] for e in EPISODES]
        episodes = [(g["states"][()][steps], g["actions"][()][steps]) for g in groups]
    return env_info, episodes


@pytest.fixture(scope="module")
def sim(recorded):
    """A second Lift environment built like the converter's (numpy seed 0, so the same cube)."""
    from nnsight_vla.eval.libero import choose_renderer

    choose_renderer()
    import robosuite

    numpy_state = np.random.get_state()
    np.random.seed(0)
    env = robosuite.make(**recorded[0], has_renderer=False, has_offscreen_renderer=True,
                         use_camera_obs=True, ignore_done=True, camera_heights=64, camera_widths=64,
                         camera_names=["agentview", "robot0_eye_in_hand"])
    env.reset()
    np.random.set_state(numpy_state)
    yield env
    env.close()


def truth(env, state):
    """Grip-site position, hand rotation matrix, finger joints and raw renders read from the sim."""
    env.sim.set_state_from_flattened(state)
    env.sim.forward()
    model, data = env.sim.model, env.sim.data
    pos = data.site_xpos[model.site_name2id("gripper0_grip_site")].copy()
    rot = data.body_xmat[model.body_name2id("robot0_right_hand")].reshape(3, 3).copy()
    fingers = [data.qpos[model.get_joint_qpos_addr(f"gripper0_finger_joint{i}")] for i in (1, 2)]
    obs = env._get_observations(force_update=True)
    return pos, rot, np.array(fingers), obs["agentview_image"], obs["robot0_eye_in_hand_image"]


def as_uint8(image):
    return (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_dataset_matches_the_recording_and_the_simulator(converted, recorded, sim):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from scipy.spatial.transform import Rotation

    dataset = LeRobotDataset(REPO, root=converted)
    assert len(dataset) == dataset.meta.total_frames == len(EPISODES) * MAX_FRAMES
    assert dataset.meta.total_episodes == len(EPISODES) and not (converted / "videos").exists()
    features = dataset.meta.features
    for key in ("observation.images.image", "observation.images.image2"):
        assert features[key]["dtype"] == "image" and tuple(features[key]["shape"]) == (64, 64, 3)
    for key, shape in (("observation.state", (8,)), ("action", (7,))):
        assert features[key]["dtype"] == "float32" and tuple(features[key]["shape"]) == shape

    agentviews = []
    for i in range(len(dataset)):
        item = dataset[i]
        episode, t = divmod(i, MAX_FRAMES)
        states, actions = recorded[1][episode]
        assert item["episode_index"].item() == episode and item["frame_index"].item() == t
        assert item["task"] == "lift the red cube"
        assert item["action"].dtype == item["observation.state"].dtype == torch.float32
        np.testing.assert_allclose(item["action"].numpy(), actions[t], atol=1e-6)
        pos, rot, fingers, agentview, wrist = truth(sim, states[t])
        state = item["observation.state"].numpy().astype(np.float64)
        np.testing.assert_allclose(state[:3], pos, atol=1e-6)
        np.testing.assert_allclose(Rotation.from_rotvec(state[3:6]).as_matrix(), rot, atol=1e-5)
        np.testing.assert_allclose(state[6:], fingers, atol=1e-6)
        image = as_uint8(item["observation.images.image"])
        image2 = as_uint8(item["observation.images.image2"])
        assert image.shape == image2.shape == (64, 64, 3)
        np.testing.assert_array_equal(image, agentview[::-1, ::-1])  # rotated 180°, as LIBERO
        np.testing.assert_array_equal(image2, wrist[::-1, ::-1])
        agentviews.append(image)
    assert all(np.abs(a.astype(int) - agentviews[0]).mean() > 0.1 for a in agentviews[1:MAX_FRAMES])


def test_bad_inputs_are_refused(tmp_path, converted):
    not_demo = tmp_path / "other.hdf5"
    with h5py.File(not_demo, "w") as f:
        f.create_group("data").create_dataset("x", data=[1])
    text = tmp_path / "notes.hdf5"
    text.write_text("not hdf5")
    cases = [
        (dict(demos=tmp_path / "missing.hdf5"), "no demo file at"),
        (dict(demos=not_demo), "is not a robosuite demo file"),
        (dict(demos=text), "is not a robosuite demo file"),
        (dict(episodes=[3]), "has episodes 0..2"),
        (dict(episodes=[-1]), "has episodes 0..2"),
        (dict(episodes=[]), "episodes is empty"),
        (dict(max_frames=0), "max_frames must be an integer >= 1"),
        (dict(stride=0), "stride must be an integer >= 1"),
        (dict(stride=1.5), "stride must be an integer >= 1"),
        (dict(root=converted), "exists and is not empty; pass overwrite=True"),
        (dict(root=tmp_path, overwrite=True), "holds no LeRobotDataset"),
    ]
    for kwargs, message in cases:
        kwargs = {"demos": "lift", "root": tmp_path / "out", "max_frames": 2, **kwargs}
        with pytest.raises(InputError, match=message):
            convert_robosuite_demos(**kwargs, progress=False)
        assert not (tmp_path / "out").exists()


def test_a_failed_conversion_leaves_no_dataset(tmp_path, converted, monkeypatch):
    observe, calls = demos_module._observe, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:  # mid-way through the second episode
            raise RuntimeError("renderer died")
        return observe(*args)

    monkeypatch.setattr(demos_module, "_observe", failing)
    old = tmp_path / "old"
    shutil.copytree(converted, old)
    for root, overwrite in ((tmp_path / "new", False), (old, True)):
        calls.clear()
        with pytest.raises(RuntimeError, match="renderer died"):
            convert_robosuite_demos("lift", root, episodes=[0, 1], max_frames=2,
                                    overwrite=overwrite, progress=False)
    assert not (tmp_path / "new").exists()
    info = "meta/info.json"
    assert (old / info).read_text() == (converted / info).read_text()  # the old dataset untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # nothing half-written beside
