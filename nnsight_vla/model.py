"""`VLA`: the nnsight `Remotable` base class every model family subclasses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from nnsight.intervention.envoy import Envoy, traceable
from nnsight.modeling.mixins.meta import MetaDevice
from nnsight.modeling.mixins.remotable import Remotable

from .checkpoint import dtype_name, parse_dtype
from .envoys import InertEnvoy, InertOutputEnvoy, LayersEnvoy
from .errors import InputError, StandardNameError
from .observation import Observation
from .spec import ModelSpec

#: Standard module names every family provides, through its `VLA.rename` map.
STANDARD_NAMES = ("vision", "projector", "layers", "ln_final", "lm_head")


@dataclass(frozen=True)
class Tower:
    """A stack of decoder layers that a vocabulary lens can read.

    Attributes:
        name: ``"vlm"`` (the language model), or a family's other tower (e.g. ``"expert"``).
        layers: The envoy of its decoder-layer list (``layers[i].mlp.down_proj`` inside).
        norm: Its final norm envoy (applied before unembedding when a lens asks for it).
        unembed: The envoy of the Linear whose weight ``[vocab, d_model]`` maps the residual
            stream to token logits, or None for a tower without a vocabulary.
        runs: How many times the tower runs per prediction when that is fixed (Pi0's VLM: 1);
            None when it runs on every forward of the prediction (OpenVLA's decoding steps,
            Pi0's denoising steps).
    """

    name: str
    layers: Any
    norm: Any
    unembed: Any
    runs: int | None = None


def _linear_shape(envoy: Any) -> tuple[int, int] | None:
    module = getattr(envoy, "_module", None)
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    return None


class VLA(Remotable):
    """A vision-language-action policy as an nnsight model.

    Everything nnsight offers works: ``trace``, ``invoke``, ``session``, ``edit``,
    ``scan``, ``tracer.cache``, ``.source`` and ``remote=``. Standard names
    (``vision``, ``projector``, ``layers[i].mlp.down_proj``, ``ln_final``,
    ``lm_head``) alias the family's own module paths, which keep working.

    A family subclass sets `rename` and `layer_paths` and implements the hooks
    `_configure`, `_build`, `_load_weights`, `_inputs`, `_predict_action`, `_save`.

    Example:
        >>> import nnsight_vla
        >>> model = nnsight_vla.load("tiny-openvla")
        >>> with model.trace(obs):
        ...     acts = model.layers[1].mlp.down_proj.input.save()
    """

    #: Family module path -> standard name (an nnsight ``rename`` map).
    rename: ClassVar[dict[str, str]] = {}
    #: Module paths of decoder-layer lists (indexing them is range-checked).
    layer_paths: ClassVar[tuple[str, ...]] = ()
    #: Path of a module that runs once, first, in every prediction (steering counts calls from it).
    run_start: ClassVar[str] = ""

    spec: ModelSpec

    def __init__(self, source: str, *, dtype=None, device=None, dispatch: bool = False, **options):
        self.name_or_path = str(source)
        self.torch_dtype = parse_dtype(dtype)
        self.target_device = None if device is None else str(device)
        self.options = options
        self._configure(self.name_or_path, **options)
        super().__init__(
            self.name_or_path,
            dispatch=dispatch,
            rename={k: v for k, v in self.rename.items() if k != v},
            envoys=self._envoy_classes(),
        )
        self._check_standard_names()

    def _envoy_classes(self) -> dict[str, type[Envoy]]:
        """Module path -> envoy class: range-checked layer lists, and the family's inert sites."""
        inert, inert_output = self.inert_paths()
        return {
            **dict.fromkeys(self.layer_paths, LayersEnvoy),
            **dict.fromkeys(inert, InertEnvoy),
            **dict.fromkeys(inert_output, InertOutputEnvoy),
        }

    # -- hooks a family implements ---------------------------------------------------

    def inert_paths(self) -> tuple[list[str], list[str]]:
        """Module paths that cannot change the actions: (whole modules, outputs only).

        Accessing them in a trace warns with `InertSiteWarning`. None by default.
        """
        return [], []

    def _configure(self, source: str, **options: Any) -> None:
        """Read the config, tokenizer and processor; set `spec` and `tokenizer`."""
        raise NotImplementedError

    def _build(self) -> torch.nn.Module:
        """The network with this config (random weights; built on meta when lazy)."""
        raise NotImplementedError

    def _load_weights(self) -> torch.nn.Module:
        """The network with the checkpoint's weights, loaded strictly."""
        raise NotImplementedError

    def _inputs(self, observations: list[Observation]) -> dict[str, torch.Tensor]:
        """Model inputs (tensors, batch first) for a batch of observations."""
        raise NotImplementedError

    def _predict_action(self, **inputs: Any) -> np.ndarray:
        """Un-normalised actions from model inputs, running ``self._module``."""
        raise NotImplementedError

    def _save(self, folder: Path, **options: Any) -> None:
        """Write config, weights and processor files in the family's official layout."""
        raise NotImplementedError

    def env_actions(self, raw: dict, task: str, seed: int = 0) -> np.ndarray:
        """The ``[k, action_dim]`` actions to execute in LIBERO for one raw environment
        observation (``pixels``, ``robot_state``), the family's own recipe included."""
        raise NotImplementedError(f"{type(self).__name__} has no LIBERO recipe yet.")

    # -- nnsight hooks --------------------------------------------------------------

    def _load_meta(self, *args: Any, **kwargs: Any) -> torch.nn.Module:
        # nnsight's MetaDevice forces even explicit ``device="cpu"`` tensors onto meta, which
        # breaks constructors that compute with small CPU tensors (timm's drop-path rates);
        # a meta default device is enough to keep every parameter off memory.
        with MetaDevice.real(), torch.device("meta"):
            return self._build()

    def _load(self, *args: Any, **kwargs: Any) -> torch.nn.Module:
        return self._place(self._load_weights()).eval()

    def _place(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move loaded weights to the requested device and dtype (families with
        mixed-precision rules override this)."""
        return module.to(device=self.target_device or "cpu", dtype=self.torch_dtype)

    def _coerce(self, item: Any) -> list[Observation]:
        """Observations from one invoke argument (families accept more input forms)."""
        items = item if isinstance(item, (list, tuple)) else [item]
        for obs in items:
            if not isinstance(obs, Observation):
                raise InputError(
                    f"expected an nnsight_vla.Observation (or a list of them), got "
                    f"{type(obs).__name__}; wrap inputs as Observation(images, instruction)."
                )
        return list(items)

    def _observations(self, inputs: tuple) -> list[Observation]:
        return [obs for item in inputs for obs in self._coerce(item)]

    def _batch_size(self, *inputs: Any, **kwargs: Any) -> int:
        return len(self._observations(inputs))

    def _batch(self, invokes: list[tuple], fn: Any) -> tuple:
        observations, options = [], {}
        for inputs, kwargs in invokes:
            observations += self._observations(inputs)
            for key, value in kwargs.items():
                if key in options and options[key] != value:
                    raise InputError(
                        f"invokes disagree on {key}={options[key]!r} vs {value!r}; "
                        "pass it once, to the trace call."
                    )
                options[key] = value
        if not observations:
            return (), options
        return (), {**self._inputs(observations), **options}

    @traceable
    def predict_action(self, **inputs: Any) -> np.ndarray:
        """Predict the un-normalised action for an observation.

        A plain call returns a numpy array (``(action_dim,)`` for one observation,
        ``(batch, ...)`` for several). As a trace, every forward the prediction makes
        is an iteration, and ``tracer.result`` is the action.

        Example:
            >>> action = model.predict_action(obs)
            >>> with model.predict_action(obs) as tracer:
            ...     for step in tracer.iter[:]:
            ...         model.layers[1].mlp.down_proj.input[..., 3] = 8.0
        """
        return self._predict_action(**inputs)

    # -- public helpers -----------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The family's text tokenizer (a transformers tokenizer)."""
        return self._tokenizer

    def steer(self, interventions: Any):
        """A context manager applying interventions (`nnsight_vla.Clamp`, `Scale`, `Ablate`,
        `Add`, or a list of them, in order) to every prediction inside it, as torch hooks
        that are removed when it ends, exceptions included.

        Example:
            >>> with model.steer(nnsight_vla.Clamp(cluster, 6.0)):
            ...     action = model.predict_action(obs)
        """
        from .steering import steer

        return steer(self, interventions)

    def towers(self) -> dict[str, Tower]:
        """The towers a vocabulary lens can project, by name; ``"vlm"`` comes first.

        Families with a second tower (Pi0's action expert) or another unembedding override this.
        """
        return {"vlm": Tower("vlm", self.layers, self.ln_final, self.lm_head)}

    def token_strings(self, token_ids) -> list[str]:
        """Readable labels for token ids (families label action tokens, e.g. ``[action: 0.25]``)."""
        return self._tokenizer.convert_ids_to_tokens([int(i) for i in token_ids])

    def save_pretrained(self, path: str | Path, **options: Any) -> Path:
        """Write a checkpoint that `nnsight_vla.load(path)` reads back; returns the folder.

        ``options`` go to the family's writer (e.g. ``max_shard_bytes=`` for OpenVLA).
        """
        self.dispatch()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self._save(folder, **options)
        return folder

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name_or_path!r})\n{super().__repr__()}"

    # -- load-time checks ---------------------------------------------------------

    def _check_standard_names(self) -> None:
        spec = self.spec
        where = f"{type(self).__name__}.rename"

        def alias(name: str) -> Any:
            value = self.__dict__.get(name)
            if not isinstance(value, Envoy):
                raise StandardNameError(
                    f"standard name {name!r} is not bound; add its module path to {where}."
                )
            return value

        for name in STANDARD_NAMES:
            alias(name)
        layers = alias("layers")
        if len(layers) != spec.n_layers:
            raise StandardNameError(
                f"{where} maps 'layers' to {layers.path} with {len(layers)} entries, but the "
                f"spec says n_layers={spec.n_layers}; point it at the decoder-layer list."
            )
        want = (spec.d_mlp, spec.d_model)
        for i in range(len(layers)):
            shape = _linear_shape(getattr(getattr(layers[i], "mlp", None), "down_proj", None))
            if shape != want:
                raise StandardNameError(
                    f"layers[{i}].mlp.down_proj should be a Linear {want[0]}->{want[1]}, got "
                    f"{shape}; rename the layer's FFN to 'mlp' and its output to 'down_proj' "
                    f"in {where}."
                )
        head = _linear_shape(alias("lm_head"))
        if head != (spec.d_model, spec.vocab_size):
            raise StandardNameError(
                f"lm_head should be a Linear {spec.d_model}->{spec.vocab_size}, got {head}; "
                f"fix 'lm_head' in {where}."
            )

    # -- remote execution -----------------------------------------------------------

    def _key_options(self) -> dict:
        """Family options that must travel in the remote model key."""
        return dict(self.options)

    def _remoteable_model_key(self) -> str:
        key = {"source": self.name_or_path, "dtype": dtype_name(self.torch_dtype), **self._key_options()}
        return json.dumps(key, sort_keys=True)

    @classmethod
    def _remoteable_from_model_key(cls, model_key: str, **kwargs: Any) -> "VLA":
        key = json.loads(model_key)
        device_map = kwargs.pop("device_map", None)
        kwargs.pop("max_memory", None)
        if device_map is not None and "device" not in kwargs and isinstance(device_map, str):
            kwargs["device"] = None if device_map in ("auto", "balanced") else device_map
        key.update({k: v for k, v in kwargs.items() if k in ("dtype", "device", "dispatch")})
        return cls(key.pop("source"), **key)

    #: Non-module attributes that a server already holds (referenced, not shipped).
    _persistent_attributes: ClassVar[tuple[str, ...]] = ("_tokenizer",)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        for attr in self._persistent_attributes:
            value = state.get(attr)
            if value is not None:
                try:
                    value._persistent_id = f"VLA:{attr}"
                except AttributeError:
                    pass
        return state

    def _remoteable_persistent_objects(self) -> dict:
        objects = super()._remoteable_persistent_objects()
        for attr in self._persistent_attributes:
            if getattr(self, attr, None) is not None:
                objects[f"VLA:{attr}"] = getattr(self, attr)
        return objects
