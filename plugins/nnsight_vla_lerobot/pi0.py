"""What differs between lerobot's Pi0 and Pi0.5, as data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lerobot.policies.pi0 import PI0Config, PI0Policy, make_pi0_pre_post_processors
from lerobot.policies.pi0 import modeling_pi0, processor_pi0
from lerobot.policies.pi05 import PI05Config, PI05Policy, make_pi05_pre_post_processors
from lerobot.policies.pi05 import modeling_pi05, processor_pi05

from nnsight_vla import Layout, TowerLayout

PWE = "model.paligemma_with_expert"
VLM = f"{PWE}.paligemma.model.language_model"
EXPERT = f"{PWE}.gemma_expert.model"

TOWERS = (
    TowerLayout("vlm", f"{VLM}.layers", f"{VLM}.norm", unembed=f"{PWE}.paligemma.lm_head",
                embed=f"{VLM}.embed_tokens", root=VLM, runs=1),
    TowerLayout("expert", f"{EXPERT}.layers", f"{EXPERT}.norm", root=EXPERT),
)
#: Family module path -> standard name, shared by both variants (besides the towers').
COMMON_NAMES = {
    f"{PWE}.paligemma.model.vision_tower": "vision",
    f"{PWE}.paligemma.model.multi_modal_projector": "projector",
    "model.action_in_proj": "action_in_proj",
    "model.action_out_proj": "action_out_proj",
}
LAST = f"{VLM}.layers.-1"
#: The expert reads only the VLM's per-layer keys and values: what the last VLM layer
#: computes after them, the final norm and the head never reach the actions.
INERT = (
    f"{LAST}.mlp", f"{LAST}.mlp.gate_proj", f"{LAST}.mlp.up_proj", f"{LAST}.mlp.down_proj",
    f"{LAST}.mlp.act_fn", f"{LAST}.post_attention_layernorm", f"{LAST}.self_attn.q_proj",
    f"{LAST}.self_attn.o_proj", f"{VLM}.norm", f"{PWE}.paligemma.lm_head",
)
INERT_OUTPUT = (LAST, f"{LAST}.self_attn")


def _layout(names: dict[str, str]) -> Layout:
    return Layout(TOWERS, {**COMMON_NAMES, **names}, run_start=f"{VLM}.embed_tokens",
                  inert=INERT, inert_output=INERT_OUTPUT)


@dataclass(frozen=True)
class Variant:
    """One lerobot policy type and where its parts live."""

    type: str
    config_class: type
    policy_class: type
    make_processors: Callable
    modeling: object  # the lerobot module whose sizes tiny models patch
    processing: object  # the lerobot module that builds its processors
    layout: Layout


VARIANTS = {
    "pi0": Variant(
        "pi0", PI0Config, PI0Policy, make_pi0_pre_post_processors, modeling_pi0, processor_pi0,
        _layout({
            "model.action_time_mlp_in": "time_mlp_in",
            "model.action_time_mlp_out": "time_mlp_out",
            "model.state_proj": "state_proj",
        }),
    ),
    "pi05": Variant(
        "pi05", PI05Config, PI05Policy, make_pi05_pre_post_processors, modeling_pi05, processor_pi05,
        _layout({"model.time_mlp_in": "time_mlp_in", "model.time_mlp_out": "time_mlp_out"}),
    ),
}
