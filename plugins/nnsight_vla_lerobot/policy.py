"""`LeRobotVLA`: any lerobot policy, with its processors, as an nnsight model."""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from pathlib import Path
from typing import Any, ClassVar, Mapping

import nnsight
import numpy as np
import torch
from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK as MASK_KEY
from lerobot.utils.constants import OBS_LANGUAGE_TOKENS as TOKENS_KEY
from transformers.cache_utils import Cache, DynamicCache

from nnsight_vla.family import (
    VLA, CheckpointError, InputError, ModelSpec, Observation, SetupError, check_state_dict,
    config_folder, load_module, read_state_dict, weights_folder,
)

from . import sizing, tiny
from .inputs import IMAGE_PREFIX, STATE_KEY, from_lerobot, from_libero, to_batch
from .kind import PolicyKind

SIZES_FILE = "nnsight_vla.json"  # this project's extension: sizes of a resized (tiny) policy


def _read_config(folder: Path):
    from lerobot.configs.policies import PreTrainedConfig

    try:
        return PreTrainedConfig.from_pretrained(folder)
    except Exception as err:
        raise CheckpointError(f"{folder}/config.json is not a lerobot policy config ({err}).") from err


def _tokenizer(folder: Path, kind: PolicyKind) -> Any:
    """The checkpoint's own tokenizer files, else ``kind``'s tokenizer from the Hub."""
    from transformers import AutoTokenizer, PretrainedConfig

    if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        # config.json is lerobot's, not a transformers config: the tokenizer files say it all
        return AutoTokenizer.from_pretrained(folder, config=PretrainedConfig())
    name = kind.tokenizer_name
    spec = folder / "policy_preprocessor.json"
    if spec.is_file():
        for step in json.loads(spec.read_text()).get("steps", []):
            name = step.get("config", {}).get("tokenizer_name", name)
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:
        raise CheckpointError(
            f"{folder} has no tokenizer files and {name!r} could not be fetched from the Hugging "
            f"Face Hub ({type(err).__name__}). Save the {kind.tokenizer_label} tokenizer into the "
            f"checkpoint where the Hub is reachable: AutoTokenizer.from_pretrained({name!r})"
            f".save_pretrained('{folder}')."
        ) from err


class PrefixCache(DynamicCache):
    """A copy of a KV cache that no forward extends.

    Each layer's ``update`` returns the cached keys and values followed by the new ones, as
    `DynamicCache` does, and keeps only the cached ones. The action expert reads the VLM's prefix
    this way at every denoising step (lerobot gives each step a fresh clone), so bridge inputs
    holding it can be reused.
    """

    @classmethod
    def of(cls, cache: Any) -> PrefixCache:
        """A `PrefixCache` of clones of each layer's keys and values in ``cache``."""
        return cls(tuple((keys.clone(), values.clone(), *rest) for keys, values, *rest in cache))

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's cached keys and values followed by the new ones, which it does not keep."""
        cached = self.layers[layer_idx]
        return torch.cat([cached.keys, keys], dim=-2), torch.cat([cached.values, values], dim=-2)


class LeRobotVLA(VLA):
    """A lerobot policy and its pre/post processors, for every type in `kinds`.

    Loads the built-in ``tiny-<type>`` or a lerobot checkpoint folder (strictly), batches
    observations through lerobot's preprocessor, predicts a seeded action chunk and
    un-normalises it with lerobot's postprocessor. A subclass sets `kinds` (data: see
    `PolicyKind`) and overrides the hooks its types need: `action_calls`, `_remap_keys`,
    `_resize`, `_tiny_tokenizer`, `_configure_parts`, `_local_parts`, `_chunk`.

    Example:
        >>> class SmolVLA(LeRobotVLA):
        ...     kinds = {"smolvla": SMOLVLA}             # a PolicyKind
        >>> SmolVLA("tiny-smolvla").predict_action(obs, seed=0)
    """

    #: lerobot ``config.type`` -> what this class knows about it.
    kinds: ClassVar[Mapping[str, PolicyKind]] = {}

    _persistent_attributes = ("_tokenizer", "preprocessor", "postprocessor", "policy_config", "kind")

    # -- configuration -------------------------------------------------------------

    def _configure(self, source: str) -> None:
        builtin = source.removeprefix("tiny-")
        if source.startswith("tiny-") and builtin in self.kinds:
            self.kind = self.kinds[builtin]
            self.folder, self.sizes = None, self.kind.tiny_sizes
            self.policy_config = tiny.tiny_config(self.kind)
            self._tokenizer = self._tiny_tokenizer()
        else:
            self.folder, self.revision = config_folder(source, self.revision)
            self.policy_config = _read_config(self.folder)
            kind = self.policy_config.type
            if kind not in self.kinds:
                raise CheckpointError(f"{self.folder}: policy type {kind!r} is not one of {sorted(self.kinds)}.")
            self.kind = self.kinds[kind]
            sizes_file = self.folder / SIZES_FILE
            self.sizes = json.loads(sizes_file.read_text())["sizes"] if sizes_file.is_file() else None
            self._tokenizer = _tokenizer(self.folder, self.kind)
        config = self.policy_config
        config.device = self.target_device or "cpu"
        if self.torch_dtype is not None:
            config.dtype = str(self.torch_dtype).removeprefix("torch.")
        self.layout = self.kind.layout
        self._configure_parts()
        with self._local_parts():
            self.preprocessor, self.postprocessor = self._processors()
        self.spec = self._spec()

    def _tiny_tokenizer(self) -> Any:
        """The text tokenizer of the built-in tiny policy (a family hook; Gemma's layout here)."""
        return tiny.build_tiny_tokenizer()

    def _configure_parts(self) -> None:
        """Read or build what the kind needs besides its config and text tokenizer.

        A family hook: Pi0-FAST's action tokenizer.
        """

    def _read_part(self, subfolder: str, hub_name: str, reader: Any, what: str) -> Any:
        """A part the checkpoint keeps in ``subfolder`` (written by `_save`), else ``hub_name``.

        ``hub_name`` is read from the Hub or its cache. The part is read by ``reader`` (a class with
        ``from_pretrained``, or a function of the source); neither readable: a `CheckpointError`
        saying how to save it.
        """
        local = self.folder / subfolder
        source = str(local) if local.is_dir() else hub_name
        read = getattr(reader, "from_pretrained", reader)
        try:
            return read(source)
        except Exception as err:
            name = getattr(read, "__qualname__", "read")
            raise CheckpointError(
                f"{self.folder}: no {subfolder}/ folder, and the {what} {source!r} could not be read "
                f"({type(err).__name__}: {err}); save it into the checkpoint where the Hub is reachable: "
                f"{name}({source!r}).save_pretrained('{local}')."
            ) from err

    def _local_parts(self) -> contextlib.AbstractContextManager:
        """A block in which lerobot gets this model's own tokenizers and processors.

        Inside it, lerobot's code that would fetch tokenizers or processors by name gets this
        model's own (a family hook; none here).
        """
        return contextlib.nullcontext()

    def _processors(self):
        config = self.policy_config
        if self.folder is None:
            with sizing.local_tokenizer(self.kind, self._tokenizer):
                return self.kind.make_processors(config, dataset_stats=tiny.TINY_STATS)
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
        """The policy's camera names, e.g. ``("image", "image2")``."""
        return tuple(k.removeprefix(IMAGE_PREFIX) for k in self.policy_config.image_features)

    def _spec(self) -> ModelSpec:
        config = self.policy_config
        state = config.input_features.get(STATE_KEY)
        return ModelSpec(  # the sizes are read from the modules
            family=self.kind.type,
            n_layers=None,
            d_model=None,
            d_mlp=None,
            vocab_size=None,
            action_token_ids=None,
            action_dim=config.output_features["action"].shape[0],
            camera_names=self.cameras,
            state_dim=None if state is None else state.shape[0],
            chunk_size=config.chunk_size,
            extra={name: getattr(config, name) for name in self.kind.spec_extra},
        )

    def action_calls(self, tower: str) -> range | None:
        """None: no forward emits an action (a family hook; e.g. the expert's denoising steps)."""
        return None

    # -- building and loading ----------------------------------------------------------

    def _policy(self, device: str) -> torch.nn.Module:
        config = copy.copy(self.policy_config)
        config.device = device
        resized = {} if self.sizes is None else self._resize(self.sizes)
        with sizing.replaced(self.kind.modeling, resized), self._local_parts():
            return self.kind.policy_class(config)

    def _resize(self, sizes: Mapping) -> Mapping[str, Any]:
        """The attributes of the kind's modeling module that build the policy at ``sizes``.

        ``sizes`` (the tiny sizes, or a checkpoint's ``nnsight_vla.json``) stand instead of
        lerobot's own; other code in the process keeps lerobot's sizes (a family hook; none here).
        """
        raise CheckpointError(
            f"sizes were given for lerobot policy type {self.kind.type!r}, which {type(self).__name__} "
            f"cannot resize; remove the checkpoint's {SIZES_FILE} or give {type(self).__name__} a `_resize`."
        )

    def _remap_keys(self, policy: torch.nn.Module, tensors: dict) -> dict:
        """lerobot's key fixes on loading a checkpoint's tensors (a family hook; none here)."""
        return tensors

    def _build(self) -> torch.nn.Module:
        if self.folder is not None:
            return self._policy("meta")
        on_meta = torch.empty(()).is_meta  # nnsight's meta build: lerobot's `.to(device)` must not leave meta
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tiny.SEED)
            return self._policy("meta" if on_meta else "cpu")

    def _load_weights(self) -> torch.nn.Module:
        if self.folder is None:
            return self._build()
        with torch.device("meta"):
            policy = self._policy("meta")
        tensors = read_state_dict(weights_folder(self.name_or_path, self.revision))
        tensors = self._remap_keys(policy, tensors)
        expected = policy.state_dict()
        for key in self.kind.unused_weights:
            if key not in tensors and key in expected:
                warnings.warn(f"{self.folder}: {key} is absent; it is never used and is set to zeros.")
                tensors[key] = torch.zeros(expected[key].shape, dtype=expected[key].dtype)
        check_state_dict({k: v.shape for k, v in expected.items()}, tensors, str(self.folder))
        return load_module(lambda: policy, tensors, str(self.folder), match_dtypes=True)

    def _place(self, module: torch.nn.Module) -> torch.nn.Module:
        # lerobot keeps some parts in float32 under bfloat16 on purpose: move only.
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

    #: predict_action's options, and what they are (for the error naming them).
    _options = {"seed": "the initial noise; None: fresh", "num_steps": "denoising steps"}

    def _batch(self, invokes: list[tuple], fn: Any) -> tuple:
        unknown = sorted({key for _, kwargs in invokes for key in kwargs} - set(self._options))
        if unknown:
            takes = " and ".join(f"{k}= ({v})" for k, v in self._options.items())
            raise InputError(
                f"{type(self).__name__}'s predict_action has no option {', '.join(map(repr, unknown))}; it takes {takes}."
            )
        return super()._batch(invokes, fn)

    def trace(self, *inputs: Any, fn: Any = None, **kwargs: Any):
        """An nnsight trace of the inference path (``predict_action``).

        Lerobot's training ``forward`` needs actions and is reached with
        ``fn=model._module.forward``.
        """
        return super().trace(*inputs, fn=fn or self._predict_action, **kwargs)

    def scan(self, *inputs: Any, fn: Any = None, **kwargs: Any):
        """An nnsight scan (fake tensors: shapes only) of the inference path, like `trace`."""
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
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise InputError(f"seed must be an int (the same seed, the same noise) or None (fresh noise), got {seed!r}.")
        if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer))
                                      or num_steps < 1):
            raise InputError(f"num_steps must be a positive int (denoising steps), got {num_steps!r}.")
        size = batch[TOKENS_KEY].shape[0]
        with torch.no_grad():
            normalized = self._chunk(batch, seed, num_steps)
        actions = self.postprocessor(normalized).float().cpu().numpy()
        return actions[0] if size == 1 else actions

    def _chunk(self, batch: dict[str, Any], seed: int | None, num_steps: int | None) -> torch.Tensor:
        """The normalised action chunk of a preprocessed batch (flow matching from seeded noise)."""
        policy = self._module
        noise = self.noise(batch[TOKENS_KEY].shape[0], seed)
        device = next(policy.parameters()).device
        kwargs = {"noise": None if noise is None else noise.to(device), "num_steps": num_steps}
        # lerobot's own defaults stand in for what is not given
        return policy.predict_action_chunk(batch, **{k: v for k, v in kwargs.items() if v is not None})

    # -- TransformerLens ---------------------------------------------------------------

    def _bridge_spec(self, part: str) -> Any:
        if part not in self.layout.bridges:
            raise InputError(f"{type(self).__name__} has no TransformerLens part {part!r}; it has "
                             f"{sorted(self.layout.bridges) or 'none (no adapter for its architecture yet)'}.")
        return self.layout.bridges[part]

    def bridge_inputs(self, part: str, observations: list[Observation]) -> dict[str, Any]:
        """The keyword arguments the part's tower gets in the first forward of a seed-0 prediction.

        They are read in a trace (``inputs_embeds`` becomes the bridge's ``input``; None values and
        ``use_cache`` are left out). A KV cache comes as a `PrefixCache`, so the same inputs serve
        any number of runs.
        """
        tower = self.get(self.layout.tower(self._bridge_spec(part).tower).root)
        with self.trace(observations, seed=0) as tracer:
            args, kwargs = tower.inputs
            if args:
                raise SetupError(f"{type(self).__name__}'s {part!r} tower took positional inputs.")
            inputs = {"input": kwargs["inputs_embeds"]}
            for key, value in kwargs.items():
                if value is not None and key not in ("inputs_embeds", "use_cache"):
                    inputs[key] = PrefixCache.of(value) if isinstance(value, Cache) else value
            inputs = nnsight.save(inputs)
            tracer.stop()
        return inputs

    def bridge_tokens(self, part: str, observations: list[Observation]) -> Any:
        """The VLM prefix as ids: placeholders for the image patches, then the instruction's ids.

        Runs on other ids of this length get the prefix-LM mask and positions lerobot builds
        (images always valid, the instruction's pad ids masked).
        """
        from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d

        from nnsight_vla.family import TokenPrompt

        self._bridge_spec(part)
        if part != "vlm":
            raise InputError(f"part {part!r} takes no token ids (it reads the VLM's keys and values); "
                             "use bridge_inputs(model, obs, part) for it.")
        if len(observations) != 1:
            raise InputError(f"token inputs are for one observation, got {len(observations)}.")
        batch, policy = self._inputs(observations), self._module
        images, image_masks = policy._preprocess_images(batch)
        ids = batch[TOKENS_KEY]
        embeds, valid, causal = policy.model.embed_prefix(images, image_masks, ids, batch[MASK_KEY])
        n = embeds.shape[1] - ids.shape[1]
        pad = self._tokenizer.pad_token_id
        placeholder = next(i for i in (self._tokenizer.bos_token_id, self._tokenizer.eos_token_id, pad + 1)
                           if i is not None and i != pad)

        def forward_kwargs(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
            rows = tokens.shape[0]
            mask = torch.cat([valid[:, :n].expand(rows, -1), tokens[:, n:] != pad], dim=1)
            square = make_att_2d_masks(mask, causal[:1].expand(rows, -1))
            return {"attention_mask": prepare_attention_masks_4d(square), "position_ids": mask.cumsum(1) - 1}

        tokens = torch.cat([ids.new_full((1, n), placeholder), ids], dim=1)
        return TokenPrompt(tokens, slice(0, n), embeds[:, :n], forward_kwargs)

    # -- saving ----------------------------------------------------------------------

    def _save(self, folder: Path, **options: Any) -> None:
        """Write lerobot's own layout (config.json, model.safetensors, processor files).

        Also writes the tokenizer files and, for resized policies, ``nnsight_vla.json`` with the
        sizes.
        """
        self._module.save_pretrained(folder)
        self.preprocessor.save_pretrained(folder)
        self.postprocessor.save_pretrained(folder)
        self._tokenizer.save_pretrained(folder)
        if self.sizes is not None:
            (folder / SIZES_FILE).write_text(json.dumps({"sizes": self.sizes}, indent=2))
