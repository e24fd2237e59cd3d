"""Running interventions: inside an nnsight trace, around plain calls, or on TransformerLens hooks."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any, Callable, Iterator, Sequence

import torch

from ..envoys import InertEnvoy
from .interventions import Edit, Intervention

Interventions = Intervention | Sequence[Intervention]


def as_list(interventions: Interventions) -> list[Intervention]:
    return [interventions] if isinstance(interventions, Intervention) else list(interventions)


def bind(model: Any, interventions: Interventions) -> list[tuple[tuple, list[Edit]]]:
    """Edits grouped by site, sites in execution order (towers in `towers()` order, then
    layers, FFN activations before the layer's output); edits on one site keep list order."""
    order = {name: i for i, name in enumerate(model.towers())}
    sites: dict[tuple, list[Edit]] = defaultdict(list)
    for intervention in as_list(interventions):
        for edit in intervention.edits(model):
            sites[(order[edit.tower], edit.layer, edit.site != "neurons", edit.tower, edit.site)].append(edit)
    for _, layer, _, tower, site in sites:
        envoy = _envoy(model, tower, layer, site)
        if isinstance(envoy, InertEnvoy) and ("output" if site == "resid" else "input") in type(envoy).watched:
            envoy._warn_inert()
    return sorted(sites.items(), key=lambda item: item[0][:3])


def _envoy(model: Any, tower: str, layer: int, site: str) -> Any:
    block = model.towers()[tower].layers[layer]
    return block.mlp.down_proj if site == "neurons" else block


def _compose(edits: list[Edit]) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def run(x: torch.Tensor, call: int) -> torch.Tensor:
        for edit in edits:
            x = edit.fn(x, call)
        return x

    return run


def _swap_hidden(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to a decoder layer's hidden states (a tensor, or a tuple led by one)."""
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    return fn(output)


def apply(model: Any, interventions: Interventions, step: int = 0) -> None:
    """Apply ``interventions`` inside an nnsight trace, at the trace's current ``step``.

    Example:
        >>> with model.predict_action(obs) as tracer:
        ...     for step in tracer.iter[:7]:
        ...         apply(model, Clamp(cluster, 6.0), step)
        ...     action = tracer.result.save()
    """
    towers = model.towers()
    for (_, layer, _, tower, site), edits in bind(model, interventions):
        runs = towers[tower].runs
        if runs is not None and step >= runs:
            continue  # this tower does not run at this step (Pi0's VLM runs once)
        run = _compose(edits)
        envoy = _envoy(model, tower, layer, site)
        if site == "neurons":
            envoy.input = run(envoy.input, step)
        else:
            envoy.output = _swap_hidden(envoy.output, lambda h: run(h, step))


@contextlib.contextmanager
def steer(model: Any, interventions: Interventions) -> Iterator[Any]:
    """Apply ``interventions`` to every prediction made inside the block, as torch hooks.

    Each site counts its forward calls from the start of every prediction (the family's
    ``run_start`` module), so ``calls``/``steps`` select the same forwards as in a trace.
    Every hook is removed when the block ends, exceptions included.

    Example:
        >>> with model.steer([Clamp(up, 6.0)]):
        ...     action = model.predict_action(obs)
    """
    sites = bind(model, interventions)
    model.dispatch()
    counts: dict[int, int] = defaultdict(int)
    handles = []
    try:
        start = model._module.get_submodule(model.run_start) if model.run_start else None
        if start is not None:
            handles.append(start.register_forward_pre_hook(lambda *args: counts.clear()))
        for (_, layer, _, tower, site), edits in sites:
            module = _envoy(model, tower, layer, site)._module
            run = _compose(edits)
            key = id(module)

            def next_call(key: int = key) -> int:
                call = counts[key]
                counts[key] += 1
                return call

            if site == "neurons":
                def pre(mod, args, run=run, next_call=next_call):
                    return (run(args[0], next_call()), *args[1:])

                handles.append(module.register_forward_pre_hook(pre))
            else:
                def post(mod, args, output, run=run, next_call=next_call):
                    call = next_call()
                    return _swap_hidden(output, lambda h: run(h, call))

                handles.append(module.register_forward_hook(post))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def hook_points(model: Any, interventions: Interventions) -> list[tuple[str, Callable]]:
    """The interventions as ``(hook_name, fn(activation, hook))`` pairs on TransformerLens's
    hook points: ``blocks.{L}.mlp.hook_post`` for FFN activations (the input of the output
    projection) and ``blocks.{L}.hook_resid_post`` for the residual stream. Each fn counts
    its own calls (one per forward), so make fresh pairs for every prediction.

    Example:
        >>> bridge.run_with_hooks(tokens, fwd_hooks=hook_points(model, Clamp(cluster, 6.0)))
    """
    out = []
    for (_, layer, _, tower, site), edits in bind(model, interventions):
        if tower != "vlm":
            continue  # TransformerLens bridges cover the language model only
        run = _compose(edits)
        calls = [0]

        def fn(activation, hook=None, run=run, calls=calls):
            call = calls[0]
            calls[0] += 1
            return run(activation, call)

        name = f"blocks.{layer}.mlp.hook_post" if site == "neurons" else f"blocks.{layer}.hook_resid_post"
        out.append((name, fn))
    return out
