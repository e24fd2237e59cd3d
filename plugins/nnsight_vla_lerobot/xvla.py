"""X-VLA (lerobot's ``xvla``): Florence-2's encoder and a flow-matching action head, as data, and class `XVLA`."""

from __future__ import annotations

import functools
from typing import Any

import torch
from lerobot.policies.xvla import XVLAConfig, XVLAPolicy
from lerobot.policies.xvla import modeling_xvla, processor_xvla
from lerobot.policies.xvla.processor_xvla import make_xvla_pre_post_processors
from lerobot.utils.constants import OBS_LANGUAGE_TOKENS as TOKENS_KEY
from torch.overrides import TorchFunctionMode

from nnsight_vla.family import InputError, Layout, SetupError, TowerLayout, build_word_tokenizer

from .kind import PolicyKind
from .policy import LeRobotVLA

LM = "model.vlm.language_model"  # a BartModel whose decoder lerobot deletes
ENCODER = f"{LM}.encoder"
HEAD = "model.transformer"  # lerobot's SoftPromptedTransformer
#: BART is post-LN: every encoder layer ends in its own LayerNorm and no norm follows the
#: last one. This identity, attached by `XVLA` (no weights, never run), is the tower's final norm.
NO_FINAL_NORM = f"{ENCODER}.final_norm"
SHARED, EMBED = f"{LM}.shared.weight", f"{ENCODER}.embed_tokens.weight"  # one tied matrix
#: The tiny text vocabulary: the word tokenizer, padded with reserved pieces to this size.
VOCAB = 1024

#: Inside a BART encoder layer (post-LN: attention, add, norm; fc1, GELU, fc2, add, norm).
BART_BLOCK = {
    "attn": "self_attn", "attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj", "attn.o": "self_attn.out_proj", "ln1_post": "self_attn_layer_norm",
    "mlp": "fc2", "mlp.in": "fc1", "mlp.out": "fc2", "ln2_post": "final_layer_norm",
}
#: Inside an action-head block (pre-LN ViT-style: norm1, attn, norm2, mlp).
HEAD_BLOCK = {
    "ln1": "norm1", "attn": "attn", "attn.o": "attn.proj",
    "ln2": "norm2", "mlp": "mlp", "mlp.in": "mlp.fc1", "mlp.out": "mlp.fc2",
}

LAYOUT = Layout(
    (
        # lerobot embeds the ids with ``shared`` and feeds the encoder embeddings, so the
        # encoder's own ``embed_tokens`` (the same tied matrix) never runs: it is the unembedding.
        TowerLayout("vlm", f"{ENCODER}.layers", NO_FINAL_NORM, unembed=f"{ENCODER}.embed_tokens",
                    embed=f"{LM}.shared", root=ENCODER, runs=1, block=BART_BLOCK),
        TowerLayout("expert", f"{HEAD}.blocks", f"{HEAD}.norm", root=HEAD, block=HEAD_BLOCK),
    ),
    {
        "model.vlm.vision_tower": "vision",
        "model.vlm.multi_modal_projector": "projector",
        f"{HEAD}.action_encoder": "action_in_proj",
        f"{HEAD}.action_decoder": "action_out_proj",
        f"{HEAD}.vlm_proj": "vlm_proj",
        f"{HEAD}.aux_visual_proj": "aux_visual_proj",
    },
    run_start="model.vlm.vision_tower",  # every camera is encoded once, first
    idle=(NO_FINAL_NORM, f"{ENCODER}.embed_tokens"),
)

#: The tiny policy: two 64-px cameras through a two-stage DaViT, a 2-layer BART encoder
#: (d_model 32) and a 2-block action head (width 32), 4 denoising steps.
TINY_FLORENCE = {
    "vision_config": {
        "depths": [1, 1], "patch_size": [7, 3], "patch_stride": [4, 2], "patch_padding": [3, 1],
        "patch_prenorm": [False, True], "embed_dim": [16, 32], "num_heads": [2, 4], "num_groups": [2, 4],
        "window_size": 4, "projection_dim": 32, "max_position_embeddings": 16, "drop_path_rate": 0.0,
    },
    "text_config": {
        "vocab_size": VOCAB, "d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64, "decoder_layers": 1, "decoder_attention_heads": 2, "decoder_ffn_dim": 64,
        "max_position_embeddings": 128,
    },
}


XVLA_KIND = PolicyKind(
    "xvla", XVLAConfig, XVLAPolicy, make_xvla_pre_post_processors, modeling_xvla, processor_xvla,
    LAYOUT, tokenizer_name="facebook/bart-large", tokenizer_label="BART",
    spec_extra=("num_denoising_steps", "action_mode"),
    tiny_options={
        "florence_config": TINY_FLORENCE, "hidden_size": 32, "depth": 2, "num_heads": 2,
        "len_soft_prompts": 4, "num_domains": 2, "num_denoising_steps": 4, "action_mode": "auto",
        "tokenizer_max_length": 16,
    },
)


def _feature_side(vision: Any, pixels: int) -> int:
    """Positions along one side of Florence-2's last feature map for an image side of ``pixels``.

    Each DaViT stage's patch convolution is applied in turn.
    """
    for size, stride, padding in zip(vision.patch_size, vision.patch_stride, vision.patch_padding):
        pixels = (pixels + 2 * padding - size) // stride + 1
    return pixels


@functools.lru_cache(maxsize=1)
def tiny_text_tokenizer() -> Any:
    """BART's special-token layout (``<s>, <pad>, </s>, <unk>``) over English words.

    It is padded with reserved pieces to the tiny vocabulary's `VOCAB` ids.
    """
    args = (["<s>", "<pad>", "</s>", "<unk>"],)
    names = {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"}
    return build_word_tokenizer(*args, **names, n_reserved=VOCAB - len(build_word_tokenizer(*args, **names)))


class _InitialNoise(TorchFunctionMode):
    """A torch mode in which the first ``torch.randn`` of ``noise``'s shape returns ``noise``.

    Within the block (this thread only), that call returns ``noise`` on the requested device and
    dtype; everything else runs unchanged.
    """

    def __init__(self, noise: torch.Tensor):
        super().__init__()
        self.noise: torch.Tensor | None = noise

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.randn and self.noise is not None and torch.Size(args) == self.noise.shape:
            noise, self.noise = self.noise, None
            return noise.to(device=kwargs.get("device"), dtype=kwargs.get("dtype"))
        return func(*args, **kwargs)


class XVLA(LeRobotVLA):
    """X-VLA (2toINF's X-VLA, as ported by lerobot 0.6.1).

    Florence-2's DaViT vision tower encodes every camera; the first camera's tokens and the
    instruction's go through the BART encoder (lerobot deletes the decoder); a soft-prompted
    transformer then denoises the action chunk over ``num_denoising_steps`` flow-matching
    steps, reading the encoder's output and the other cameras' tokens. Standard names:
    ``vision``, ``projector``, ``layers`` (the encoder's, ``layers[i].fc2`` is the FFN output
    projection), ``ln_final`` (an identity: BART is post-LN), ``lm_head`` (the tied token
    embedding, which nothing unembeds with in X-VLA), ``expert`` (``expert.blocks[i].mlp.fc2``),
    ``action_in_proj``, ``action_out_proj`` (its output is each step's predicted chunk),
    ``vlm_proj`` and ``aux_visual_proj``.

    Example:
        >>> model = nnsight_vla.load("tiny-xvla")
        >>> chunk = model.predict_action(obs, seed=0)          # (chunk_size, action_dim)
        >>> with model.predict_action(obs) as tracer:
        ...     for step in tracer.iter[:4]:                   # the denoising steps
        ...         chunk_at_step = model.action_out_proj.output.save()
    """

    kinds = {"xvla": XVLA_KIND}

    def action_calls(self, tower: str) -> range | None:
        """The action head runs once per denoising step, and each step predicts the chunk."""
        return range(self.policy_config.num_denoising_steps) if tower == "expert" else None

    def _remap_keys(self, policy: Any, tensors: dict) -> dict:
        """lerobot's loading: old vendored-Florence keys renamed, the one tied embedding restored.

        The embedding is restored under whichever of its two names safetensors dropped on saving.
        """
        if modeling_xvla._is_vendored_florence_state_dict(tensors):
            tensors = modeling_xvla._remap_vendored_florence_state_dict(tensors)
        for have, alias in ((SHARED, EMBED), (EMBED, SHARED)):
            if have in tensors and alias not in tensors:
                tensors[alias] = tensors[have]
        return tensors

    def _tiny_tokenizer(self) -> Any:
        return tiny_text_tokenizer()

    def _policy(self, device: str) -> torch.nn.Module:
        policy = super()._policy(device)
        policy.get_submodule(ENCODER).add_module(NO_FINAL_NORM.rpartition(".")[2], torch.nn.Identity())
        return policy

    def _inputs(self, observations: list) -> dict[str, Any]:
        batch = super()._inputs(observations)
        sizes = {camera: tuple(batch[f"observation.images.{camera}"].shape[-2:]) for camera in self.cameras}
        if len(set(sizes.values())) > 1:
            raise InputError(f"{self.name_or_path} stacks its cameras into one tensor, so their images must share "
                             f"one size; got {', '.join(f'{c} {h}x{w}' for c, (h, w) in sizes.items())}. Resize them.")
        height, width = sizes[self.cameras[0]]
        if self.policy_config.resize_imgs_with_padding is None and not self._fits(height, width):
            largest = max(n for n in range(1, max(height, width)) if self._fits(n, n))
            raise InputError(
                f"{self.name_or_path} cannot take {height}x{width} images: its Florence-2 position embeddings "
                f"reach {largest}x{largest} pixels. Resize the images, or set resize_imgs_with_padding in the "
                "policy's config."
            )
        return batch

    def _fits(self, height: int, width: int) -> bool:
        """Whether an image fits the vision tower's and the BART encoder's positions.

        The vision tower's are learned 2-D positions; the BART encoder's hold the first camera's
        image tokens and the instruction's.
        """
        vision, text = self.vision_config, self._module.model.vlm.config.text_config
        rows, columns = _feature_side(vision, height), _feature_side(vision, width)
        tokens = rows * columns + self.policy_config.tokenizer_max_length
        return max(rows, columns) <= vision.max_position_embeddings and tokens <= text.max_position_embeddings

    @property
    def vision_config(self) -> Any:
        """Florence-2's vision configuration (DaViT: patch convolutions, position embeddings)."""
        return self._module.model.vlm.config.vision_config

    def noise(self, batch_size: int, seed: int | None) -> torch.Tensor | None:
        """The initial flow-matching noise ``[batch, chunk_size, model action dims]``.

        The same ``seed`` gives every row the same noise.
        """
        if seed is None:
            return None
        dims = (1, self.policy_config.chunk_size, self._module.model.dim_action)
        row = torch.randn(dims, generator=torch.Generator().manual_seed(int(seed)))
        return row.expand(batch_size, -1, -1).contiguous()

    def _chunk(self, batch: dict[str, Any], seed: int | None, num_steps: int | None) -> torch.Tensor:
        """The chunk of lerobot's ``predict_action_chunk``: ``num_steps`` steps, seeded noise.

        It builds lerobot's model inputs and calls ``model.generate_actions`` itself, so that the
        noise drawn inside it can be replaced by the seeded `noise`.
        """
        policy = self._module
        inputs = policy._build_model_inputs(batch)
        steps = num_steps or policy.config.num_denoising_steps
        noise = self.noise(batch[TOKENS_KEY].shape[0], seed)
        if noise is None:
            return policy.model.generate_actions(**inputs, steps=steps)
        with _InitialNoise(noise) as mode:
            actions = policy.model.generate_actions(**inputs, steps=steps)
        if mode.noise is not None:
            raise SetupError(
                f"lerobot's XVLAModel.generate_actions drew no noise of shape {tuple(noise.shape)}, so "
                "seeds cannot apply; this XVLA port matches lerobot 0.6.1 (pip install lerobot==0.6.1)."
            )
        return actions
