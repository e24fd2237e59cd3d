"""TransformerLens hook functions on a VLA's predictions: hook names become sites, run with call counting."""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator, Sequence

from ..errors import InputError
from ..sites import KINDS, Site, hooked

_NAMES = {re.compile("^" + re.escape(kind.hook_name).replace(r"\{layer\}", r"(\d+)") + "$"): name
          for name, kind in KINDS.items()}


def site_of(hook_name: str, tower: str = "vlm") -> Site:
    """The site of a TransformerLens hook name, e.g. ``"blocks.3.mlp.hook_post"`` -> ``Site(3, "neurons")``."""
    for pattern, kind in _NAMES.items():
        match = pattern.match(hook_name)
        if match:
            return Site(int(match.group(1)), kind, tower)
    known = [k.hook_name for k in KINDS.values()]
    raise InputError(f"hook {hook_name!r} is not one of the hook points a prediction runs: {known}.")


class _HookPoint:
    """What a TransformerLens hook function gets as ``hook``: its name and the call index."""

    def __init__(self, name: str):
        self.name, self.call = name, 0


@contextlib.contextmanager
def hooks(model: Any, fwd_hooks: Sequence[tuple[str, Callable]], tower: str = "vlm") -> Iterator[Any]:
    """Run TransformerLens-style ``fwd_hooks`` (``(hook_name, fn(activation, hook))``) on every
    prediction made inside the block, as `model.steer` does with interventions: each hook sees
    every forward of its site (``hook.call`` counts them from the prediction's start) and
    returns a replacement or None.

    Example:
        >>> def clamp(acts, hook):
        ...     acts[..., [3, 17]] = 6.0
        ...     return acts
        >>> with hooks(model, [("blocks.1.mlp.hook_post", clamp)]):
        ...     action = model.predict_action(obs)
    """
    fns: dict[Site, Callable] = {}
    for name, fn in fwd_hooks:
        site = site_of(name, tower).on(model)
        if site in fns:
            raise InputError(f"two hooks on {name!r}; compose them into one function.")
        point = _HookPoint(name)

        def run(x, call, fn=fn, point=point):
            point.call = call
            return fn(x.clone(), point)

        fns[site] = run
    with hooked(model, fns):
        yield model
