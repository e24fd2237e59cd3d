"""TransformerLens adapters for Pi0 / Pi0.5's two Gemma towers, registered as ``PiGemmaVLM`` and ``PiGemmaExpert``.

Every component of a Gemma block is bridged, the norms through `PiGemmaNormBridge` (lerobot's
norms return ``(x, gate)`` and take Pi0.5's time condition), so every hook point of a Gemma
bridge exists on both towers, plus ``ln1/ln2.hook_gate`` on Pi0.5's expert. There the layer
adds ``gate * attn_out`` and ``gate * mlp_out`` to the residual stream: `decompose_resid` and
other analyses that sum ``hook_attn_out``/``hook_mlp_out`` do not apply to that tower, and
compatibility mode is refused on both experts (`pi0.BRIDGES`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge.generalized_components import (
    BlockBridge,
    EmbeddingBridge,
    GatedMLPBridge,
    LinearBridge,
    PositionEmbeddingsAttentionBridge,
    RMSNormalizationBridge,
    RotaryEmbeddingBridge,
    UnembeddingBridge,
)
from transformer_lens.model_bridge.supported_architectures.gemma1 import Gemma1ArchitectureAdapter

from nnsight_vla.family import relocate

from .pi0 import BRIDGES, PI0

_ALONE = object()  # a norm called without cond: by TransformerLens, not by lerobot


class PiGemmaNormBridge(RMSNormalizationBridge):
    """A norm bridge for lerobot's ``PiGemmaRMSNorm``, which takes ``cond`` and returns a pair.

    lerobot's ``PiGemmaRMSNorm`` takes ``cond`` (Pi0.5's adaptive norm: scale, shift and residual
    gate from the denoising time) and returns ``(normed, gate)``, where Gemma's norm bridge
    expects one tensor in and out. Called as lerobot calls it (with ``cond``, None included) it
    returns the pair; called as TransformerLens's analyses call a norm (one tensor) it returns
    the normed tensor. ``hook_scale`` and ``hook_normalized`` hold the RMS
    and ``x / rms``, before the weight or the modulation; ``hook_gate`` (adaptive norms only)
    the gate by which the layer scales what it adds to the residual stream after this norm's
    sublayer: ``resid_mid = resid_pre + ln1.hook_gate * attn_out``, and the same with ln2 and
    ``mlp_out``.
    """

    def __init__(self, name: str, config: Any):
        super().__init__(name, config)
        self.hook_gate = HookPoint()

    def forward(self, hidden_states: torch.Tensor, cond: Any = _ALONE, **kwargs: Any) -> Any:
        """Run lerobot's norm through the hooks; unlike Gemma's norm bridge, it may return a pair.

        With ``cond`` passed (None included) it returns ``(normed, gate)``, else ``normed`` alone.
        """
        x = self.hook_in(hidden_states)
        with torch.no_grad():
            var = x.float().pow(2).mean(-1, keepdim=True) + self.original_component.eps
        self.hook_scale(var.sqrt())
        self.hook_normalized(x.float() * torch.rsqrt(var))
        normed, gate = self.original_component(x, cond=None if cond is _ALONE else cond)
        normed = self.hook_out(normed)
        if cond is _ALONE:
            return normed
        return normed, None if gate is None else self.hook_gate(gate)


class _PiGemma(Gemma1ArchitectureAdapter):
    """Gemma's bridges on one tower of the policy, at the paths of its layout.

    The bridge runs the tower on the tower's own inputs (`LeRobotVLA.bridge_inputs`).
    """

    part: str  # a key of pi0.BRIDGES

    def __init__(self, cfg):
        super().__init__(cfg)
        self.root = BRIDGES[self.part].path  # the module the bridge wraps
        self.tower = PI0.layout.tower(BRIDGES[self.part].tower)  # the same paths in Pi0.5
        norm = lambda name: PiGemmaNormBridge(name=name, config=self.cfg)  # noqa: E731
        linears = lambda *names: {name: LinearBridge(name=name) for name in names}  # noqa: E731
        # names are placeholders that relocate() sets from the layout (rotary_emb aside)
        self.component_mapping = {
            "rotary_emb": RotaryEmbeddingBridge(name=self.inside("rotary_emb"), config=self.cfg),
            "blocks": BlockBridge(name="layers", submodules={
                "ln1": norm("ln1"),
                "ln2": norm("ln2"),
                "attn": PositionEmbeddingsAttentionBridge(
                    name="attn", config=self.cfg, submodules=linears("q", "k", "v", "o")),
                "mlp": GatedMLPBridge(
                    name="mlp", config=self.cfg, submodules=linears("gate", "in", "out")),
            }),
            "ln_final": norm("ln_final"),
            **({"embed": EmbeddingBridge(name="embed")} if self.tower.embed else {}),
            **({"unembed": UnembeddingBridge(name="unembed")} if self.tower.unembed else {}),
        }
        relocate(self, self.tower, root=self.root)

    def inside(self, name: str = "") -> str:
        """A path in the tower's root module, relative to the bridged module."""
        return ".".join(p for p in (self.tower.root[len(self.root) + 1:], name) if p)

    def prepare_model(self, hf_model: torch.nn.Module) -> None:
        """Make the bridged module (the bridge's own copy) run the tower.

        It returns the tower's final-normed output, through the unembedding when the tower has one.
        """
        tower = hf_model.get_submodule(self.inside())
        unembed = self.component_mapping.get("unembed")

        def forward(input_ids=None, inputs_embeds=None, output_attentions=None, **kwargs):
            # run_with_cache asks for attention weights, which lerobot's PiGemmaModel cannot
            # return (its layers return one tensor); hook_pattern has them anyway
            out = tower(input_ids, inputs_embeds=inputs_embeds, **kwargs).last_hidden_state
            # the head as it is now: the bridge replaces it with its UnembeddingBridge
            return out if unembed is None else hf_model.get_submodule(unembed.name)(out)

        hf_model.forward = forward


class PiGemmaVLM(_PiGemma):
    """PaliGemma's language model and its ``lm_head``: the bridge returns logits."""

    part = "vlm"


class PiGemmaExpert(_PiGemma):
    """The action expert (no vocabulary): the bridge returns its final-normed output.

    That output is what ``action_out_proj`` reads (the velocity is that of the last
    ``chunk_size`` positions).
    """

    part = "expert"
