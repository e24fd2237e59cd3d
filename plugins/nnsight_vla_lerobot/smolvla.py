"""SmolVLA (lerobot's ``smolvla``): SmolVLM's text layers and an interleaved cross-attention action expert, as data, and its model class `SmolVLA`."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from lerobot.policies.smolvla import SmolVLAConfig, SmolVLAPolicy, make_smolvla_pre_post_processors
from lerobot.policies.smolvla import modeling_smolvla, processor_smolvla, smolvlm_with_expert

from nnsight_vla.family import DECODER_BLOCK, Layout, TowerLayout, build_word_tokenizer

from . import sizing
from .kind import PolicyKind
from .policy import LeRobotVLA

WITH_EXPERT = "model.vlm_with_expert"
SMOLVLM = f"{WITH_EXPERT}.vlm"
VLM = f"{SMOLVLM}.model.text_model"
EXPERT = f"{WITH_EXPERT}.lm_expert"
#: Where a checkpoint keeps its VLM's transformers config (this project's layout: lerobot
#: reads it by name from the Hub, ``vlm_model_name``, even when the checkpoint has the weights).
VLM_DIR = "vlm"

#: lerobot runs a layer's parts, never the layer or its ``self_attn`` module: the attention's
#: output is ``o_proj``'s, and the residual stream is read at the next layer's input norm.
BLOCK = {**DECODER_BLOCK, "attn": "self_attn.o_proj"}
LAST = f"{VLM}.layers.-1"

LAYOUT = Layout(
    (
        TowerLayout("vlm", f"{VLM}.layers", f"{VLM}.norm", unembed=f"{SMOLVLM}.lm_head",
                    embed=f"{VLM}.embed_tokens", root=VLM, runs=1, block=BLOCK, layers_run=False),
        TowerLayout("expert", f"{EXPERT}.layers", f"{EXPERT}.norm", root=EXPERT, block=BLOCK, layers_run=False),
    ),
    {
        f"{SMOLVLM}.model.vision_model": "vision",
        f"{SMOLVLM}.model.connector": "projector",
        "model.state_proj": "state_proj",
        "model.action_in_proj": "action_in_proj",
        "model.action_out_proj": "action_out_proj",
        "model.action_time_mlp_in": "time_mlp_in",
        "model.action_time_mlp_out": "time_mlp_out",
    },
    run_start=f"{VLM}.embed_tokens",  # the instruction is embedded once per prediction, before any layer
    # The expert reads only the VLM's per-layer keys and values: what the last VLM layer
    # computes after them, and the final norm, never reach the actions.
    inert=(f"{LAST}.mlp", f"{LAST}.mlp.gate_proj", f"{LAST}.mlp.up_proj", f"{LAST}.mlp.down_proj",
           f"{LAST}.mlp.act_fn", f"{LAST}.post_attention_layernorm", f"{LAST}.self_attn.q_proj",
           f"{LAST}.self_attn.o_proj", f"{VLM}.norm"),
    idle=(f"{SMOLVLM}.lm_head", f"{VLM}.layers.*", f"{VLM}.layers.*.self_attn",
          f"{EXPERT}.layers.*", f"{EXPERT}.layers.*.self_attn"),
)


SMOLVLA = PolicyKind(
    "smolvla", SmolVLAConfig, SmolVLAPolicy, make_smolvla_pre_post_processors, modeling_smolvla,
    processor_smolvla, LAYOUT, tokenizer_name="HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
    tokenizer_label="SmolVLM", spec_extra=("num_steps", "self_attn_every_n_layers"),
    tiny_options={"vlm_model_name": "nnsight-vla/tiny-smolvlm", "load_vlm_weights": False, "num_vlm_layers": 4,
                  "resize_imgs_with_padding": (64, 64)},
)

#: SmolVLM's image tokens, by the tokenizer attribute names lerobot and transformers read.
IMAGE_TOKENS = {"fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
                "image_token": "<image>", "end_of_utterance_token": "<end_of_utterance>"}


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> Any:
    """SmolVLM's special tokens (image markers, ``<|im_start|>``, ``<end_of_utterance>``) over English words."""
    specials = ["<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>", "<image>",
                "<unk>", "<pad>"]
    return build_word_tokenizer(specials, bos="<|im_start|>", eos="<end_of_utterance>", unk="<unk>", pad="<pad>",
                                named=IMAGE_TOKENS)


def tiny_vlm_config(tokenizer: Any) -> Any:
    """The config of a 4-layer SmolVLM: a Llama text model, 64 wide, 4 heads of 16 over 2 KV heads.

    Its vision model is one SigLIP layer on 64-px images in 16-px patches, pixel-shuffled by 2:
    4 tokens per camera.
    """
    from transformers import SmolVLMConfig

    vocab = len(tokenizer)
    text = dict(model_type="llama", vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64,
                  patch_size=16)
    return SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=2, vocab_size=vocab,
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKENS["image_token"]))


class SmolVLA(LeRobotVLA):
    """SmolVLA (Hugging Face, lerobot 0.6.1).

    SmolVLM's first ``num_vlm_layers`` text layers read the cameras, the instruction and the state
    once; the action expert (a Llama of 0.75× the width) then denoises the chunk over
    ``num_steps`` flow-matching steps. Expert layers alternate: self-attention over the VLM's
    cached keys/values plus its own (every ``self_attn_every_n_layers``-th), else
    cross-attention to the VLM layer's keys/values.

    lerobot calls each layer's parts, never the layer: ``layers[i].output`` never exists (an
    error), ``attn_out`` sites are ``self_attn.o_proj``'s output and ``resid`` sites are read
    and written in place at the next layer's ``input_layernorm`` input (`nnsight_vla.Site`).

    Example:
        >>> model = nnsight_vla.load("tiny-smolvla")
        >>> with model.predict_action(obs) as tracer:
        ...     for step in tracer.iter[:10]:                   # the denoising steps
        ...         v = model.action_out_proj.output.save()
    """

    kinds = {"smolvla": SMOLVLA}

    def action_calls(self, tower: str) -> range | None:
        """The expert runs once per denoising step, and each step emits a velocity."""
        return range(self.policy_config.num_steps) if tower == "expert" else None

    def _tiny_tokenizer(self) -> Any:
        return tiny_tokenizer()

    def _configure_parts(self) -> None:
        config = self.policy_config
        config.load_vlm_weights = False  # the checkpoint holds the VLM's weights: never fetch SmolVLM's
        if self.folder is None:
            self.vlm_config = tiny_vlm_config(self._tokenizer)
            return
        from transformers import AutoConfig

        self.vlm_config = self._read_part(VLM_DIR, config.vlm_model_name, AutoConfig, "VLM config")

    def _local_parts(self) -> contextlib.AbstractContextManager:
        """SmolVLM's config and processor, which lerobot fetches by name, come from this model.

        Lerobot builds SmolVLM from them; it reads only the processor's tokenizer (the image token
        ids).
        """
        processor = SimpleNamespace(tokenizer=self._tokenizer)
        given = {"AutoConfig": sizing.Given(self.vlm_config, fresh=True), "AutoProcessor": sizing.Given(processor)}
        return sizing.replaced(smolvlm_with_expert, given)

    def _chunk(self, batch: dict[str, Any], seed: int | None, num_steps: int | None) -> torch.Tensor:
        """lerobot reads the number of denoising steps from the config: it is set for this call."""
        config = self._module.model.config
        default = config.num_steps
        config.num_steps = num_steps or default
        try:
            return super()._chunk(batch, seed, None)
        finally:
            config.num_steps = default

    def _save(self, folder: Path, **options: Any) -> None:
        super()._save(folder, **options)
        self.vlm_config.save_pretrained(folder / VLM_DIR)
