"""`to_bridge`: a tower as a TransformerLens `TransformerBridge` sharing the model's weights, and the inputs the tower sees."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator

import torch

from ..errors import InputError, SetupError
from ..layout import BridgePart
from ..towers import module_of


def shared_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module``'s structure that shares every parameter and buffer.

    A bridge wraps its modules in place, so it gets this copy and the user's model stays
    untouched.
    """
    memo = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return copy.deepcopy(module, memo)


def _part(model: Any, part: str) -> BridgePart:
    parts = model.bridge_parts()
    if not parts:
        raise InputError(
            f"{type(model).__name__} ({model.name_or_path!r}) has no TransformerLens bridge: no adapter maps its "
            "architecture yet. Trace it with nnsight instead (`with model.predict_action(obs) as tracer:`); the "
            "families that have one are listed in docs/transformer_lens.md."
        )
    if part not in parts:
        raise InputError(
            f"{type(model).__name__} has no TransformerLens part {part!r}; use one of {sorted(parts)}."
        )
    return parts[part]


def to_bridge(model: Any, part: str = "vlm", compatibility: bool = False) -> Any:
    """A `TransformerBridge` of one part of the model (``"vlm"``: the language model).

    It is built through the adapter registered under the family's architecture name (the
    ``transformer_lens.architectures`` entry points). The bridge shares the model's weights
    (no second copy in memory) and wraps its own module objects, so the nnsight model traces,
    saves and reloads exactly as before.

    ``compatibility=True`` turns on TransformerLens's compatibility mode (norms folded into
    the next weights, centred writing weights and unembedding), which `accumulated_resid`,
    `decompose_resid`, `logit_attrs` and the logit lens expect. The processed weights are
    the bridge's own new tensors; the model's weights are never changed. Towers whose norms
    are adaptive (Pi0.5's action expert) refuse it.

    Example:
        >>> bridge = to_bridge(model)
        >>> logits, cache = bridge.run_with_cache(**bridge_inputs(model, obs))
        >>> cache["blocks.1.mlp.hook_post"].shape
    """
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    model.dispatch()
    spec = _part(model, part)
    ArchitectureAdapterFactory.discover_entry_points()
    if spec.architecture not in ArchitectureAdapterFactory._adapters:
        raise SetupError(
            f"no TransformerLens adapter is registered as {spec.architecture!r}: nnsight-vla declares it "
            "in the 'transformer_lens.architectures' entry points; reinstall the project (make env)."
        )
    if compatibility and spec.unfoldable:
        raise InputError(
            f"compatibility mode cannot apply to part {part!r}: {spec.unfoldable}. Use the bridge "
            "without it (raw weights; every hook and the cache still work)."
        )
    module = shared_copy(module_of(model).get_submodule(spec.path))
    config = copy.copy(spec.hf_config(module_of(model)))
    config._attn_implementation = "eager"  # hook_pattern needs the attention weights
    bridge = build_bridge_from_module(module, spec.architecture, hf_config=config, model_name=model.name_or_path)
    if compatibility:
        bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge


def bridge_inputs(model: Any, observations: Any, part: str = "vlm") -> dict[str, torch.Tensor]:
    """What ``part`` of the model is fed for ``observations``, as keyword arguments of the bridge.

    These are its inputs inside a prediction's first forward (``input``: the embeddings,
    image patches where the policy puts them; ``attention_mask``; ``position_ids``; and
    whatever else the tower takes: Pi0's action expert, at denoising step 0 of a seed-0
    prediction, also gets the VLM's keys and values, ``past_key_values``, and in Pi0.5 the
    time condition of its adaptive norms, ``adarms_cond``).

    Example:
        >>> bridge.run_with_cache(**bridge_inputs(model, obs))
    """
    _part(model, part)
    with torch.no_grad(), model.exclusive():
        model.dispatch()
        return model.bridge_inputs(part, model._observations((observations,)))


@contextlib.contextmanager
def token_inputs(model: Any, bridge: Any, observation: Any, part: str = "vlm") -> Iterator[torch.Tensor]:
    """Token ids of one observation for TransformerLens functions that take tokens.

    Such functions are ``transformer_lens.patching`` and ``utilities.test_prompt``. The ids
    are the prompt's, with placeholder ids where the image patches go. While the block is
    open, a hook on the bridge's ``hook_embed`` writes this observation's patch embeddings
    there, so any prompt of the same length runs with this image (patching between two
    instructions of one scene); where the policy's mask is not causal (Pi0's prefix-LM mask),
    each run of the bridge on token ids also gets the mask and positions the policy builds
    for those ids.

    Example:
        >>> with token_inputs(model, bridge, clean) as tokens:
        ...     corrupt = token_inputs_of(...)   # same image, another instruction
        ...     patching.get_act_patch_resid_pre(bridge, corrupt_tokens, clean_cache, metric)
    """
    _part(model, part)
    with torch.no_grad(), model.exclusive():
        model.dispatch()
        prompt = model.bridge_tokens(part, model._observations((observation,)))
    length = prompt.tokens.shape[1]

    def write_patches(embeds: torch.Tensor, hook: Any = None) -> torch.Tensor:
        if embeds.shape[1] != length:
            raise InputError(
                f"this run has {embeds.shape[1]} positions, the observation's prompt {length}: "
                "prompts patched together must have the same number of tokens."
            )
        embeds = embeds.clone()
        embeds[:, prompt.patches] = prompt.embeddings.to(embeds.dtype)
        return embeds

    point = bridge.hook_dict["hook_embed"]
    point.add_hook(write_patches, is_permanent=True)  # survives run_with_hooks's reset
    handle = next(h for h in point.fwd_hooks if h.user_hook is write_patches)
    masked = prompt.forward_kwargs is not None and "forward" not in vars(bridge)
    if masked:
        bridge.forward = _with_masks(bridge.forward, prompt.forward_kwargs)
    try:
        yield prompt.tokens
    finally:  # remove this block's writer (and mask) only
        if masked:
            del bridge.forward
        handle.hook.remove()
        point.fwd_hooks.remove(handle)


def _with_masks(forward: Callable, forward_kwargs: Callable) -> Callable:
    """``forward`` that adds the policy's mask and positions to runs on token ids lacking them."""

    def run(input: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(input, torch.Tensor) and not input.is_floating_point() and "attention_mask" not in kwargs:
            ids = input if input.ndim == 2 else input[None]
            kwargs = {**forward_kwargs(ids.to("cpu")), **kwargs}
            kwargs = {k: v.to(ids.device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return forward(input, *args, **kwargs)

    return run
