"""`Site`: where an activation lives (tower, layer, kind); read and written in traces and by torch hooks, with call counting."""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from .errors import InputError
from .towers import Tower, get_tower, hidden, module_of, with_hidden


@dataclass(frozen=True)
class Kind:
    """One kind of activation in a decoder layer.

    It names which part of the layer, its input or output, its width and its TransformerLens
    hook name.
    """

    component: str  # a `TowerLayout.block` key, or "" for the decoder layer itself
    io: str  # "input" or "output"
    width: str  # "d_mlp" or "d_model"
    hook_name: str  # TransformerLens hook point, with {layer}


KINDS: dict[str, Kind] = {
    "neurons": Kind("mlp.out", "input", "d_mlp", "blocks.{layer}.mlp.hook_post"),
    "resid": Kind("", "output", "d_model", "blocks.{layer}.hook_resid_post"),
    "mlp_out": Kind("mlp", "output", "d_model", "blocks.{layer}.hook_mlp_out"),
    "attn_out": Kind("attn", "output", "d_model", "blocks.{layer}.hook_attn_out"),
}

#: Each kind's TransformerLens hook name as a pattern whose group is the layer.
_HOOK_PATTERNS = {name: re.compile("^" + re.escape(kind.hook_name).replace(r"\{layer\}", r"(\d+)") + "$")
                  for name, kind in KINDS.items()}

#: ``(activation, call) -> activation``: what a hook does on one forward of a site.
SiteFn = Callable[[torch.Tensor, int], torch.Tensor | None]

#: The `hooked` blocks open in the current context (thread or task): a block's hooks act
#: only on forwards run where the block was opened.
_open_blocks: contextvars.ContextVar[frozenset] = contextvars.ContextVar("nnsight_vla_hooked", default=frozenset())


@dataclass(frozen=True, order=True)
class Site:
    """An activation of a model: ``kind`` at ``layer`` of ``tower``.

    Kinds: ``"neurons"`` (FFN activations: the input of ``mlp.down_proj``), ``"resid"``
    (the residual stream after the layer), ``"mlp_out"`` and ``"attn_out"`` (the outputs
    of the layer's MLP and attention).

    Example:
        >>> site = Site(20, "neurons")
        >>> with model.trace(obs):
        ...     acts = site.read(model).save()
        >>> site.hook_name
        'blocks.20.mlp.hook_post'
    """

    layer: int
    kind: str = "resid"
    tower: str = "vlm"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"site kind {self.kind!r} is not one of {list(KINDS)}.")
        if isinstance(self.layer, bool) or not isinstance(self.layer, (int, np.integer)):
            raise InputError(f"a site's layer must be an int, got {self.layer!r}.")
        if not isinstance(self.tower, str):
            raise InputError(f"a site's tower must be a name such as 'vlm' or 'expert', got {self.tower!r}.")
        object.__setattr__(self, "layer", int(self.layer))  # numpy ints hash and print as ints

    def __str__(self) -> str:
        return f"{self.tower}.{self.layer}.{self.kind}"

    @classmethod
    def parse(cls, text: str, tower: str = "vlm") -> Site:
        """A site from its one text form, ``str(site)``, or from a TransformerLens hook name.

        The text form is ``"vlm.20.resid"``, or ``"20.resid"`` on ``tower``. A hook name is
        read on ``tower``'s bridge (``"blocks.20.mlp.hook_post"`` -> ``Site(20, "neurons")``).
        """
        text = str(text)
        if text.startswith("blocks.") or "hook_" in text:  # a TransformerLens hook name
            for kind, pattern in _HOOK_PATTERNS.items():
                if match := pattern.match(text):
                    return cls(int(match.group(1)), kind, tower)
            known = [k.hook_name for k in KINDS.values()]
            raise InputError(f"hook {text!r} is not one of the hook points a prediction runs: {known}.")
        parts = text.split(".")
        if len(parts) == 2:
            parts = [tower, *parts]
        if len(parts) != 3 or not parts[1].lstrip("-").isdigit():
            raise InputError(f"site {text!r} is not TOWER.LAYER.KIND, e.g. 'vlm.20.resid' or '20.neurons', "
                             "nor a TransformerLens hook name such as 'blocks.20.hook_resid_post'.")
        return cls(int(parts[1]), parts[2], parts[0])

    @classmethod
    def of(cls, value: Any, what: str = "site") -> Site:
        """``value`` as a `Site`: a Site, or its text (`parse`)."""
        if isinstance(value, Site):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        raise InputError(f"{what} must be an nnsight_vla.Site or its text such as 'vlm.20.resid', got {value!r}.")

    # -- binding to a model --------------------------------------------------------

    def tower_of(self, model: Any) -> Tower:
        """The `Tower` of ``model`` that this site is on (`get_tower`)."""
        return get_tower(model, self.tower)

    def on(self, model: Any) -> Site:
        """This site checked against ``model``, its layer made non-negative."""
        return Site(self.tower_of(model).layer(self.layer), self.kind, self.tower)

    def width(self, model: Any) -> int:
        """The activation's width on ``model``: its tower's ``d_mlp`` or ``d_model``, per kind."""
        return getattr(self.tower_of(model), KINDS[self.kind].width)

    @property
    def hook_name(self) -> str:
        """The TransformerLens hook point of this site, on the bridge of its tower.

        That bridge is ``to_bridge(model, part=site.tower)``.
        """
        return KINDS[self.kind].hook_name.format(layer=self.layer)

    def envoy(self, model: Any) -> Any:
        """The envoy whose input or output holds this activation."""
        tower = self.tower_of(model)
        layer = tower.layer(self.layer)
        if self._at_next_norm(tower):
            return tower.norm if layer == tower.n_layers - 1 else self._in_layer(tower, layer + 1, "ln1")
        return self._in_layer(tower, layer, KINDS[self.kind].component)

    @staticmethod
    def _in_layer(tower: Tower, layer: int, component: str) -> Any:
        envoy = tower.layers[layer]
        for part in tower.layout.block[component].split(".") if component else []:
            envoy = getattr(envoy, part)
        return envoy

    def _at_next_norm(self, tower: Tower) -> bool:
        """Whether this is a residual site of a tower whose layers never run as modules.

        See `TowerLayout.layers_run`. The site is then the input of the next layer's input norm
        (the final norm after the last layer), the very tensor that layer adds to, written in
        place.
        """
        return self.kind == "resid" and not tower.layout.layers_run

    def io(self, model: Any) -> str:
        """Where the activation is: the envoy's ``"input"``, ``"output"``, or ``"in place"`` (its input, changed in place)."""
        return "in place" if self._at_next_norm(self.tower_of(model)) else KINDS[self.kind].io

    def module(self, model: Any) -> torch.nn.Module:
        """The torch module behind this site's `envoy` on ``model``."""
        return module_of(self.envoy(model))

    def runs_at(self, model: Any, step: int) -> bool:
        """Whether the site runs at a trace's ``step`` (Pi0's VLM runs at step 0 only)."""
        return model.schedule()[self.tower].runs_at(step)

    # -- inside an nnsight trace ---------------------------------------------------

    def read(self, model: Any) -> Any:
        """The activation inside a trace: ``[batch, positions, width]``.

        Where layers never run as modules, their family adds into its parts' outputs in place
        (SmolVLA's residual sums): an output is then read as a copy taken when it is made.
        """
        envoy = self.envoy(model)
        if self.io(model) != "output":
            return envoy.input
        x = hidden(envoy.output)
        return x if self.tower_of(model).layout.layers_run else x.clone()

    def write(self, model: Any, fn: Callable[[Any], Any]) -> None:
        """Replace the activation inside a trace by ``fn(activation)``."""
        envoy, io = self.envoy(model), self.io(model)
        if io == "in place":
            x = envoy.input
            x.copy_(fn(x))
        elif io == "input":
            envoy.input = fn(envoy.input)
        else:
            envoy.output = with_hidden(envoy.output, fn)

    # -- torch hooks -----------------------------------------------------------------

    def register(self, model: Any, fn: Callable[[torch.Tensor], torch.Tensor | None]):
        """A torch hook applying ``fn`` to the activation (None keeps it); returns its handle."""
        module, io = self.module(model), self.io(model)
        if io == "in place":
            def in_place(mod, args):
                out = fn(args[0])
                if out is not None and out is not args[0]:
                    args[0].copy_(out)

            return module.register_forward_pre_hook(in_place)
        if io == "input":
            def pre(mod, args):
                out = fn(args[0])
                return None if out is None else (out, *args[1:])

            return module.register_forward_pre_hook(pre)

        def post(mod, args, output):
            x = hidden(output)
            out = fn(x)
            return None if out is None else with_hidden(output, lambda _: out)

        return module.register_forward_hook(post)


def expand_sites(spec: str, model: Any) -> list[Site]:
    """The range form ``KIND[@TOWER]:LAYERS`` as sites of ``model``.

    LAYERS is ``all``, ``3``, ``0,4,8``, ``0-11`` or a mix (``resid@expert:0-2,5``); TOWER
    defaults to ``"vlm"``.
    """
    head, _, layers = str(spec).partition(":")
    kind, _, tower = head.partition("@")
    tower = tower or "vlm"
    if not layers or kind not in KINDS:
        raise InputError(f"sites {spec!r}: write KIND[@TOWER]:LAYERS, e.g. resid:all or neurons@expert:0-2 "
                         f"(KIND: {', '.join(KINDS)}).")
    if tower not in model.towers():
        raise InputError(f"sites {spec!r}: {model.spec.family} has towers {sorted(model.towers())}, not {tower!r}.")
    try:
        chosen = range(model.towers()[tower].n_layers) if layers == "all" else [
            n for part in layers.split(",") for n in (
                range(int(part.split("-")[0]), int(part.split("-")[1]) + 1) if "-" in part[1:] else [int(part)])]
    except ValueError as err:
        raise InputError(f"sites {spec!r}: LAYERS is 'all', an int, a list 0,4,8 or a range 0-11.") from err
    return [Site(n, kind, tower).on(model) for n in chosen]


@contextlib.contextmanager
def hooked(model: Any, fns: Mapping[Site, SiteFn]) -> Iterator[None]:
    """Within the block, every forward of each site runs ``fn(activation, call)``.

    ``call`` counts that site's forwards from the start of each prediction (the layout's
    ``run_start`` module); ``fn`` returns a replacement or None. The hooks act only on
    forwards run in the context that opened the block (its thread or asyncio task), so one
    model can serve other threads' predictions meanwhile; every hook is removed when the
    block ends, exceptions included.

    Example:
        >>> with hooked(model, {Site(1, "neurons"): lambda x, call: x * 2}):
        ...     action = model.predict_action(obs)
    """
    model.dispatch()
    counts: dict[Site, int] = defaultdict(int)
    block = object()

    def here() -> bool:
        return block in _open_blocks.get()

    def restart(*args: Any) -> None:
        if here():
            counts.clear()

    handles = []
    token = _open_blocks.set(_open_blocks.get() | {block})
    try:
        start = model.layout.run_start
        if start:
            handles.append(module_of(model).get_submodule(start).register_forward_pre_hook(restart))
        for site, fn in fns.items():
            def run(x: torch.Tensor, site: Site = site, fn: SiteFn = fn) -> torch.Tensor | None:
                if not here():
                    return None
                call = counts[site]
                counts[site] += 1
                return fn(x, call)

            handles.append(site.register(model, run))
        yield
    finally:
        for handle in handles:
            handle.remove()
        _open_blocks.reset(token)
