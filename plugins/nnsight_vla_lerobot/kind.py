"""`PolicyKind`: one lerobot policy type (its classes, modules, layout and sizes) as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Mapping

from nnsight_vla.family import Layout


@dataclass(frozen=True)
class PolicyKind:
    """What `LeRobotVLA` needs to know about one lerobot policy type, as data.

    The rule for extending the lerobot base: what names lerobot's own parts (its classes,
    modules, factory, config fields) or sizes them is a field here; whatever this project
    computes (which forwards emit actions, key fixes on loading, resizing, tokenizers) is a
    hook of the family's `LeRobotVLA` subclass. No concern has both.

    Attributes:
        type: lerobot's ``config.type`` (``"pi0"``); the built-in tiny policy is ``tiny-<type>``.
        config_class, policy_class: lerobot's config and policy classes.
        make_processors: lerobot's ``make_<type>_pre_post_processors``.
        modeling: the lerobot module that builds the network (`LeRobotVLA._resize` replaces
            some of its attributes while a resized policy is built).
        processing: the lerobot module that builds the processors (its
            ``TokenizerProcessorStep`` takes the tiny tokenizer).
        layout: the policy's module paths (standard names, towers, inert sites).
        tokenizer_name: the Hub tokenizer lerobot uses when a checkpoint ships none.
        tokenizer_label: its readable name, for error messages (``"PaliGemma"``).
        spec_extra: config attributes copied into ``spec.extra``.
        unused_weights: weights no lerobot forward reads; zero-filled with a warning if absent.
        tiny_sizes: the sizes of the built-in tiny policy (None: lerobot's own sizes).
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
    spec_extra: tuple[str, ...] = ()
    unused_weights: tuple[str, ...] = ()
    tiny_sizes: Mapping[str, Mapping[str, Any]] | None = None
    tiny_options: Mapping[str, Any] = field(default_factory=dict)
