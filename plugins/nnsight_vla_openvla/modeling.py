"""OpenVLA's network: fused DINOv2 + SigLIP features, a GELU projector and a Llama decoder."""

from __future__ import annotations

import functools

import timm
import torch
from torch import nn
from transformers import LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from .config import OpenVLAConfig


def _penultimate_block(featurizer: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Patch features after the second-to-last block, without final norm or prefix tokens."""
    # timm >= 1.0 returns a list; take its only entry.
    return featurizer.get_intermediate_layers(pixels, n={len(featurizer.blocks) - 2})[0]


def _featurizer(model_id: str, image_size: int, act_layer: str | None, overrides: dict) -> nn.Module:
    model = timm.create_model(
        model_id, pretrained=False, num_classes=0, img_size=image_size, act_layer=act_layer, **overrides
    )
    # Calling the featurizer returns its penultimate-block patches (hooks on it fire as usual).
    model.forward = functools.partial(_penultimate_block, model)
    return model


class VisionBackbone(nn.Module):
    """DINOv2 (``featurizer``) and SigLIP (``fused_featurizer``) patch features, concatenated."""

    def __init__(self, config: OpenVLAConfig):
        super().__init__()
        overrides = config.timm_overrides or [{}] * len(config.timm_model_ids)
        specs = list(zip(config.timm_model_ids, config.image_sizes, config.timm_override_act_layers, overrides))
        self.featurizer = _featurizer(*specs[0])
        self.fused_featurizer = _featurizer(*specs[1]) if config.fused else None
        self.embed_dim = self.featurizer.embed_dim + (
            self.fused_featurizer.embed_dim if self.fused_featurizer is not None else 0
        )
        self.num_patches = self.featurizer.patch_embed.num_patches

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The patch features: DINOv2's alone, or DINOv2's and SigLIP's concatenated when fused.

        Fused, ``pixel_values`` holds 6 channels: the first 3 for DINOv2, the last 3 for SigLIP.
        """
        if self.fused_featurizer is None:
            return self.featurizer(pixel_values)
        dino, siglip = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self.featurizer(dino), self.fused_featurizer(siglip)], dim=2)


class Projector(nn.Module):
    """Three linear layers with exact GELUs between them, vision width -> LLM width."""

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.act_fn1 = nn.GELU()
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.act_fn2 = nn.GELU()
        self.fc3 = nn.Linear(llm_dim, llm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` through fc1, GELU, fc2, GELU and fc3."""
        return self.fc3(self.act_fn2(self.fc2(self.act_fn1(self.fc1(features)))))


class OpenVLANet(nn.Module):
    """The whole network; its state-dict keys are the official checkpoint's.

    timm's LayerScale ``gamma`` is stored as ``scale_factor`` in the checkpoint.
    """

    def __init__(self, config: OpenVLAConfig):
        super().__init__()
        self.vision_backbone = VisionBackbone(config)
        self.language_model = LlamaForCausalLM(config.llama)
        self.projector = Projector(self.vision_backbone.embed_dim, config.llama.hidden_size)

    @property
    def num_patches(self) -> int:
        """How many image patches the vision backbone yields per image."""
        return self.vision_backbone.num_patches

    def multimodal_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text mask with ones inserted for the patches after BOS."""
        ones = attention_mask.new_ones(attention_mask.shape[0], self.num_patches)
        return torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the language model is fed: token embeddings with the image patches after BOS.

        The attention mask over them and the position ids come with the embeddings.
        """
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if pixel_values is not None:
            dtype = self.projector.fc1.weight.dtype
            patches = self.projector(self.vision_backbone(pixel_values.to(dtype)))
            embeds = torch.cat([embeds[:, :1], patches.to(embeds.dtype), embeds[:, 1:]], dim=1)
            attention_mask = self.multimodal_mask(attention_mask)
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1] :]
        return embeds, attention_mask, position_ids

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> CausalLMOutputWithPast:
        """Run the model.

        With ``pixel_values``, ``attention_mask`` covers ``input_ids`` and the patches go after
        BOS; without, it covers the cached sequence plus ``input_ids``.
        """
        embeds, attention_mask, position_ids = self.embed(input_ids, attention_mask, pixel_values, position_ids)
        return self.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
        )
