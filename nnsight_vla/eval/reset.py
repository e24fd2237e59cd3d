"""A LIBERO reset that is fast and repeatable: one scene per init state, built only as far as it must be.

`eval.libero.reset_to` runs lerobot's reset inside these contexts. Each keeps the observation
bit for bit equal to lerobot's own reset's, except `drop_stale_state_samplers`, which makes the
scene depend on the init state and the seed alone (`tests/test_eval_libero.py`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import types
import weakref
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def no_full_collection() -> Iterator[None]:
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


def drop_stale_state_samplers(scene: Any) -> None:
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
