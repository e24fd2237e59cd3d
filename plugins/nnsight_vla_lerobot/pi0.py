"""Pi0 and Pi0.5 (lerobot's ``pi0`` and ``pi05`` policy types) as data, and their model class `Pi0`."""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType
from typing import Any, Mapping

from lerobot.policies.pi0 import PI0Config, PI0Policy, make_pi0_pre_post_processors
from lerobot.policies.pi0 import modeling_pi0, processor_pi0
from lerobot.policies.pi05 import PI05Config, PI05Policy, make_pi05_pre_post_processors
from lerobot.policies.pi05 import modeling_pi05, processor_pi05

from nnsight_vla.family import BridgePart, Layout, TowerLayout

from .kind import PolicyKind
from .policy import LeRobotVLA

PWE = "model.paligemma_with_expert"
VLM = f"{PWE}.paligemma.model.language_model"
EXPERT = f"{PWE}.gemma_expert.model"

TOWERS = (
    TowerLayout("vlm", f"{VLM}.layers", f"{VLM}.norm", unembed=f"{PWE}.paligemma.lm_head",
                embed=f"{VLM}.embed_tokens", root=VLM, runs=1),
    TowerLayout("expert", f"{EXPERT}.layers", f"{EXPERT}.norm", root=EXPERT),
)
#: Family module path -> standard name, shared by both types (besides the towers').
COMMON_NAMES = {
    f"{PWE}.paligemma.model.vision_tower": "vision",
    f"{PWE}.paligemma.model.multi_modal_projector": "projector",
    "model.action_in_proj": "action_in_proj",
    "model.action_out_proj": "action_out_proj",
}
LAST = f"{VLM}.layers.-1"
#: The expert reads only the VLM's per-layer keys and values: what the last VLM layer
#: computes after them and the final norm never reach the actions; the head never runs.
INERT = (
    f"{LAST}.mlp", f"{LAST}.mlp.gate_proj", f"{LAST}.mlp.up_proj", f"{LAST}.mlp.down_proj",
    f"{LAST}.mlp.act_fn", f"{LAST}.post_attention_layernorm", f"{LAST}.self_attn.q_proj",
    f"{LAST}.self_attn.o_proj", f"{VLM}.norm",
)
IDLE = (f"{PWE}.paligemma.lm_head",)
INERT_OUTPUT = (LAST, f"{LAST}.self_attn")

#: Widths for lerobot's two Gemma variant names and the SigLIP tower. lerobot hard-codes
#: 8 attention heads in its training forward, and the expert reads the VLM's keys/values
#: layer by layer, so heads, KV heads, head_dim and depth must agree between the two.
TINY_SIZES = {
    "gemma_2b": dict(width=64, depth=3, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    "gemma_300m": dict(width=32, depth=3, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16),
    "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=16),
}


#: TransformerLens parts (adapters in tl_adapter.py): PaliGemma's language model with its
#: lm_head, and the action expert, whose bridge returns its final norm's output (its head
#: never runs).
BRIDGES = {
    "vlm": BridgePart(f"{PWE}.paligemma", "PiGemmaVLM", "vlm", config="config.text_config"),
    "expert": BridgePart(
        f"{PWE}.gemma_expert", "PiGemmaExpert", "expert",
        unfoldable="the action expert has no unembedding to fold its final norm into",
    ),
}
PI05_BRIDGES = {**BRIDGES, "expert": replace(
    BRIDGES["expert"],
    unfoldable="the action expert's norms are adaptive: their scale, shift and residual gate "
               "come from the denoising time (adarms_cond), so no weight can absorb them",
)}


def _layout(names: dict[str, str], bridges: dict) -> Layout:
    return Layout(TOWERS, {**COMMON_NAMES, **names}, run_start=f"{VLM}.embed_tokens",
                  inert=INERT, inert_output=INERT_OUTPUT, idle=IDLE, bridges=bridges)


def resize_paligemma(modeling: ModuleType, sizes: Mapping) -> dict[str, Any]:
    """What of ``modeling`` (lerobot's PaliGemma-based modeling module) gives way to ``sizes``.

    Lerobot reads the Gemma widths from ``get_gemma_config`` and hard-codes SigLIP's inside its
    PaliGemma class: both give way to ``sizes``.
    """
    paligemma = modeling.PaliGemmaForConditionalGenerationWithPiGemma

    def sized_paligemma(config):
        for key, value in sizes["vision"].items():
            setattr(config.vision_config, key, value)
        config.vision_config.projection_dim = config.text_config.hidden_size
        return paligemma(config=config)

    return {
        "get_gemma_config": lambda name: modeling.GemmaConfig(**sizes[name]),
        "PaliGemmaForConditionalGenerationWithPiGemma": sized_paligemma,
    }


def _kind(type_: str, classes: tuple, names: dict[str, str], bridges: dict = BRIDGES) -> PolicyKind:
    return PolicyKind(
        type_, *classes, layout=_layout(names, bridges),
        tokenizer_name="google/paligemma-3b-pt-224", tokenizer_label="PaliGemma",
        spec_extra=("num_inference_steps",),
        # the expert never decodes tokens: no lerobot forward reads its head
        unused_weights=(f"{PWE}.gemma_expert.lm_head.weight",), tiny_sizes=TINY_SIZES,
        tiny_options={"image_resolution": (64, 64)},
    )


PI0 = _kind(
    "pi0", (PI0Config, PI0Policy, make_pi0_pre_post_processors, modeling_pi0, processor_pi0),
    {"model.action_time_mlp_in": "time_mlp_in", "model.action_time_mlp_out": "time_mlp_out",
     "model.state_proj": "state_proj"},
)
PI05 = _kind(
    "pi05", (PI05Config, PI05Policy, make_pi05_pre_post_processors, modeling_pi05, processor_pi05),
    {"model.time_mlp_in": "time_mlp_in", "model.time_mlp_out": "time_mlp_out"}, PI05_BRIDGES,
)
KINDS = {kind.type: kind for kind in (PI0, PI05)}


class Pi0(LeRobotVLA):
    """Pi0 / Pi0.5 (Physical Intelligence, as ported by lerobot 0.6.1).

    The VLM (PaliGemma: SigLIP + Gemma) reads the cameras and the instruction once; the
    action expert (a smaller Gemma) then denoises an action chunk over
    ``num_inference_steps`` flow-matching steps, attending to the VLM's per-layer keys and
    values. Standard names: ``vision``, ``projector``, ``layers`` (VLM), ``ln_final``,
    ``lm_head``, ``expert`` (``expert.layers[i].mlp.down_proj``), ``action_in_proj``,
    ``action_out_proj`` (its output is each step's velocity), ``time_mlp_in/out`` and, for
    Pi0, ``state_proj``. The last VLM layer's MLP, ``ln_final`` and ``lm_head`` cannot
    change the actions; touching them in a trace warns.

    Example:
        >>> model = nnsight_vla.load("tiny-pi0")
        >>> chunk = model.predict_action(obs, seed=0)          # (chunk_size, action_dim)
        >>> with model.predict_action(obs) as tracer:
        ...     for step in tracer.iter[:10]:                  # the denoising steps
        ...         v = model.action_out_proj.output.save()
    """

    kinds = KINDS

    def action_calls(self, tower: str) -> range | None:
        """The expert runs once per denoising step, and each step emits a velocity."""
        return range(self.policy_config.num_inference_steps) if tower == "expert" else None

    def _remap_keys(self, policy: Any, tensors: dict) -> dict:
        """lerobot's loading: openpi's key fixes, then a ``model.`` prefix on every key."""
        fixed = policy._fix_pytorch_state_dict_keys(tensors, policy.config)
        return {k if k.startswith("model.") else f"model.{k}": v for k, v in fixed.items()}

    def _resize(self, sizes: Mapping) -> dict[str, Any]:
        return resize_paligemma(self.kind.modeling, sizes)
