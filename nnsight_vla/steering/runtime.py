"""Running interventions around plain calls (torch hooks) and on TransformerLens hook points."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from ..sites import hooked
from .edits import bind


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
    """The interventions on ``tower`` as ``(hook_name, fn(activation, hook))`` pairs on
    TransformerLens's hook points (each site's `Site.hook_name`) of that tower's bridge
    (``to_bridge(model, part=tower)``); interventions on other towers are left out. Each fn
    counts its own calls (one per forward), so make fresh pairs for every prediction.

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
