"""OpenVLA's official checkpoint layout: key names, tokenizer files, and writing a checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from nnsight_vla.family import CheckpointError, write_state_dict

from .config import SIDECAR, OpenVLAConfig
from .processor import OpenVLAProcessor

EMBED, LM_HEAD = "language_model.model.embed_tokens.weight", "language_model.lm_head.weight"


def to_checkpoint_key(key: str) -> str:
    """Our state-dict key -> the official checkpoint's (timm's LayerScale ``gamma`` -> ``scale_factor``)."""
    return re.sub(r"\.ls([12])\.gamma$", r".ls\1.scale_factor", key)


def from_checkpoint_key(key: str) -> str:
    """The official checkpoint's key -> ours (``scale_factor`` -> timm's LayerScale ``gamma``)."""
    return re.sub(r"\.ls([12])\.scale_factor$", r".ls\1.gamma", key)


def read_tokenizer(folder: Path) -> Any:
    """The tokenizer saved in ``folder``; a folder without its files is a `CheckpointError`."""
    from transformers import AutoTokenizer, LlamaConfig

    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise CheckpointError(
            f"{folder} has no tokenizer (tokenizer.json or tokenizer.model); copy the complete "
            "checkpoint, including its tokenizer files."
        )
    # Passing the text config keeps transformers from reading config.json as a model config.
    return AutoTokenizer.from_pretrained(folder, config=LlamaConfig())


def save_checkpoint(
    folder: Path,
    config: OpenVLAConfig,
    net: Any,
    tokenizer: Any,
    processor: OpenVLAProcessor,
    max_shard_bytes: int = 5 * 2**30,
) -> None:
    """Write the official layout into ``folder``.

    The layout is config.json (with norm_stats), preprocessor_config.json, tokenizer files and
    safetensors weights (shards plus an index when there are several). `SIDECAR` is written too
    when the config has anything for it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    raw = config.to_dict()
    dtype = str(next(net.parameters()).dtype).removeprefix("torch.")
    raw["text_config"] = {**raw["text_config"], "torch_dtype": dtype}
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    if config.sidecar() is not None:
        (folder / SIDECAR).write_text(json.dumps(config.sidecar(), indent=2))
    tokenizer.save_pretrained(folder)
    processor.save(folder)
    tensors = {to_checkpoint_key(k): v for k, v in net.state_dict().items()}
    if config.llama.tie_word_embeddings:  # stored once, as transformers does
        tensors.pop(LM_HEAD)  # (safetensors refuses tensors that share memory)
    write_state_dict(folder, tensors, max_shard_bytes)
