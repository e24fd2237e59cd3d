"""OpenVLA's ``config.json``: the official fields, read and written as the Hub checkpoints hold them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import LlamaConfig

from nnsight_vla.family import CheckpointError

from .mini.phrases import Phrases

# The fused DINOv2 + SigLIP backbone of every released OpenVLA checkpoint.
DINOSIGLIP_224 = ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224")

# Official per-backbone normalisation (preprocessor_config.json stores them rounded to bf16).
DEFAULT_NORMALIZE = [
    {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
]


#: This project's settings file beside ``config.json``: what an official config has no field for.
SIDECAR = "nnsight_vla.json"


@dataclass
class OpenVLAConfig:
    """The fields of an OpenVLA ``config.json`` that define the network and the actions.

    ``timm_overrides``, ``unpadded_vocab_size`` and ``phrases`` are this project's extensions
    (absent from official checkpoints): per-backbone keyword overrides for ``timm.create_model``
    (the small instances), the vocabulary size before padding for backbones other than Llama-2,
    and what a verbalising ``mini-openvla`` says before its action tokens (None: nothing, as
    OpenVLA). ``phrases`` is saved in this project's own file beside ``config.json``
    (`SIDECAR`), never in it.
    """

    text_config: dict[str, Any]
    norm_stats: dict[str, Any]
    timm_model_ids: list[str] = field(default_factory=lambda: list(DINOSIGLIP_224))
    timm_override_act_layers: list[str | None] = field(default_factory=lambda: [None, None])
    image_sizes: list[int] = field(default_factory=lambda: [224, 224])
    n_action_bins: int = 256
    pad_token_id: int = 32000
    pad_to_multiple_of: int = 64
    timm_overrides: list[dict[str, Any]] | None = None
    unpadded_vocab_size: int | None = None
    phrases: Phrases | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def llama(self) -> LlamaConfig:
        """The language model's transformers config (LlamaConfig defaults fill the gaps)."""
        fields = {k: v for k, v in self.text_config.items() if k not in ("model_type", "torch_dtype")}
        return LlamaConfig(**fields)

    @property
    def fused(self) -> bool:
        """Whether the vision backbone fuses two timm models (as DINOv2 + SigLIP)."""
        return len(self.timm_model_ids) == 2

    @property
    def tokenizer_vocab_size(self) -> int:
        """Vocabulary size before padding; action ids count down from it.

        Llama-2 OpenVLA appended ``<PAD>`` to its 32000 tokens, so by default it is the pad id;
        other backbones (SmolLM2: 49152, no padding) set ``unpadded_vocab_size``.
        """
        return self.unpadded_vocab_size or self.pad_token_id

    @property
    def official_action_end(self) -> int:
        """Where the official OpenVLA code ends the action ids.

        That is ``text_config.vocab_size - pad_to_multiple_of``
        (``OpenVLAForActionPrediction.vocab_size``; 32064 - 64 for Llama-2).
        """
        return self.llama.vocab_size - self.pad_to_multiple_of

    def check_action_ids(self, where: str) -> None:
        """Refuse a config on which this project and the official code would disagree on actions.

        They decode different actions unless `tokenizer_vocab_size` equals `official_action_end`;
        ``where`` names the config in the `CheckpointError`.
        """
        ours, official = self.tokenizer_vocab_size, self.official_action_end
        if ours == official:
            return
        source = "unpadded_vocab_size" if self.unpadded_vocab_size else "pad_token_id"
        raise CheckpointError(
            f"{where}: action ids would end at {ours} ({source}) here but at {official} "
            f"(text_config.vocab_size {self.llama.vocab_size} - pad_to_multiple_of "
            f"{self.pad_to_multiple_of}) in the official OpenVLA code, which would decode other "
            f"actions. Set pad_to_multiple_of to {self.llama.vocab_size - ours} in config.json "
            "(or fix text_config.vocab_size / pad_token_id) so the two agree."
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config.json") -> "OpenVLAConfig":
        """The config of a parsed ``config.json`` (``where`` names it in errors).

        A config that is not OpenVLA's, has no norm_stats or has an unsupported vision backbone is
        a `CheckpointError`. ``phrases`` are not read here: they are the sidecar's.
        """
        if raw.get("model_type") != "openvla":
            raise CheckpointError(f"{where}: model_type is {raw.get('model_type')!r}, not 'openvla'.")
        if "norm_stats" not in raw:
            raise CheckpointError(
                f"{where} has no norm_stats; OpenVLA needs them to un-normalise actions "
                "(add the checkpoint's dataset_statistics.json)."
            )
        if "timm_model_ids" not in raw and raw.get("vision_backbone_id") != "dinosiglip-vit-so-224px":
            raise CheckpointError(
                f"{where}: vision_backbone_id {raw.get('vision_backbone_id')!r} is not supported; "
                "only 'dinosiglip-vit-so-224px' (every released OpenVLA) is."
            )
        known = set(cls.__dataclass_fields__) - {"raw", "phrases"}  # phrases: the sidecar's
        fields = {k: raw[k] for k in known if k in raw}
        fields.setdefault("text_config", {})
        return cls(**fields, raw=raw)

    @classmethod
    def from_folder(cls, folder: Path) -> "OpenVLAConfig":
        """The config of the checkpoint in ``folder``.

        It reads ``config.json``, plus `SIDECAR`'s phrases and ``dataset_statistics.json``'s
        norm stats when those files are there.
        """
        path = folder / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise CheckpointError(f"{folder} has no config.json; copy the complete checkpoint.") from err
        config = cls.from_dict(raw, str(path))
        sidecar = folder / SIDECAR
        if sidecar.is_file():  # this project's own settings, beside the official config
            try:
                extra = json.loads(sidecar.read_text())
            except ValueError as err:
                raise CheckpointError(f"{sidecar} is not JSON ({err}); remove it or save the model again.") from err
            config.phrases = Phrases.from_sidecar(extra, str(sidecar))
        stats = folder / "dataset_statistics.json"
        if stats.is_file():  # LIBERO fine-tunes ship their statistics beside the config
            config.norm_stats = {**config.norm_stats, **json.loads(stats.read_text())}
        return config

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` contents: ``raw`` with the official fields set from this config.

        ``timm_overrides`` and ``unpadded_vocab_size`` are added when set; ``phrases`` go to
        `SIDECAR` instead.
        """
        out = dict(self.raw)
        out.update(
            model_type="openvla",
            architectures=["OpenVLAForActionPrediction"],
            vision_backbone_id="dinosiglip-vit-so-224px",
            llm_backbone_id=out.get("llm_backbone_id", "llama2-7b-pure"),
            arch_specifier="no-align+fused-gelu-mlp",
            use_fused_vision_backbone=self.fused,
            image_resize_strategy=out.get("image_resize_strategy", "resize-naive"),
            text_config={**self.text_config, "model_type": "llama"},
            norm_stats=self.norm_stats,
            timm_model_ids=self.timm_model_ids,
            timm_override_act_layers=self.timm_override_act_layers,
            image_sizes=self.image_sizes,
            n_action_bins=self.n_action_bins,
            pad_token_id=self.pad_token_id,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        for extension in ("timm_overrides", "unpadded_vocab_size"):
            if getattr(self, extension) is not None:
                out[extension] = getattr(self, extension)
        return out

    def sidecar(self) -> dict[str, Any] | None:
        """What `SIDECAR` holds: a verbalising model's words before its actions (None: none)."""
        return None if self.phrases is None else self.phrases.sidecar()
