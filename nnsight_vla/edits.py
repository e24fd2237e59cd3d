"""Edits: interventions bound to sites of one model and composed per site.

Edits run inside an nnsight trace (`apply`), around plain calls as torch hooks (`steer`) or on
TransformerLens hook points (`hook_points`). This module stands below the model class, which
steers through it.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from .envoys import InertEnvoy
from .errors import InputError
from .sites import Site, hooked

#: ``(activation, call) -> activation``: one intervention's effect on one site.
EditFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Edit:
    """One intervention's effect on one site of one model."""

    site: Site
    fn: EditFn


def as_list(interventions: Any) -> list:
    """One intervention or a sequence of them, as a list (each must have ``edits``)."""
    if isinstance(interventions, (str, bytes)):
        raise InputError(
            f"{interventions!r} is not an intervention; use nnsight_vla.Clamp, Scale, Ablate or Add (or a list)."
        )
    items = list(interventions) if isinstance(interventions, Sequence) else [interventions]
    if not items:
        raise InputError("no interventions given; pass Clamp, Scale, Ablate or Add (or a list of them).")
    for item in items:
        if not callable(getattr(item, "edits", None)):
            raise InputError(
                f"{item!r} is not an intervention; use nnsight_vla.Clamp, Scale, Ablate or Add (or a list)."
            )
    return items


def bind(model: Any, interventions: Any) -> list[tuple[Site, EditFn]]:
    """The interventions' edits composed per site, sites in execution order.

    Edits on one site keep list order. Execution order: towers in `towers()` order, then
    layers, FFN activations before the layer's output. Sites that cannot change the actions
    warn.
    """
    order = {name: i for i, name in enumerate(model.towers())}
    by_site: dict[Site, list[EditFn]] = defaultdict(list)
    for intervention in as_list(interventions):
        for edit in intervention.edits(model):
            by_site[edit.site].append(edit.fn)
    for site in by_site:
        envoy = site.envoy(model)
        if isinstance(envoy, InertEnvoy) and site.io(model).replace("in place", "input") in type(envoy).watched:
            envoy._warn_inert()
    ordered = sorted(by_site, key=lambda s: (order[s.tower], s.layer, s.kind != "neurons", s.kind))
    return [(site, _compose(by_site[site])) for site in ordered]


def _compose(fns: list[EditFn]) -> EditFn:
    if len(fns) == 1:
        return fns[0]

    def run(x: torch.Tensor, call: int) -> torch.Tensor:
        for fn in fns:
            x = fn(x, call)
        return x

    return run


def apply(model: Any, interventions: Any, step: int = 0) -> None:
    """Apply ``interventions`` inside an nnsight trace, at the trace's current ``step``.

    Example:
        >>> with model.predict_action(obs) as tracer:
        ...     for step in tracer.iter[:7]:
        ...         apply(model, Clamp(cluster, 6.0), step)
        ...     action = tracer.result.save()
    """
    if not model.interleaver.interleaving:
        raise InputError(
            "apply() works inside an nnsight trace (with model.predict_action(obs) as tracer: ...); "
            "around plain calls use `with model.steer(interventions):`."
        )
    for site, run in bind(model, interventions):
        if site.runs_at(model, step):  # Pi0's VLM runs at step 0 only
            site.write(model, lambda x, run=run: run(x, step))


@contextlib.contextmanager
def steer(model: Any, interventions: Any) -> Iterator[Any]:
    """Apply ``interventions`` to every prediction made inside the block, as torch hooks.

    Each site counts its forward calls from the start of every prediction (the layout's
    ``run_start`` module), so ``calls``/``steps`` select the same forwards as in a trace.
    Every hook is removed when the block ends, exceptions included. Only predictions made in
    the context that opened the block (its thread or asyncio task) are steered. ``None``
    steers nothing (a baseline); an empty list is refused.

    Example:
        >>> with model.steer([Clamp(up, 6.0)]):
        ...     action = model.predict_action(obs)
    """
    if interventions is None:
        yield model
        return
    with hooked(model, dict(bind(model, interventions))):
        yield model


def hook_points(model: Any, interventions: Any, tower: str = "vlm") -> list[tuple[str, Callable]]:
    """The interventions on ``tower`` as ``(hook_name, fn(activation, hook))`` pairs.

    The pairs are on TransformerLens's hook points (each site's `Site.hook_name`) of that
    tower's bridge (``to_bridge(model, part=tower)``); interventions on other towers are left
    out. Each fn counts its own calls (one per forward), so make fresh pairs for every
    prediction.

    Example:
        >>> bridge.run_with_hooks(tokens, fwd_hooks=hook_points(model, Clamp(cluster, 6.0)))
    """
    out = []
    for site, run in bind(model, interventions):
        if site.tower != tower:
            continue  # another tower's bridge
        calls = [0]

        def fn(activation, hook=None, run=run, calls=calls):
            call = calls[0]
            calls[0] += 1
            return run(activation, call)

        out.append((site.hook_name, fn))
    return out
