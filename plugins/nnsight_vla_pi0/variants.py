"""What differs between lerobot's Pi0 and Pi0.5, as data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lerobot.policies.pi0 import PI0Config, PI0Policy, make_pi0_pre_post_processors
from lerobot.policies.pi0 import modeling_pi0, processor_pi0
from lerobot.policies.pi05 import PI05Config, PI05Policy, make_pi05_pre_post_processors
from lerobot.policies.pi05 import modeling_pi05, processor_pi05

PWE = "model.paligemma_with_expert"
VLM = f"{PWE}.paligemma.model.language_model"
EXPERT = f"{PWE}.gemma_expert.model"

#: Family module path -> standard name, shared by both variants.
COMMON_NAMES = {
    f"{PWE}.paligemma.model.vision_tower": "vision",
    f"{PWE}.paligemma.model.multi_modal_projector": "projector",
    f"{VLM}.layers": "layers",
    f"{VLM}.norm": "ln_final",
    f"{PWE}.paligemma.lm_head": "lm_head",
    EXPERT: "expert",
    "model.action_in_proj": "action_in_proj",
    "model.action_out_proj": "action_out_proj",
}


@dataclass(frozen=True)
class Variant:
    """One lerobot policy type and where its parts live."""

    type: str
    config_class: type
    policy_class: type
    make_processors: Callable
    modeling: object  # the lerobot module whose sizes tiny models patch
    processing: object  # the lerobot module that builds its processors
    names: dict[str, str]


VARIANTS = {
    "pi0": Variant(
        "pi0", PI0Config, PI0Policy, make_pi0_pre_post_processors, modeling_pi0, processor_pi0,
        {
            **COMMON_NAMES,
            "model.action_time_mlp_in": "time_mlp_in",
            "model.action_time_mlp_out": "time_mlp_out",
            "model.state_proj": "state_proj",
        },
    ),
    "pi05": Variant(
        "pi05", PI05Config, PI05Policy, make_pi05_pre_post_processors, modeling_pi05, processor_pi05,
        {**COMMON_NAMES, "model.time_mlp_in": "time_mlp_in", "model.time_mlp_out": "time_mlp_out"},
    ),
}
