"""`VLA`: the nnsight `Remotable` base class every model family subclasses."""

from __future__ import annotations

import inspect
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from nnsight.intervention.envoy import Envoy
from nnsight.intervention.tracer import InterleavingTracer
from nnsight.modeling.mixins.meta import MetaDevice
from nnsight.modeling.mixins.remotable import Remotable
from nnsight.tracing.tracer import WithBlockNotFoundError

from .checkpoint import parse_device, parse_dtype
from .edits import steer
from .envoys import IdleEnvoy, InertEnvoy, InertOutputEnvoy, LayersEnvoy
from .errors import InputError, StandardNameError
from .layout import STANDARD_NAMES, BridgePart, Layout
from .observation import Observation
from .paths import writable_folder, writing
from .remote import from_model_key, model_key
from .schedule import Schedule, TowerSchedule
from .spec import ModelSpec
from .towers import Tower, module_of

def _linear_shape(envoy: Any, tied: bool = False) -> tuple[int, int] | None:
    """``(in, out)`` of a Linear (or, with ``tied``, of an embedding); None otherwise.

    With ``tied``, an embedding is read as its tied unembedding ``d_model -> vocab`` (X-VLA's
    BART encoder has no head of its own).
    """
    module = module_of(envoy)
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if tied and isinstance(module, torch.nn.Embedding):
        return module.embedding_dim, module.num_embeddings
    return None


class _TakingTurns(InterleavingTracer):
    """A trace that holds its model's lock from registering its workers to the end of its run."""

    def execute(self, code: Any) -> None:
        with self.envoy.exclusive():
            super().execute(code)


class VLA(Remotable):
    """A vision-language-action policy as an nnsight model.

    Everything nnsight offers works: ``trace``, ``invoke``, ``session``, ``edit``,
    ``scan``, ``tracer.cache``, ``.source`` and ``remote=``. Standard names
    (``vision``, ``projector``, ``layers[i].mlp.down_proj``, ``ln_final``,
    ``lm_head``) alias the family's own module paths, which keep working.

    A family subclass sets `layout` (its module paths as data: standard names, towers,
    inert sites) and implements the hooks `_configure`, `_build`, `_load_weights`,
    `_inputs`, `_predict_action` and `_save`; `action_calls` says which forwards emit actions.

    Example:
        >>> import nnsight_vla
        >>> model = nnsight_vla.load("tiny-openvla")
        >>> with model.trace(obs):
        ...     acts = model.layers[1].mlp.down_proj.input.save()
    """

    #: The family's module paths (a class attribute, or set per instance in `_configure`).
    layout: Layout

    #: What the family can do beyond the base contract, by name; features check these, never
    #: catch the base class's refusal. ``"action_bins"``: `action_bins` maps actions to the
    #: bins of the action tokens it decodes (OpenVLA).
    capabilities: ClassVar[frozenset[str]] = frozenset()

    spec: ModelSpec

    def __init__(self, source: str, *, dtype=None, device=None, dispatch: bool = False,
                 revision: str | None = None, **options):
        self.name_or_path = str(source)
        self.revision = revision  # a family's `_configure` pins a Hub source to its commit
        self.torch_dtype = parse_dtype(dtype)
        self.target_device = parse_device(device)  # checked before any file is read
        self._check_options(options)
        self.options = options
        self._configure(self.name_or_path, **options)
        # Envoy classes are chosen as nnsight wraps the module, after `_bind_layout` fills this.
        self._envoy_map: dict[str, type[Envoy]] = {}
        super().__init__(
            self.name_or_path, dispatch=dispatch, rename=self.layout.rename(), envoys=self._envoy_map
        )
        self._check_layout()

    def _check_options(self, options: dict) -> None:
        """Refuse keyword arguments that the family's `_configure` does not take, naming those it does."""
        params = list(inspect.signature(self._configure).parameters.values())[1:]  # after `source`
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return
        known = sorted(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        unknown = sorted(set(options) - set(known))
        if unknown:
            import difflib

            close = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
            hints = "".join(f" Did you mean {c[0]}= for {u}=?" for u, c in close.items() if c)
            raise InputError(
                f"{type(self).__name__} has no option {', '.join(f'{u}=' for u in unknown)}; its options "
                f"are {', '.join(f'{k}=' for k in known) or 'none'} (besides dtype=, device=, dispatch= "
                f"and revision=).{hints}"
            )

    def _bind_layout(self, module: torch.nn.Module) -> torch.nn.Module:
        """Check the layout against the built module and choose the envoy classes.

        The classes give range-checked layer lists and the family's inert sites.
        """
        self.layout = self.layout.resolved(module, f"{type(self).__name__}.layout")
        layout = self.layout
        self._envoy_map.update({
            **{t.layers: LayersEnvoy for t in layout.towers},
            **dict.fromkeys(layout.inert, InertEnvoy),
            **dict.fromkeys(layout.inert_output, InertOutputEnvoy),
            **dict.fromkeys(layout.idle, IdleEnvoy),
        })
        return module

    # -- hooks a family implements ---------------------------------------------------

    def bridge_parts(self) -> dict[str, BridgePart]:
        """Parts a TransformerLens bridge can wrap, by name: the layout's `BridgePart` records."""
        return dict(self.layout.bridges)

    def bridge_inputs(self, part: str, observations: list[Observation]) -> dict[str, torch.Tensor]:
        """What ``part`` is fed in a prediction's first forward, as bridge keyword arguments."""
        raise InputError(f"{type(self).__name__} has no TransformerLens parts yet.")

    def bridge_tokens(self, part: str, observations: list[Observation]) -> Any:
        """One observation as a `nnsight_vla.transformer_lens.TokenPrompt`, for TransformerLens.

        The prompt holds token ids with placeholders where the image patches go, for
        TransformerLens functions that take tokens.
        """
        raise InputError(f"{type(self).__name__} has no token inputs for TransformerLens yet.")

    def action_bins(self, actions: np.ndarray) -> np.ndarray:
        """Per dimension of ``actions`` ``[rows, dims]``, the bin index of the action tokens.

        ``actions`` are un-normalised; the bins are those of the family's action tokens
        (families that decode actions from tokens).
        """
        raise InputError(f"{type(self).__name__} has no action-token bins (OpenVLA has; see `capabilities`).")

    def schedule(self) -> Schedule:
        """Each tower's forwards in one prediction with default options (`nnsight_vla.schedule`).

        For each tower: how many, which emit actions, whether they are denoising steps.
        """
        return Schedule({
            name: TowerSchedule(name, self.calls_per_prediction(name), self.layout.tower(name).runs,
                                self.action_calls(name), name != "vlm" and self.layout.tower(name).runs != 1)
            for name in self.towers()})

    def calls_per_prediction(self, tower: str) -> int | None:
        """How many forwards ``tower`` makes in one prediction with default options (None: it varies)."""
        runs = self.layout.tower(tower).runs
        if runs is not None:
            return runs
        calls = self.action_calls(tower)
        return None if calls is None else len(calls)

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

    def action_calls(self, tower: str) -> range | None:
        """The forward calls of ``tower`` in one prediction whose last position emits an action.

        The action is a token or a velocity; None when no call emits one. OpenVLA: the 7
        decoding forwards of the VLM; Pi0: the expert's denoising steps.
        """
        return None

    # -- nnsight hooks --------------------------------------------------------------

    def _load_meta(self, *args: Any, **kwargs: Any) -> torch.nn.Module:
        # nnsight's MetaDevice forces even explicit ``device="cpu"`` tensors onto meta, which
        # breaks constructors that compute with small CPU tensors (timm's drop-path rates);
        # a meta default device is enough to keep every parameter off memory.
        with MetaDevice.real(), torch.device("meta"):
            return self._bind_layout(self._build())

    def _load(self, *args: Any, **kwargs: Any) -> torch.nn.Module:
        return self._bind_layout(self._place(self._load_weights()).eval())

    def _place(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move loaded weights to the requested device and dtype.

        Families with mixed-precision rules override this.
        """
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

    # -- one run at a time ---------------------------------------------------------
    # nnsight keeps one interleaver per model: a trace registers its workers on it, then
    # its hand-offs serve every forward of the model. Another thread's run meanwhile would
    # feed or clear those workers, so every run (a trace from registering its workers to
    # its end, a plain prediction, bridge inputs) holds the model's re-entrant lock, and
    # threads take turns.

    def exclusive(self) -> threading.RLock:
        """The lock every run of this model holds; hold it to run the network directly.

        Example:
            >>> with model.exclusive():
            ...     out = model._module.embed(**inputs)
        """
        lock = self.__dict__.get("_run_lock")
        return lock if lock is not None else self.__dict__.setdefault("_run_lock", threading.RLock())

    def trace(self, *args: Any, tracer_cls: type | None = None, **kwargs: Any):
        """nnsight's `trace`; its default tracer holds the model's lock (`exclusive`) as it runs."""
        return super().trace(*args, tracer_cls=tracer_cls or _TakingTurns, **kwargs)

    def interleave(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """nnsight's `interleave`, run while holding the model's lock (`exclusive`)."""
        with self.exclusive():
            return super().interleave(fn, *args, **kwargs)

    def predict_action(self, *args: Any, **kwargs: Any) -> Any:
        """Predict the un-normalised action for an observation.

        A plain call returns a numpy array (``(action_dim,)`` for one observation,
        ``(batch, ...)`` for several). As a trace, every forward the prediction makes
        is an iteration, and ``tracer.result`` is the action. Threads may share a model:
        their runs take turns, each giving what it would alone.

        Example:
            >>> action = model.predict_action(obs)
            >>> with model.predict_action(obs) as tracer:
            ...     for step in tracer.iter[:]:
            ...         model.layers[1].mlp.down_proj.input[..., 3] = 8.0
        """
        # nnsight's `traceable`, with the lock held before it asks whether a run is going on
        # (no `with` here adds a frame: `capture` reads the caller's block two frames up).
        with self.exclusive():
            if self.interleaver.interleaving:
                raise InputError(
                    "predict_action was called inside a running trace of the same model; "
                    "make the second prediction after the trace's block ends."
                )
            tracer = self.trace(*args, fn=self._run_prediction, **kwargs)
            try:
                tracer.capture()
            except WithBlockNotFoundError:  # a plain call: one run, only edits apply
                return self.interleave(self._run_prediction, *args, **kwargs)
            return tracer

    def _run_prediction(self, **inputs: Any) -> np.ndarray:
        return self._predict_action(**inputs)

    # -- public helpers -----------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The family's text tokenizer (a transformers tokenizer)."""
        return self._tokenizer

    def steer(self, interventions: Any):
        """A context manager that applies ``interventions`` to every prediction made inside it.

        The interventions (`nnsight_vla.Clamp`, `Scale`, `Ablate`, `Add`, or a list of them, in
        order) act on predictions made in this thread (or asyncio task), as torch hooks that
        are removed when it ends, exceptions included. ``None`` steers nothing.

        Example:
            >>> with model.steer(nnsight_vla.Clamp(cluster, 6.0)):
            ...     action = model.predict_action(obs)
        """
        return steer(self, interventions)

    def towers(self) -> dict[str, Tower]:
        """The model's decoder stacks by name, from its layout; ``"vlm"`` comes first.

        Example:
            >>> [(t.name, t.n_layers, t.d_mlp) for t in model.towers().values()]
            [('vlm', 3, 128), ('expert', 3, 64)]
        """
        out = {}
        for t in self.layout.towers:
            unembed = None if t.unembed is None else self.get(t.unembed)
            out[t.name] = Tower(t.name, self.get(t.layers), self.get(t.norm), unembed, t)
        return out

    def token_strings(self, token_ids) -> list[str]:
        """Readable labels for token ids (families label action tokens, e.g. ``[action: 0.25]``)."""
        return self._tokenizer.convert_ids_to_tokens([int(i) for i in token_ids])

    def save_pretrained(self, path: str | Path, **options: Any) -> Path:
        """Write a checkpoint that `nnsight_vla.load(path)` reads back; returns the folder.

        ``options`` go to the family's writer (e.g. ``max_shard_bytes=`` for OpenVLA).
        """
        folder = writable_folder(path, "save_pretrained folder")  # before loading any weight
        self.dispatch()
        with writing(folder, "checkpoint folder"):
            folder.mkdir(parents=True, exist_ok=True)
            self._save(folder, **options)
        return folder

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            spec = self.__dict__.get("spec")
            if spec is not None and name in spec.__dataclass_fields__:
                raise StandardNameError(f"{type(self).__name__} has no attribute {name!r}: the model's facts are "
                                        f"on its spec; use model.spec.{name}.") from None
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name_or_path!r})\n{super().__repr__()}"

    # -- load-time checks ---------------------------------------------------------

    def _check_layout(self) -> None:
        """Every standard name is bound; the spec's sizes agree with the modules.

        Sizes the family left out of the spec are read from the modules.
        """
        where = f"{type(self).__name__}.layout"
        for name in sorted(self.layout.standard_names() | set(STANDARD_NAMES)):
            if not isinstance(self.__dict__.get(name), Envoy):
                raise StandardNameError(f"standard name {name!r} is not bound; add its module path to {where}.")
        towers = self.towers()
        for tower in towers.values():
            out = tower.layout.block["mlp.out"]  # the FFN output projection (Llama's mlp.down_proj)
            shapes = {_linear_shape(module_of(tower.layers[i]).get_submodule(out)) for i in range(tower.n_layers)}
            if len(shapes) != 1 or None in shapes:
                raise StandardNameError(
                    f"every layers[i].{out} of tower {tower.name!r} should be one Linear "
                    f"d_mlp->d_model, got {sorted(shapes, key=str)}; fix its paths in {where}."
                )
        vlm = towers["vlm"]
        head = _linear_shape(self.lm_head, tied=True)
        if head is None or head[0] != vlm.d_model:
            raise StandardNameError(f"lm_head should be a Linear from d_model={vlm.d_model} (or a tied embedding), "
                                    f"got {head}; fix it in {where}.")
        found = {"n_layers": vlm.n_layers, "d_model": vlm.d_model, "d_mlp": vlm.d_mlp, "vocab_size": head[1]}
        stated = {k: getattr(self.spec, k) for k in found}
        differ = {k: (stated[k], found[k]) for k in found if stated[k] is not None and stated[k] != found[k]}
        if differ:
            raise StandardNameError(
                f"the spec and the modules disagree on {differ} (spec, modules); fix the layout's paths in "
                f"{where} or the spec."
            )
        self.spec = replace(self.spec, **{k: v for k, v in found.items() if stated[k] is None})

    # -- remote execution -----------------------------------------------------------

    def _key_options(self) -> dict:
        """Family options that must travel in the remote model key."""
        return dict(self.options)

    def _remoteable_model_key(self) -> str:
        return model_key(self)

    @classmethod
    def _remoteable_from_model_key(cls, key: str, **kwargs: Any) -> "VLA":
        return from_model_key(cls, key, **kwargs)

    @classmethod
    def _remoteable_describe_checkpoint(cls, key: str, dtype: str, **kwargs: Any):
        # NDIF sizes a deployment from this (the default builds on meta and counts); the
        # keywords it adds across versions (``trust_remote_code``) are accepted and unused.
        return super()._remoteable_describe_checkpoint(key, dtype)

    @classmethod
    def _remoteable_max_tp_size(cls, key: str, **kwargs: Any) -> None:
        return None  # one device: never split for tensor parallelism

    #: Non-module attributes that a server already holds (referenced, not shipped).
    _persistent_attributes: ClassVar[tuple[str, ...]] = ("_tokenizer",)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_run_lock", None)  # a lock does not pickle; the copy makes its own
        for attr in self._persistent_attributes:
            value = state.get(attr)
            if value is not None:
                try:  # frozen dataclasses (a policy kind) too
                    object.__setattr__(value, "_persistent_id", f"VLA:{attr}")
                except (AttributeError, TypeError) as err:
                    raise TypeError(f"{type(self).__name__}._persistent_attributes: {attr!r} "
                                    f"({type(value).__name__}) cannot be referenced by id") from err
        return state

    def _remoteable_persistent_objects(self) -> dict:
        objects = super()._remoteable_persistent_objects()
        for attr in self._persistent_attributes:
            if getattr(self, attr, None) is not None:
                objects[f"VLA:{attr}"] = getattr(self, attr)
        return objects
