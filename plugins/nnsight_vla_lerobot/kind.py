"""`PolicyKind`: one lerobot policy type (its classes, modules, layout and quirks) as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Mapping

from nnsight_vla.family import Layout


def no_action_calls(config: Any, tower: str) -> range | None:
    """The default `PolicyKind.action_calls` rule: no forward emits an action."""
    return None


@dataclass(frozen=True)
class PolicyKind:
    """What `LeRobotVLA` needs to know about one lerobot policy type.

    Attributes:
        type: lerobot's ``config.type`` (``"pi0"``); the built-in tiny policy is ``tiny-<type>``.
        config_class, policy_class: lerobot's config and policy classes.
        make_processors: lerobot's ``make_<type>_pre_post_processors``.
        modeling: the lerobot module that builds the network (`resize` patches it).
        processing: the lerobot module that builds the processors (its
            ``TokenizerProcessorStep`` takes the tiny tokenizer).
        layout: the policy's module paths (standard names, towers, inert sites).
        tokenizer_name: the Hub tokenizer lerobot uses when a checkpoint ships none.
        tokenizer_label: its readable name, for error messages (``"PaliGemma"``).
        action_calls: ``(config, tower) -> range | None``: the calls of ``tower`` that
            emit actions (see `nnsight_vla.VLA.action_calls`).
        spec_extra: config attributes copied into ``spec.extra``.
        unused_weights: weights no lerobot forward reads; zero-filled with a warning if absent.
        remap_keys: ``(policy, state_dict) -> state_dict``: lerobot's key fixes on loading.
        tiny_sizes: the sizes of the built-in tiny policy (None: no tiny policy).
        resize: ``(modeling, sizes) -> {attribute: replacement}``: what of `modeling` is
            replaced while a resized policy is built.
        tiny_options: extra config fields of the tiny policy (e.g. its image size).

    Example:
        >>> PolicyKind("toy", ToyConfig, ToyPolicy, make_toy_pre_post_processors,
        ...            modeling_toy, processor_toy, TOY_LAYOUT, "org/toy-tokenizer", "Toy")
    """

    type: str
    config_class: type
    policy_class: type
    make_processors: Callable
    modeling: ModuleType
    processing: ModuleType
    layout: Layout
    tokenizer_name: str
    tokenizer_label: str
    action_calls: Callable[[Any, str], range | None] = no_action_calls
    spec_extra: tuple[str, ...] = ()
    unused_weights: tuple[str, ...] = ()
    remap_keys: Callable[[Any, dict], dict] | None = None
    tiny_sizes: Mapping[str, Mapping[str, Any]] | None = None
    resize: Callable[[ModuleType, Mapping], Mapping[str, Any]] | None = None
    tiny_options: Mapping[str, Any] = field(default_factory=dict)
