"""LIBERO set-up offline (no prompt, no download) and a real simulator smoke run."""

import weakref

import numpy as np
import pytest

from nnsight_vla import InputError
from nnsight_vla.eval import episode_metrics, libero


@pytest.mark.parametrize(
    "suite, task, message",
    [("libero_100", 0, "unknown LIBERO suite 'libero_100'"), ("libero_10", 10, r"tasks 0..9, got 10"),
     ("libero_90", -1, r"tasks 0..89")],
)
def test_unknown_suite_or_task(suite, task, message):
    with pytest.raises(InputError, match=message):
        libero.make_env(suite, task)


def test_missing_assets_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(libero, "_package_dir", lambda: tmp_path / "libero")
    with pytest.raises(libero.SetupError, match="run `make env`"):
        libero.ensure_libero(tmp_path / "config")


def test_config_is_written_without_prompting(tmp_path, monkeypatch):
    monkeypatch.delenv("LIBERO_CONFIG_PATH", raising=False)
    folder = libero.ensure_libero(tmp_path / "cfg")
    text = (folder / "config.yaml").read_text()
    assert "bddl_files:" in text and "init_states:" in text and "assets:" in text


@pytest.mark.slow
def test_simulator_smoke_run():
    env = libero.make_env("libero_spatial", 0, camera_size=64)
    try:
        positions = []
        for episode in (0, 1, 0):  # a plain reset moves on to the next init state; reset_to pins it
            obs, _ = libero.reset_to(env, episode)
            positions.append(obs["robot_state"]["eef"]["pos"][0].copy())
        np.testing.assert_array_equal(positions[0], positions[2])  # the paired design's basis
        assert not np.array_equal(positions[0], positions[1])
        assert obs["pixels"]["image"].shape == (1, 64, 64, 3) and obs["pixels"]["image"].std() > 0
        assert "black bowl" in env.call("task_description")[0]
        path = [positions[0]]
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step(np.array([[0, 0, 1.0, 0, 0, 0, -1]]))
            path.append(obs["robot_state"]["eef"]["pos"][0].copy())
        metrics = episode_metrics(np.array(path), success=bool(info["is_success"][0]))
        assert metrics.length == 3 and metrics.net_displacement["z"] > 0  # commanded upwards
        check_unseen_renders_change_nothing(env)
    finally:
        env.close()


@pytest.mark.slow
def test_first_reset_builds_the_scene_once_and_equals_lerobots():
    """An env's first `reset_to` builds it without lerobot's extra reset, and compiles the scene
    and makes its render context once for its two builds of it: the observation and the next
    step equal those of a fresh env's first reset by lerobot, bit for bit."""
    from libero.libero.envs import OffScreenRenderEnv
    from robosuite.environments import base
    from robosuite.utils.binding_utils import MjRenderContext, MjSim

    reset, build, builds = OffScreenRenderEnv.reset, MjSim.from_xml_string.__func__, []
    made, contexts = MjRenderContext.__init__, []

    def counted(cls, xml):
        builds[-1] += 1
        return build(cls, xml)

    def counted_context(self, *args, **kwargs):
        contexts[-1] += 1
        made(self, *args, **kwargs)

    envs = [libero.make_env("libero_spatial", 0, camera_size=64) for _ in range(2)]
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(MjSim, "from_xml_string", classmethod(counted))
            patch.setattr(MjRenderContext, "__init__", counted_context)
            envs[0].envs[0].init_state_id = 0
            builds.append(0), contexts.append(0)
            plain = envs[0].reset(seed=[7])[0]
            builds.append(0), contexts.append(0)
            first = libero.reset_to(envs[1], 0)[0]
        action = np.array([[0.3, -0.2, 0.5, 0, 0, 0.1, 1.0]])
        runs = [(plain, envs[0].step(action)[0]), (first, envs[1].step(action)[0])]
    finally:
        for env in envs:
            env.close()
    assert builds == [3, 1]  # lerobot's first reset compiles the scene three times; reset_to once (then a copy)
    assert contexts == [3, 1]  # and makes a render context for each; reset_to keeps its first
    assert OffScreenRenderEnv.reset is reset and base.MjRenderContextOffscreen.__name__ == "MjRenderContextOffscreen"
    assert MjSim.from_xml_string.__func__ is build  # nothing left patched
    for kept, skipped in zip(*runs):
        for key in ("image", "image2"):
            np.testing.assert_array_equal(kept["pixels"][key], skipped["pixels"][key])
        np.testing.assert_array_equal(kept["robot_state"]["eef"]["pos"], skipped["robot_state"]["eef"]["pos"])
        np.testing.assert_array_equal(kept["robot_state"]["joints"]["pos"], skipped["robot_state"]["joints"]["pos"])


@pytest.mark.slow
def test_an_init_state_gives_the_same_scene_at_every_reset():
    """On libero_spatial task 4, lerobot's k-th reset places the cabinet and the stove (fixtures,
    not in the init state) differently, though it reseeds; `reset_to` places them alike at every
    reset, on a used env and on a new one, and so returns the same observation bit for bit."""
    import mujoco

    def scene(env):
        sim = env.envs[0]._env.env.sim
        bodies = [mujoco.mj_name2id(sim.model._model, mujoco.mjtObj.mjOBJ_BODY, name)
                  for name in ("wooden_cabinet_1_main", "flat_stove_1_main")]
        return sim.model.body_pos[bodies].copy()

    envs = [libero.make_env("libero_spatial", 4, camera_size=64) for _ in range(2)]
    try:
        plain = []
        for _ in range(2):
            envs[0].envs[0].init_state_id = 1
            envs[0].reset(seed=[7])
            plain.append(scene(envs[0]))
        runs = []
        for env, episode in ((envs[0], 1), (envs[0], 0), (envs[0], 1), (envs[1], 1)):
            obs = libero.reset_to(env, episode)[0]
            if episode == 1:
                runs.append((scene(env), obs))
    finally:
        for env in envs:
            env.close()
    assert np.abs(plain[0] - plain[1]).max() > 1e-3  # lerobot's resets move the fixtures by millimetres
    for fixtures, obs in runs[1:]:
        np.testing.assert_array_equal(fixtures, runs[0][0])
        for key in ("image", "image2"):
            np.testing.assert_array_equal(obs["pixels"][key], runs[0][1]["pixels"][key])
        np.testing.assert_array_equal(obs["robot_state"]["joints"]["pos"], runs[0][1]["robot_state"]["joints"]["pos"])


def check_unseen_renders_change_nothing(env):
    """`reset_to` renders only the images the observation keeps and, on an env it reset before,
    keeps the render context and frees the old simulation without a full collection; the observation and the next step equal those of lerobot's own
    reset (every image rendered, a new render context), bit for bit."""
    from robosuite.utils.binding_utils import MjRenderContext

    renders, contexts, render, made = [0], [0], MjRenderContext.render, MjRenderContext.__init__

    def counted(self, *args, **kwargs):
        renders[0] += 1
        return render(self, *args, **kwargs)

    def counted_context(self, *args, **kwargs):
        contexts[0] += 1
        made(self, *args, **kwargs)

    action = np.array([[0.3, -0.2, 0.5, 0, 0, 0.1, 1.0]])
    runs = {}
    old = env.envs[0]._env.env.sim
    freed = [weakref.ref(part) for part in (old, old.model, old.data)]
    del old
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MjRenderContext, "render", counted)
        patch.setattr(MjRenderContext, "__init__", counted_context)
        for name in ("reset_to", "plain"):  # reset_to first: it keeps the context of the resets before
            renders[0] = contexts[0] = 0
            if name == "plain":
                env.envs[0].init_state_id = 1
                obs, _ = env.reset(seed=[7])
            else:
                obs, _ = libero.reset_to(env, 1)
            runs[name] = (renders[0], contexts[0], obs, env.step(action)[0])
            if name == "reset_to":  # it skips robosuite's gc.collect(): the old simulation is freed anyway
                assert [ref() for ref in freed] == [None, None, None]
    cameras = len(runs["plain"][2]["pixels"])
    assert runs["reset_to"][0] == cameras < runs["plain"][0]  # only the last settle step's images
    assert (runs["reset_to"][1], runs["plain"][1]) == (0, 1)
    for kept, skipped in zip(runs["plain"][2:], runs["reset_to"][2:]):
        for key in ("image", "image2"):
            np.testing.assert_array_equal(kept["pixels"][key], skipped["pixels"][key])
        np.testing.assert_array_equal(kept["robot_state"]["eef"]["pos"], skipped["robot_state"]["eef"]["pos"])
        np.testing.assert_array_equal(kept["robot_state"]["joints"]["pos"], skipped["robot_state"]["joints"]["pos"])
    from robosuite.utils.binding_utils import MjSim

    assert MjSim.render.__name__ == "render" and "step" not in vars(env.envs[0]._env)  # nothing left patched


@pytest.mark.slow
def test_rendering_falls_back_to_osmesa_when_egl_fails(tmp_path):
    """With EGL broken for real (no EGL vendor library found), LIBERO renders through OSMesa,
    or, where OSMesa is not installed either, the error names the packages to install."""
    import ctypes.util
    import os
    import subprocess
    import sys

    code = (
        "from nnsight_vla.eval import libero\n"
        "try:\n"
        "    print('backend', libero.choose_renderer())\n"
        "except libero.SetupError as error:\n"
        "    print('error', error); raise SystemExit(0)\n"
        "env = libero.make_env('libero_spatial', 0, camera_size=32)\n"
        "obs, _ = libero.reset_to(env, 0)\n"
        "print('std', float(obs['pixels']['image'][0].std())); env.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    env["__EGL_VENDOR_LIBRARY_FILENAMES"] = str(tmp_path / "none.json")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.split(" ", 1)[0] in ("backend", "error", "std"))
    if ctypes.util.find_library("OSMesa"):
        assert lines["backend"] == "osmesa" and float(lines["std"]) > 1.0  # a real rendered scene
    else:
        assert "libosmesa6" in lines["error"]
