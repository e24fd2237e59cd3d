"""The family contract: what every model family promises the core, checked on any model (`run_contract`)."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import nnsight
import numpy as np
import torch

from ..envoys import LayersEnvoy
from ..errors import LayerIndexError, UnknownModelError, VLAError
from ..layout import STANDARD_NAMES
from ..observation import Observation
from ..registry import family_of, load
from ..sites import Site
from ..steering import Clamp, apply
from ..towers import module_of
from ..collect import Recorder, collect


class ContractError(VLAError, AssertionError):
    """A family breaks the contract; the message names the check and what differed."""


def example_observation(model: Any, seed: int = 0, instruction: str = "pick up the black bowl") -> Observation:
    """A random observation with the cameras and state the model expects."""
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for c in model.spec.camera_names}
    dim = model.spec.state_dim
    state = None if dim is None else rng.uniform(-1, 1, dim).astype(np.float32)
    return Observation(images, instruction, state)


def prediction_steps(model: Any) -> int:
    """Forwards of one prediction that a trace iterates over (the tower that runs most often)."""
    return model.schedule().steps


def _fail(check: str, message: str) -> None:
    raise ContractError(f"{check}: {message}")


@dataclass
class Subject:
    """The model a contract run checks, and what its checks share.

    That is one observation and the plain prediction on it, made once, at the first check
    that needs it; ``folder`` is where a check may write.
    """

    model: Any
    folder: Path

    @functools.cached_property
    def obs(self) -> Observation:
        """`example_observation` of the model."""
        return example_observation(self.model)

    @functools.cached_property
    def plain(self) -> np.ndarray:
        """The model's actions for `obs`, from a plain ``predict_action``."""
        return np.asarray(self.model.predict_action(self.obs))


def check_standard_names(subject: Subject) -> None:
    """Standard names are envoys; layer lists are range-checked; towers have sizes."""
    model = subject.model
    for name in STANDARD_NAMES:
        if not isinstance(getattr(model, name, None), nnsight.Envoy):
            _fail("standard names", f"model.{name} is not bound to a module")
    for tower in model.towers().values():
        if not isinstance(tower.layers, LayersEnvoy):
            _fail("standard names", f"tower {tower.name!r}'s layers are not a range-checked list")
        try:
            tower.layers[tower.n_layers]
        except LayerIndexError:
            pass
        else:
            _fail("standard names", f"tower {tower.name!r} accepts layer {tower.n_layers}")
        if min(tower.n_layers, tower.d_model, tower.d_mlp) < 1:
            _fail("standard names", f"tower {tower.name!r} has empty sizes {tower!r}")


def check_plain_vs_traced(subject: Subject) -> None:
    """``predict_action`` returns the same actions as a plain call and as a trace."""
    model, plain = subject.model, subject.plain
    with model.predict_action(subject.obs) as tracer:
        traced = tracer.result.save()
    if not np.array_equal(plain, np.asarray(traced)):
        _fail("plain vs traced", f"max |difference| {np.abs(plain - np.asarray(traced)).max():.3g}")


def check_batching(subject: Subject) -> None:
    """A batch of observations predicts what each does alone."""
    model, other = subject.model, example_observation(subject.model, 1, "open the top drawer")
    both = np.asarray(model.predict_action([subject.obs, other]))
    for row, alone in zip(both, (subject.plain, np.asarray(model.predict_action(other)))):
        if row.shape != alone.shape or not np.allclose(row, alone, atol=1e-5):
            _fail("batching", f"a batched row differs from its observation alone (shapes {row.shape}, {alone.shape})")


def contrast_observation(model: Any) -> Observation:
    """An observation unlike `example_observation`'s in every part.

    It has black images, another instruction (one that names a motion) and seed 1's state.
    """
    other = example_observation(model, 1, instruction="move the arm to the left")
    return Observation({c: np.zeros_like(image) for c, image in other.images.items()}, other.instruction, other.state)


def check_observation_matters(subject: Subject) -> None:
    """`example_observation` and `contrast_observation` get different actions.

    The two differ in images, instruction and state: a model whose actions ignore what it
    sees cannot show an effect.
    """
    first, model = subject.plain, subject.model
    if np.array_equal(first, np.asarray(model.predict_action(contrast_observation(model)))):
        _fail("actions depend on the observation",
              f"a noise image and a black one, with other instructions and states, both get actions {_head(first)}; "
              "the model's actions ignore its inputs (a random model's fallback? untrained weights?)")


def action_tower(model: Any) -> str:
    """The tower whose forwards emit the actions (the first, per the model's schedule), else the first tower."""
    towers = model.schedule().towers
    return next((name for name, tower in towers.items() if tower.actions is not None), next(iter(towers)))


def check_clamp_matters(subject: Subject) -> None:
    """Clamping 8 neurons of the action tower's layer 0 at 50 changes the actions.

    The tower is the one that emits actions (`action_tower`) and the clamp acts on every
    call: steering reaches the actions.
    """
    model, base = subject.model, subject.plain
    tower = action_tower(model)
    with model.steer(Clamp([(0, n) for n in range(8)], 50.0, tower=tower)):
        steered = np.asarray(model.predict_action(subject.obs))
    if np.array_equal(base, steered):
        _fail("a strong clamp changes actions",
              f"clamping neurons 0-7 of layer 0 of tower {tower!r} at 50 leaves the actions {_head(base)} "
              "unchanged; steering does not reach the actions")


def _head(actions: np.ndarray) -> str:
    flat = actions.ravel()
    return np.array2string(flat[:4], precision=3, suppress_small=True) + (" ..." if flat.size > 4 else "")


def check_collect(subject: Subject) -> None:
    """The collector's calls and values equal an nnsight trace's, step by step, for every tower."""
    model, obs = subject.model, subject.obs
    steps = prediction_steps(model)
    sites = [Site(0, "resid", name) for name in model.towers()]
    with model.predict_action(obs) as tracer:
        seen = nnsight.save({site: [] for site in sites})
        for step in tracer.iter[:steps]:
            for site in sites:
                if site.runs_at(model, step):
                    seen[site].append(site.read(model)[:, -1].clone())
    acts = collect(model, obs, sites, calls="all", positions="last")
    for site in sites:
        want = torch.stack([x.float() for x in seen[site]], dim=1)
        got = acts[site][:, : want.shape[1], 0]
        if got.shape != want.shape or not torch.equal(got, want.cpu()):
            _fail("collect", f"{site}: the collector's {tuple(got.shape)} differ from the trace's {tuple(want.shape)}")
        calls = model.schedule()[site.tower].actions
        if calls is not None and acts[site].shape[1] < len(calls):
            _fail("collect", f"{site} ran {acts[site].shape[1]} times, fewer than action_calls {calls}")


def _clamp_hook(module: torch.nn.Module, calls: str):
    """The reference: a raw torch pre-hook clamping neurons 0 and 1 to 5.0 (all calls, or the first)."""
    seen = [0]

    def hook(mod, args):
        seen[0] += 1
        if calls == "prefill" and seen[0] > 1:
            return None
        return (args[0].index_fill(-1, torch.tensor([0, 1], device=args[0].device), 5.0), *args[1:])

    return module.register_forward_pre_hook(hook)


def _with_hook(module: torch.nn.Module, calls: str, run: Callable[[], Any]) -> Any:
    handle = _clamp_hook(module, calls)
    try:
        return run()
    finally:
        handle.remove()


def _actions_and_resid(model: Any, obs: Any, site: Site) -> tuple[np.ndarray, torch.Tensor]:
    """One prediction's actions and, as `collect` records them, ``site`` on every call (last position)."""
    recorder = Recorder(model, [site], calls="all", positions="last")
    with recorder.prediction() as got:
        actions = np.asarray(model.predict_action(obs))
    return actions, got.activations[site]


def check_steering(subject: Subject) -> None:
    """A clamp in a trace, through ``model.steer`` and as a raw torch hook gives equal results.

    The actions are equal, and so are the per-call residuals after the layer, on every call
    and on the prefill only (which checks the layout's ``run_start``); the block leaves no
    hook behind.
    """
    model, obs, base = subject.model, subject.obs, subject.plain
    for name in model.towers():
        resid, module = Site(0, "resid", name), Site(0, "neurons", name).module(model)
        clean = collect(model, obs, resid, calls="all", positions="last")[resid]
        for calls in ("all", "prefill") if name == "vlm" else ("all",):
            clamp = Clamp([(0, 0), (0, 1)], 5.0, tower=name, calls=calls)
            where = f"(tower {name!r}, calls={calls!r})"
            with model.predict_action(obs) as tracer:
                for step in tracer.iter[: prediction_steps(model)]:
                    apply(model, clamp, step)
                traced = tracer.result.save()
            with model.steer(clamp):
                steered, steered_resid = _actions_and_resid(model, obs, resid)
            hooked, hooked_resid = _with_hook(module, calls, lambda: _actions_and_resid(model, obs, resid))
            for label, value in (("nnsight", np.asarray(traced)), ("model.steer", steered)):
                if not np.array_equal(value, hooked):
                    _fail("steering", f"{label} clamp {where} gives other actions than a torch hook")
            if not torch.equal(steered_resid, hooked_resid):
                _fail("steering", f"model.steer clamp {where} changes other calls than a torch hook")
            if torch.equal(hooked_resid, clean):
                _fail("steering", f"the clamp {where} did not change layer 0's output")
    if not np.array_equal(np.asarray(model.predict_action(obs)), base):
        _fail("steering", "a hook survived its block: plain predictions changed")


def check_save_load(subject: Subject) -> None:
    """``save_pretrained`` writes a checkpoint that loads back with equal weights and actions."""
    model = subject.model
    loaded = load(model.save_pretrained(subject.folder / "checkpoint"))
    ours, theirs = module_of(model).state_dict(), module_of(loaded).state_dict()
    if ours.keys() != theirs.keys() or any(not torch.equal(ours[k], theirs[k]) for k in ours):
        _fail("save/load", "the reloaded weights differ")
    if not np.allclose(subject.plain, loaded.predict_action(subject.obs), atol=1e-6):
        _fail("save/load", "the reloaded model predicts other actions")


def check_model_key(subject: Subject) -> None:
    """The remote model key rebuilds an equal model (what NDIF and the Ray workers do)."""
    model = subject.model
    key = model._remoteable_model_key()
    twin = type(model)._remoteable_from_model_key(key, dispatch=True)
    if twin._remoteable_model_key() != key:
        _fail("model key", f"the key does not round-trip: {key} vs {twin._remoteable_model_key()}")
    if not np.array_equal(subject.plain, np.asarray(twin.predict_action(subject.obs))):
        _fail("model key", "the rebuilt model predicts other actions")


CHECKS: dict[str, Callable[[Subject], None]] = {
    "standard names": check_standard_names,
    "plain vs traced": check_plain_vs_traced,
    "batching": check_batching,
    "actions depend on the observation": check_observation_matters,
    "collect": check_collect,
    "steering": check_steering,
    "a strong clamp changes actions": check_clamp_matters,
    "model key": check_model_key,
    "save/load": check_save_load,
}


def inert_checks(model: Any) -> dict[str, str]:
    """The checks ``model``'s family declares its built-in cannot pass, with why.

    They come from `Family.inert_checks`; a name that is no built-in or no check is a
    `ContractError`.
    """
    try:
        family = family_of(model)
    except UnknownModelError:  # a model class no registered family names
        return {}
    for builtin, checks in family.inert_checks.items():
        unknown = sorted(set(checks) - set(CHECKS))
        if builtin not in family.builtins or unknown:
            raise ContractError(
                f"inert checks: family {family.name!r} declares {builtin!r}: {sorted(checks)}; its built-ins are "
                f"{list(family.builtins)} and the checks {list(CHECKS)}"
            )
    return dict(family.inert_checks.get(model.name_or_path, {}))


def run_contract(model: Any, folder: str | Path | None = None, skip: tuple[str, ...] = ()) -> list[str]:
    """Run every contract check on ``model``; returns the names of the checks that ran.

    ``model`` is a loaded VLA, or ``(class, source)`` to also check that it loads. A check
    the family declares inert for this built-in (`Family.inert_checks`) does not run and is
    listed as ``"<check> (not applicable: <reason>)"``.

    Example:
        >>> run_contract(nnsight_vla.load("tiny-openvla"))
        ['load', 'standard names', 'plain vs traced', ...]
    """
    ran = []
    if isinstance(model, tuple):
        cls, source = model
        try:
            model = cls(source, dispatch=True)
        except VLAError as err:
            raise ContractError(f"load: {type(err).__name__}: {err}") from err
        ran.append("load")
    model.dispatch()
    inert = inert_checks(model)
    with tempfile.TemporaryDirectory() as tmp:
        subject = Subject(model, Path(folder or tmp))
        for name, check in CHECKS.items():
            if name in skip:
                continue
            if name in inert:
                ran.append(f"{name} (not applicable: {inert[name]})")
            else:
                check(subject)
                ran.append(name)
    return ran
