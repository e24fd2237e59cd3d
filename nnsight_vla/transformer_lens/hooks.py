"""TransformerLens hook functions on a VLA's predictions: hook names become sites, run with call counting."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

from ..errors import InputError
from ..sites import Site
from ..edits import Edit
from ..steering.interventions import Intervention

class _HookPoint:
    """What a TransformerLens hook function gets as ``hook``: its name and the call index."""

    def __init__(self, name: str):
        self.name, self.call = name, 0


class HookSteering(Intervention):
    """TransformerLens hook functions (``(hook_name, fn(activation, hook))``) as an intervention.

    They run wherever interventions do: `model.steer`, traces, and LIBERO evaluation
    (``evaluate(model, ..., steering=HookSteering(...), controls=("baseline",))`` — arbitrary
    functions have no random control). As in TransformerLens, a hook returns a replacement,
    or None after changing the activation in place; ``hook.call`` counts the site's forwards
    from the prediction's start.

    Example:
        >>> steering = HookSteering([("blocks.1.mlp.hook_post", clamp)])
        >>> with model.steer(steering):
        ...     action = model.predict_action(obs)
    """

    def __init__(self, fwd_hooks: Sequence[tuple[str, Callable]], tower: str = "vlm"):
        super().__init__(tower=tower)
        if isinstance(fwd_hooks, tuple) and len(fwd_hooks) == 2 and isinstance(fwd_hooks[0], str):
            raise InputError(f"fwd_hooks is one (hook_name, fn) pair; pass a list of them: [({fwd_hooks[0]!r}, fn)].")
        pairs = list(fwd_hooks)
        bad = [item for item in pairs if not (isinstance(item, (tuple, list)) and len(item) == 2)]
        if bad:
            raise InputError(f"fwd_hooks must be (hook_name, fn) pairs, e.g. [('blocks.1.mlp.hook_post', fn)]; "
                             f"got {bad[0]!r}.")
        self._hooks = [(str(name), fn) for name, fn in pairs]
        if not self._hooks:
            raise InputError("no hooks given; pass [(hook_name, fn(activation, hook)), ...].")
        names = [name for name, _ in self._hooks]
        for name, fn in self._hooks:
            Site.parse(name, tower)
            if not callable(fn):
                raise InputError(f"the hook on {name!r} is not a function: {fn!r}.")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(f"two hooks on {twice}; compose them into one function.")
        #: Hook names and their functions' qualified names (what an evaluation's run records).
        self.hooks = [(name, f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}")
                      for name, fn in self._hooks]

    def edits(self, model: Any) -> list[Edit]:
        """One edit per hook, at its hook name's site; the hook gets ``hook.call`` set."""
        out = []
        for name, fn in self._hooks:
            point = _HookPoint(name)

            def run(x, call, fn=fn, point=point):
                point.call = call
                result = fn(x, point)
                return x if result is None else result

            out.append(Edit(Site.parse(name, self.tower).on(model), run))
        return out

    def random_like(self, model: Any, seed: int, rng: Any) -> Intervention:
        """Raises `InputError`: arbitrary hook functions have no random control."""
        raise InputError(
            "TransformerLens hook functions have no random control (they are arbitrary code); "
            "evaluate them with controls=('baseline',), or steer with Clamp/Add for a random control."
        )

    def __repr__(self) -> str:
        return f"HookSteering({self.hooks!r}, tower={self.tower!r})"


@contextlib.contextmanager
def hooks(model: Any, fwd_hooks: Sequence[tuple[str, Callable]], tower: str = "vlm") -> Iterator[Any]:
    """Run TransformerLens-style ``fwd_hooks`` on every prediction made in the block.

    The block is ``model.steer(HookSteering(fwd_hooks, tower))``.

    Example:
        >>> def clamp(acts, hook):
        ...     acts[..., [3, 17]] = 6.0
        ...     return acts
        >>> with hooks(model, [("blocks.1.mlp.hook_post", clamp)]):
        ...     action = model.predict_action(obs)
    """
    with model.steer(HookSteering(fwd_hooks, tower)):
        yield model
