"""robosuite's recorded human demonstrations replayed with rendering into a LeRobotDataset."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, SetupError
from ..paths import writable_folder

#: Short names of single-arm demo files robosuite ships (in models/assets/demonstrations).
DEMOS = {"lift": "lift/demo.hdf5", "wipe": "wipe/panda/demo.hdf5"}
#: Default instruction per robosuite environment.
INSTRUCTIONS = {"Lift": "lift the red cube", "Wipe": "wipe the markings off the table"}
#: Dataset image key -> robosuite camera (as in LIBERO: agentview, then the wrist camera).
CAMERAS = {"observation.images.image": "agentview",
           "observation.images.image2": "robot0_eye_in_hand"}
STATE_NAMES = ["eef_x", "eef_y", "eef_z", "eef_ax", "eef_ay", "eef_az", "finger_1", "finger_2"]
#: OSC_POSE actions: position and axis-angle deltas, then the gripper (absent for Wipe's tool).
ACTION_NAMES = ["dx", "dy", "dz", "dax", "day", "daz", "gripper"]


def resolve_demos(demos: str | Path) -> Path:
    """The demo.hdf5 that ``demos`` names: a path, or a short name from `DEMOS`."""
    if str(demos) in DEMOS:
        import robosuite

        return Path(robosuite.__file__).parent / "models/assets/demonstrations" / DEMOS[str(demos)]
    path = Path(demos).expanduser()
    if not path.is_file():
        raise InputError(f"no demo file at {path}; pass a demo.hdf5 or one of {sorted(DEMOS)}.")
    return path


def _check_count(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise InputError(f"{name} must be an integer >= {least}, got {value!r}.")


def _read_demos(path: Path, episodes, stride: int, max_frames: int | None) -> tuple[dict, list]:
    """The file's ``env_info`` and, per chosen episode, its subsampled (states, actions)."""
    import h5py

    not_demo = f"{path} is not a robosuite demo file (`data` with `env_info` and demo_N episodes)"
    fix = "pass a demo.hdf5 written by robosuite's collect_human_demonstrations"
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{not_demo}: {error}; {fix}.") from error
    with f:
        data = f.get("data")
        if not isinstance(data, h5py.Group) or "env_info" not in data.attrs:
            raise InputError(f"{not_demo}; {fix}.")
        names = sorted((n for n in data if n.startswith("demo_")), key=lambda n: int(n[5:]))
        if not names or any({"states", "actions"} - set(data[n]) for n in names):
            raise InputError(f"{not_demo}: no episodes with `states` and `actions`; {fix}.")
        chosen = range(len(names)) if episodes is None else list(episodes)
        if not chosen:
            raise InputError("episodes is empty; pass episode indices, or None for all of them.")
        for e in chosen:
            bad = isinstance(e, bool) or not isinstance(e, (int, np.integer))
            if bad or not 0 <= e < len(names):
                raise InputError(f"{path} has episodes 0..{len(names) - 1} ({', '.join(names)}), "
                                 f"got {e!r}; pass indices in that range.")
        out = []
        for e in chosen:
            group = data[names[e]]
            steps = np.arange(0, len(group["actions"]), stride)[:max_frames]
            out.append((group["states"][()][steps], group["actions"][()][steps]))
        return json.loads(data.attrs["env_info"]), out


def _make_env(env_info: dict, camera_size: int) -> Any:
    """The demo's environment, rendering both cameras offscreen (headless backend picked first)."""
    from ..eval.libero import quiet_robosuite, choose_renderer

    robots = env_info.get("robots")
    robots = [robots] if isinstance(robots, str) else list(robots or [])
    if len(robots) != 1:
        raise InputError(f"this demo drives {len(robots)} robots; only single-arm demos convert.")
    quiet_robosuite()
    choose_renderer()
    try:
        import robosuite
    except ImportError as error:
        raise SetupError("robosuite is not installed; run `make env` (lerobot[libero]).") from error
    settings = dict(has_renderer=False, has_offscreen_renderer=True, use_camera_obs=True,
                    ignore_done=True, camera_names=list(CAMERAS.values()),
                    camera_heights=camera_size, camera_widths=camera_size)
    numpy_state = np.random.get_state()  # robosuite draws e.g. Lift's cube size from numpy's
    np.random.seed(0)  # global generator: a fixed seed builds the same scene on every run
    try:
        env = robosuite.make(**{**env_info, **settings})
        env.reset()
    finally:
        np.random.set_state(numpy_state)
    return env


def _observe(env: Any, state: np.ndarray, to_state: Any) -> dict:
    """The camera images and 8-D state of the simulator set to the flattened ``state``."""
    import torch

    env.sim.set_state_from_flattened(state)
    env.sim.forward()
    obs = env._get_observations(force_update=True)
    fingers = obs["robot0_gripper_qpos"]
    if fingers.size == 0:  # a gripper without fingers (Wipe's wiping tool)
        fingers = np.zeros(2)
    elif fingers.size != 2:
        raise InputError(f"the gripper has {fingers.size} joints; the 8-D state needs two fingers.")

    def batch(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x, dtype=np.float32))[None]

    robot = {"eef": {"pos": batch(obs["robot0_eef_pos"]), "quat": batch(obs["robot0_eef_quat"])},
             "gripper": {"qpos": batch(fingers)}}
    state = to_state({"observation.robot_state": robot})["observation.state"][0].numpy()
    frame = {"observation.state": state}
    for key, camera in CAMERAS.items():  # rotated 180°, as lerobot's LIBERO processor does
        frame[key] = np.ascontiguousarray(obs[f"{camera}_image"][::-1, ::-1])
    return frame


def convert_robosuite_demos(
    demos: str | Path,
    root: str | Path,
    *,
    repo_id: str = "local/robosuite_lift",
    instruction: str | None = None,
    episodes: Sequence[int] | None = None,
    max_frames: int | None = None,
    stride: int = 1,
    camera_size: int = 64,
    fps: int = 20,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Replay a robosuite demo file in the simulator and write it as a LeRobotDataset at ``root``.

    ``demos``: a demo.hdf5 path or a short name (``"lift"``, ``"wipe"``). Frame ``t`` is the
    simulator set to recorded state ``t``, with the action recorded there. ``episodes``: indices
    into the file's episodes sorted by number (None: all); each keeps every ``stride``-th step,
    at most ``max_frames`` of them. ``instruction`` defaults to `INSTRUCTIONS` (Lift: "lift the
    red cube"; Wipe: "wipe the markings off the table"). ``fps`` is stored as given; the demos
    run at 20 Hz, so pass ``20 / stride`` for true timestamps.

    Features: ``observation.images.image`` (agentview) and ``observation.images.image2`` (wrist),
    uint8 ``(camera_size, camera_size, 3)`` images (PNG, no video), robosuite's raw (upside-down,
    OpenGL) render rotated 180° as lerobot's LIBERO processor hands LIBERO frames to policies;
    ``observation.state`` float32 (8,): end-effector position, orientation as axis-angle
    (lerobot's LIBERO conversion of robosuite's xyzw quaternion), two finger joints (zeros for a
    fingerless tool); ``action`` float32 as recorded (7-D OSC_POSE for Lift, 6-D for Wipe).
    Lift's cube size is drawn when the scene is built, not stored in the states: it may differ
    from the recording's by up to 10% (numpy seed 0 makes conversions repeat exactly).

    The dataset is written in a hidden folder beside ``root`` and moved there at the end, so a
    failed conversion leaves no dataset behind; ``overwrite=True`` replaces only a folder that
    holds a LeRobotDataset (``meta/info.json``). Example:
        >>> convert_robosuite_demos("lift", "data/lift", episodes=[0], max_frames=50)
    """
    _check_count("stride", stride, 1)
    _check_count("camera_size", camera_size, 8)
    if max_frames is not None:
        _check_count("max_frames", max_frames, 1)
    root = writable_folder(root, "dataset root")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise InputError(f"dataset root {root} exists and is not empty; pass overwrite=True "
                             "or another root.")
        if not (root / "meta/info.json").is_file():
            raise InputError(f"{root} holds no LeRobotDataset (no meta/info.json), so "
                             "overwrite=True will not delete it; empty it or pick another root.")
    env_info, chosen = _read_demos(resolve_demos(demos), episodes, int(stride), max_frames)
    env_name = env_info.get("env_name", "robosuite")
    task = instruction or INSTRUCTIONS.get(env_name, f"do the {env_name} task")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.processor.env_processor import LiberoProcessorStep
    from tqdm.auto import tqdm

    action_dim = chosen[0][1].shape[1]
    image = {"dtype": "image", "shape": (camera_size, camera_size, 3),
             "names": ["height", "width", "channel"]}
    features = {**dict.fromkeys(CAMERAS, image),
                "observation.state": {"dtype": "float32", "shape": (8,), "names": STATE_NAMES},
                "action": {"dtype": "float32", "shape": (action_dim,),
                           "names": ACTION_NAMES[:action_dim]}}
    env = _make_env(env_info, camera_size)
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    dataset = None
    try:
        dataset = LeRobotDataset.create(repo_id, fps, features, root=scratch / "dataset",
                                        robot_type=env.robots[0].name.lower(), use_videos=False)
        to_state = LiberoProcessorStep().observation
        frames = sum(len(actions) for _, actions in chosen)
        with tqdm(total=frames, desc="replaying demos", disable=not progress) as bar:
            for states, actions in chosen:
                for state, action in zip(states, actions):
                    frame = _observe(env, state, to_state)
                    dataset.add_frame({**frame, "action": action.astype(np.float32), "task": task})
                    bar.update()
                dataset.save_episode()
        dataset.finalize()
        if root.exists():
            root.rename(scratch / "old")  # an empty folder, or the dataset overwrite=True replaces
        (scratch / "dataset").rename(root)
    finally:
        if dataset is not None:
            with contextlib.suppress(Exception):
                dataset.finalize()
        env.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return root
