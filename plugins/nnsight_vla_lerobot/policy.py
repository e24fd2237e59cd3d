"""`Pi0`: lerobot's Pi0 and Pi0.5 policies, with their processors, as an nnsight model."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from nnsight_vla import VLA, CheckpointError, InputError, ModelSpec, Observation
from nnsight_vla.checkpoint import check_state_dict, load_module, local_folder, read_state_dict

from . import tiny
from .inputs import IMAGE_PREFIX, STATE_KEY, from_lerobot, from_libero, to_batch
from .variants import VARIANTS

SIZES_FILE = "nnsight_vla.json"  # this project's extension: sizes of a resized (tiny) policy
PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"
#: Weights no lerobot forward reads (the expert never decodes tokens); zero-filled if absent.
UNUSED_WEIGHTS = ("model.paligemma_with_expert.gemma_expert.lm_head.weight",)


def _read_config(folder: Path):
    from lerobot.configs.policies import PreTrainedConfig

    try:
        return PreTrainedConfig.from_pretrained(folder)
    except Exception as err:
        raise CheckpointError(f"{folder}/config.json is not a lerobot policy config ({err}).") from err


def _tokenizer(folder: Path) -> Any:
    """The checkpoint's own tokenizer files, else the PaliGemma tokenizer from the Hub."""
    from transformers import AutoTokenizer, GemmaConfig

    if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        return AutoTokenizer.from_pretrained(folder, config=GemmaConfig())
    name = PALIGEMMA_TOKENIZER
    spec = folder / "policy_preprocessor.json"
    if spec.is_file():
        for step in json.loads(spec.read_text()).get("steps", []):
            name = step.get("config", {}).get("tokenizer_name", name)
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:
        raise CheckpointError(
            f"{folder} has no tokenizer files and {name!r} could not be fetched from the Hugging "
            f"Face Hub ({type(err).__name__}). Save the PaliGemma tokenizer into the checkpoint "
            f"where the Hub is reachable: AutoTokenizer.from_pretrained({name!r})"
            f".save_pretrained('{folder}')."
        ) from err


class Pi0(VLA):
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

    _persistent_attributes = ("_tokenizer", "preprocessor", "postprocessor")

    # -- configuration -------------------------------------------------------------

    def _configure(self, source: str) -> None:
        if source in ("tiny-pi0", "tiny-pi05"):
            self.variant = VARIANTS[source.removeprefix("tiny-")]
            self.folder, self.sizes = None, tiny.TINY_SIZES
            self.policy_config = tiny.tiny_config(self.variant)
            self._tokenizer = tiny.build_tiny_tokenizer()
        else:
            self.folder = local_folder(source)
            self.policy_config = _read_config(self.folder)
            kind = self.policy_config.type
            if kind not in VARIANTS:
                raise CheckpointError(f"{self.folder}: policy type {kind!r} is not one of {sorted(VARIANTS)}.")
            self.variant = VARIANTS[kind]
            sizes_file = self.folder / SIZES_FILE
            self.sizes = json.loads(sizes_file.read_text())["sizes"] if sizes_file.is_file() else None
            self._tokenizer = _tokenizer(self.folder)
        config = self.policy_config
        config.device = self.target_device or "cpu"
        if self.torch_dtype is not None:
            config.dtype = str(self.torch_dtype).removeprefix("torch.")
        self.layout = self.variant.layout
        self.preprocessor, self.postprocessor = self._processors()
        self.spec = self._spec()

    def _processors(self):
        config = self.policy_config
        if self.folder is None:
            with tiny.local_tokenizer(self.variant, self._tokenizer):
                return self.variant.make_processors(config, dataset_stats=tiny.TINY_STATS)
        from lerobot.policies.factory import make_pre_post_processors

        try:
            return make_pre_post_processors(
                config,
                pretrained_path=str(self.folder),
                preprocessor_overrides={
                    "tokenizer_processor": {"tokenizer": self._tokenizer},
                    "device_processor": {"device": config.device},
                },
            )
        except Exception as err:
            raise CheckpointError(
                f"{self.folder}: lerobot could not load its processors ({type(err).__name__}: {err}); "
                "a checkpoint needs policy_preprocessor.json, policy_postprocessor.json and their "
                "normalizer .safetensors files."
            ) from err

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(
            k.removeprefix(IMAGE_PREFIX) for k in self.policy_config.image_features
        )

    def _spec(self) -> ModelSpec:
        state = self.policy_config.input_features.get(STATE_KEY)
        return ModelSpec(  # the sizes are read from the modules
            family=self.variant.type,
            n_layers=None,
            d_model=None,
            d_mlp=None,
            vocab_size=None,
            action_token_ids=None,
            action_dim=self.policy_config.output_features["action"].shape[0],
            camera_names=self.cameras,
            state_dim=None if state is None else state.shape[0],
            chunk_size=self.policy_config.chunk_size,
            extra={"num_inference_steps": self.policy_config.num_inference_steps},
        )

    def action_calls(self, tower: str) -> range | None:
        """The expert runs once per denoising step, and each step emits a velocity."""
        return range(self.policy_config.num_inference_steps) if tower == "expert" else None

    # -- building and loading ----------------------------------------------------------

    def _policy(self, device: str) -> torch.nn.Module:
        config = copy.copy(self.policy_config)
        config.device = device
        with tiny.sized(self.variant, self.sizes):
            return self.variant.policy_class(config)

    def _build(self) -> torch.nn.Module:
        if self.folder is not None:
            return self._policy("meta")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tiny.SEED)
            return self._policy("cpu")

    def _load_weights(self) -> torch.nn.Module:
        if self.folder is None:
            return self._build()
        with torch.device("meta"):
            policy = self._policy("meta")
        raw = read_state_dict(self.folder)
        fixed = policy._fix_pytorch_state_dict_keys(raw, policy.config)
        tensors = {k if k.startswith("model.") else f"model.{k}": v for k, v in fixed.items()}
        expected = policy.state_dict()
        for key in UNUSED_WEIGHTS:
            if key not in tensors and key in expected:
                warnings.warn(f"{self.folder}: {key} is absent; it is never used and is set to zeros.")
                tensors[key] = torch.zeros(expected[key].shape, dtype=expected[key].dtype)
        check_state_dict({k: v.shape for k, v in expected.items()}, tensors, str(self.folder))
        return load_module(lambda: policy, tensors, str(self.folder), match_dtypes=True)

    def _place(self, module: torch.nn.Module) -> torch.nn.Module:
        # lerobot keeps SigLIP and the norms in float32 under bfloat16 on purpose: move only.
        module.config.device = self.target_device or "cpu"
        return module.to(self.target_device or "cpu")

    # -- running -------------------------------------------------------------------

    def _coerce(self, item: Any) -> list[Observation]:
        if isinstance(item, Mapping):
            return from_libero(item) if "pixels" in item else from_lerobot(item)
        return super()._coerce(item)

    def _inputs(self, observations: list[Observation]) -> dict[str, Any]:
        raw = to_batch(observations, self.cameras, self.spec.state_dim)
        return dict(self.preprocessor(raw))

    def trace(self, *inputs: Any, fn: Any = None, **kwargs: Any):
        """An nnsight trace of the inference path (``predict_action``); lerobot's training
        ``forward`` needs actions and is reached with ``fn=model._module.forward``."""
        return super().trace(*inputs, fn=fn or self._predict_action, **kwargs)

    def scan(self, *inputs: Any, fn: Any = None, **kwargs: Any):
        return super().scan(*inputs, fn=fn or self._predict_action, **kwargs)

    def noise(self, batch_size: int, seed: int | None) -> torch.Tensor | None:
        """The initial flow-matching noise: the same ``seed`` gives every row the same noise."""
        if seed is None:
            return None
        config = self.policy_config
        generator = torch.Generator().manual_seed(int(seed))
        row = torch.randn((1, config.chunk_size, config.max_action_dim), generator=generator)
        return row.expand(batch_size, -1, -1).contiguous()

    def _predict_action(self, seed: int | None = 0, num_steps: int | None = None, **batch: Any) -> np.ndarray:
        if not isinstance(seed, (int, type(None))):
            raise InputError(f"seed must be an int or None, got {seed!r}.")
        policy = self._module
        size = batch["observation.language.tokens"].shape[0]
        noise = self.noise(size, seed)
        device = next(policy.parameters()).device
        kwargs = {"noise": None if noise is None else noise.to(device), "num_steps": num_steps}
        with torch.no_grad():
            normalized = policy.predict_action_chunk(batch, **kwargs)
        actions = self.postprocessor(normalized).float().cpu().numpy()
        return actions[0] if size == 1 else actions

    # -- saving ----------------------------------------------------------------------

    def _save(self, folder: Path, **options: Any) -> None:
        """lerobot's own layout (config.json, model.safetensors, processor files), plus the
        tokenizer files and, for resized policies, ``nnsight_vla.json`` with the sizes."""
        self._module.save_pretrained(folder)
        self.preprocessor.save_pretrained(folder)
        self.postprocessor.save_pretrained(folder)
        self._tokenizer.save_pretrained(folder)
        if self.sizes is not None:
            (folder / SIZES_FILE).write_text(json.dumps({"sizes": self.sizes}, indent=2))
