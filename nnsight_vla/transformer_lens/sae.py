"""SAE-Lens sparse autoencoders at VLA sites: loading and checking against a site, reading features
on predictions (`collect`), steering features (nnsight traces, `model.steer`, TransformerLens
bridges); training lives in `sae_training`.

An SAE names where it reads in ``sae.cfg.metadata.hook_name``, a TransformerLens hook point such
as ``"blocks.1.hook_resid_post"`` or ``"blocks.1.mlp.hook_post"``: that is a `Site`
(`Site.parse`), and the SAE's ``d_in`` must be the site's width. SAE-Lens is imported only when
one of these functions needs it (importing it takes seconds).

Example:
    >>> from nnsight_vla.transformer_lens import load_sae, sae_features, ClampFeatures
    >>> sae = load_sae("saes/resid-1", model)             # saved by sae.save_model(folder)
    >>> feats = sae_features(model, sae, [obs1, obs2], calls="prefill", positions="last")
    >>> with model.steer(ClampFeatures(sae, [12], 5.0)):
    ...     action = model.predict_action(obs1)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..collect import collect
from ..errors import CheckpointError, InputError, SetupError
from ..schedule import Calls, TowerSchedule
from ..sites import KINDS, Site
from ..edits import Edit, as_list
from ..steering.interventions import Intervention, number
from .bridge import to_bridge

#: The SAE metadata key naming the tower an SAE was trained on (absent: ``"vlm"``).
TOWER_KEY = "vla_tower"
#: The files of SAE-Lens's own format (``sae.save_model(folder)``).
SAE_FILES = ("cfg.json", "sae_weights.safetensors")
#: Normalisations whose decode needs the statistics of the encode just before it.
_STATEFUL_NORMS = ("layer_norm", "constant_norm_rescale")


def _sae_lens() -> Any:
    try:
        import sae_lens
    except ImportError as err:  # pragma: no cover - the tl extra installs it
        raise SetupError(
            "SAE-Lens is not installed; install the 'tl' extra: pip install 'nnsight-vla[tl]' (or make env)."
        ) from err
    return sae_lens


def _check_is_sae(sae: Any) -> None:
    if not isinstance(sae, _sae_lens().SAE):
        raise InputError(
            f"{type(sae).__name__} is not an SAE-Lens SAE; load one with nnsight_vla.transformer_lens.load_sae "
            "or sae_lens.SAE.load_from_disk."
        )


def sae_tower(sae: Any, tower: str | None = None) -> str:
    """The tower an SAE reads: ``tower`` if given, else the one its metadata names, else ``"vlm"``."""
    if tower is not None:
        return str(tower)
    return str(sae.cfg.metadata.get(TOWER_KEY) or "vlm")


def sae_site(model: Any, sae: Any, tower: str | None = None) -> Site:
    """The site of ``model`` that ``sae`` reads, checked: its ``metadata.hook_name`` must be a
    hook point a prediction runs and its ``d_in`` the site's width.

    Example:
        >>> sae_site(model, sae)            # metadata.hook_name == "blocks.1.mlp.hook_post"
        Site(layer=1, kind='neurons', tower='vlm')
    """
    _check_is_sae(sae)
    meta = sae.cfg.metadata
    hook = meta.hook_name
    if not hook:
        raise InputError(
            "the SAE's cfg.metadata.hook_name is empty; set it to the TransformerLens hook it reads, "
            "e.g. sae.cfg.metadata.hook_name = 'blocks.1.hook_resid_post'."
        )
    if meta.hook_name_out and meta.hook_name_out != hook:
        raise InputError(
            f"the SAE reads {hook!r} and writes {meta.hook_name_out!r} (a transcoder); only SAEs that "
            "reconstruct the activation they read are supported."
        )
    site = Site.parse(hook, sae_tower(sae, tower)).on(model)
    width = site.width(model)
    if sae.cfg.d_in != width:
        raise InputError(
            f"the SAE at {hook!r} has d_in={sae.cfg.d_in}, but that hook (site {site}) of "
            f"{model.spec.family} has width {width} ({KINDS[site.kind].width}); use an SAE trained on "
            "this model's activations."
        )
    return site


def load_sae(path: str | Path, model: Any = None, *, tower: str | None = None,
             device: str | None = None, dtype: str | None = None) -> Any:
    """An SAE saved in SAE-Lens's own format (``sae.save_model(folder)``: ``cfg.json`` and
    ``sae_weights.safetensors``), checked against ``model``'s site when a model is given
    (see `sae_site`). ``device`` defaults to the model's device, else the CPU.

    Example:
        >>> sae = load_sae("saes/neurons-1", model)
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"SAE folder {folder} does not exist; save one with sae.save_model(folder).")
    missing = [name for name in SAE_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"SAE folder {folder} lacks {', '.join(missing)}; SAE-Lens's format is what "
            "sae.save_model(folder) writes (cfg.json and sae_weights.safetensors)."
        )
    if device is None:
        device = str(getattr(model, "target_device", None) or "cpu")
    try:
        sae = _sae_lens().SAE.load_from_disk(folder, device=device, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"SAE folder {folder} could not be read by SAE-Lens: {err}") from err
    if model is not None:
        sae_site(model, sae, tower)
    return sae


def sae_features(model: Any, sae: Any, observations: Any, *, calls: Any = "prefill", positions: Any = "all",
                 tower: str | None = None, batch_size: int = 1, progress: bool = False,
                 **options: Any) -> torch.Tensor:
    """The SAE's feature activations on ``model``'s predictions: the site's activations from
    `nnsight_vla.collect` (same ``calls``, ``positions``, ``batch_size``, options), encoded.

    Returns:
        A float32 CPU tensor ``[observations, calls, positions, d_sae]``.

    Example:
        >>> feats = sae_features(model, sae, [obs1, obs2], calls="actions", positions="last")
        >>> feats.shape                     # OpenVLA: one call per action dimension
        torch.Size([2, 7, 1, 512])
    """
    site = sae_site(model, sae, tower)
    acts = collect(model, observations, [site], calls=calls, positions=positions,
                   batch_size=batch_size, progress=progress, **options)[site]
    with torch.no_grad():
        return sae.encode(acts.to(sae.device)).float().cpu()


# -- steering --------------------------------------------------------------------------------------


class FeatureIntervention(Intervention):
    """Steers chosen features of an SAE at its site: encodes the activation, changes the chosen
    features, decodes, and adds back the SAE's reconstruction error, i.e. the activation
    becomes ``x + (decode(f') - decode(f))`` = ``decode(f') + (x - decode(f))``. Written as the
    change, an untouched SAE (``f' == f``) leaves the activation bit-for-bit as it was.

    Args:
        sae: An SAE-Lens SAE whose ``metadata.hook_name`` is a site of the model.
        features: Feature indices (``0..d_sae-1``).
        tower: The tower the SAE reads (default: its metadata's, else ``"vlm"``).
        positions, calls, steps: As for every intervention (`Intervention`).
    """

    def __init__(self, sae: Any, features: int | Sequence[int], *, tower: str | None = None, **where: Any):
        _check_is_sae(sae)
        super().__init__(tower=sae_tower(sae, tower), **where)
        self._sae = sae
        self.features = _features(features, sae.cfg.d_sae)
        # what descriptions of the steering (evaluation runs) record: the hook, the SAE's
        # settings and its weights (shared, not copied; hashed there)
        self.hook_name = sae.cfg.metadata.hook_name
        self.sae_config = {k: v for k, v in sae.cfg.to_dict().items() if k not in ("metadata", "device")}
        self.sae_weights = sae.state_dict()

    @property
    def sae(self) -> Any:
        """The SAE-Lens SAE."""
        return self._sae

    def new_values(self, selected: torch.Tensor) -> torch.Tensor:
        """Replacement values for the chosen features' activations ``[..., features]``."""
        raise NotImplementedError

    def steer_features(self, feats: torch.Tensor) -> torch.Tensor:
        """``feats`` ``[..., d_sae]`` with the chosen features replaced (a new tensor)."""
        idx = torch.tensor(self.features, device=feats.device)
        out = feats.clone()
        out[..., idx] = self.new_values(feats[..., idx]).to(out.dtype)
        return out

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(f') - decode(f)`` for activations ``x`` ``[..., d_in]``, in ``x``'s dtype and device."""
        sae = self.sae
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            sae_in = x.to(sae.device)
            feats = sae.encode(sae_in)
            clean = sae.decode(feats)
            if sae.cfg.normalize_activations in _STATEFUL_NORMS:
                sae.encode(sae_in)  # its decode reads the statistics the encode just before it set
            steered = sae.decode(self.steer_features(feats))
            return (steered - clean).to(device=x.device, dtype=x.dtype)

    def edits(self, model: Any) -> list[Edit]:
        _, calls = self._when(model)
        site = sae_site(model, self.sae, self.tower)

        def edit(x: torch.Tensor, call: int) -> torch.Tensor:
            return self._change(calls, x, call, lambda selected: selected + self.delta(selected))

        return [Edit(site, edit)]

    def bridge_hook(self, bridge: Any) -> tuple[str, Any]:
        """A ``(hook_name, fn)`` pair for ``bridge.run_with_hooks`` that steers the same features
        on the SAE attached to ``bridge`` (`attach_sae`): it changes the attached SAE's feature
        activations (``hook_sae_acts_post``), and the bridge adds back the error term (an SAE
        attached with ``use_error_term=False`` instead replaces the activation by the steered
        reconstruction). Like `steering.hook_points`, it counts its calls (one per forward):
        make a fresh one per run.

        Example:
            >>> bridge = to_sae_bridge(model, sae)
            >>> hooks = [steer.bridge_hook(bridge)]
            >>> logits = bridge.run_with_hooks(**bridge_inputs(model, obs), fwd_hooks=hooks)
        """
        if self.tower != "vlm":
            raise InputError(
                f"TransformerLens bridges cover the language model ('vlm'), not tower {self.tower!r}."
            )
        name = self.sae.cfg.metadata.hook_name
        attached = getattr(bridge, "acts_to_saes", {})
        if attached.get(name) is not self.sae:
            raise InputError(
                f"this SAE is not attached to the bridge at {name!r}; attach it first with "
                "attach_sae(bridge, sae) (or build the bridge with to_sae_bridge(model, sae))."
            )
        # a bridge runs the language model's forwards, one per call, as the VLA's VLM tower does
        chosen = Calls.parse(self.calls).resolve(TowerSchedule("vlm", None, None, None, False))
        calls, count = None if chosen is None else frozenset(chosen), [0]

        def fn(feats: torch.Tensor, hook: Any = None) -> torch.Tensor:
            call = count[0]
            count[0] += 1
            return self._change(calls, feats, call, self.steer_features)

        return bridge.get_sae_hook_name(self.sae), fn

    def random_like(self, model: Any, seed: int, rng: np.random.Generator) -> FeatureIntervention:
        """The same change on as many random features of the same SAE: the paired control."""
        control = copy.copy(self)
        chosen = rng.choice(self.sae.cfg.d_sae, size=len(self.features), replace=False)
        control.features = tuple(int(f) for f in sorted(chosen))
        return control

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.sae.cfg.metadata.hook_name!r}, features={list(self.features)}, "
                f"tower={self.tower!r}, positions={self.positions!r}, calls={self.calls!r})")


def _features(features: Any, d_sae: int) -> tuple[int, ...]:
    items = [features] if isinstance(features, (int, np.integer)) else features
    try:
        items = list(items)
    except TypeError as err:
        raise InputError(f"features={features!r} must be feature indices (ints).") from err
    if not items or not all(isinstance(f, (int, np.integer)) and not isinstance(f, bool) for f in items):
        raise InputError(f"features={features!r} must be feature indices (ints), at least one.")
    bad = [int(f) for f in items if not 0 <= f < d_sae]
    if bad:
        raise InputError(f"features {bad[:5]} are out of range: the SAE has d_sae={d_sae} (0..{d_sae - 1}).")
    return tuple(dict.fromkeys(int(f) for f in items))


class ClampFeatures(FeatureIntervention):
    """Set the chosen SAE features to ``value`` (decoded, with the error term kept).

    Example:
        >>> with model.steer(ClampFeatures(sae, [12, 40], 5.0, calls="prefill")):
        ...     action = model.predict_action(obs)
    """

    def __init__(self, sae: Any, features: int | Sequence[int], value: float, **where: Any):
        super().__init__(sae, features, **where)
        self.value = number(value, "the feature value")

    def new_values(self, selected: torch.Tensor) -> torch.Tensor:
        return torch.full_like(selected, self.value)


class ScaleFeatures(FeatureIntervention):
    """Multiply the chosen SAE features by ``factor`` (0 ablates them; 1 changes nothing).

    Example:
        >>> with model.predict_action(obs) as tracer:
        ...     for step in tracer.iter[:7]:
        ...         ScaleFeatures(sae, [12], 0.0).apply(model, step)
        ...     action = tracer.result.save()
    """

    def __init__(self, sae: Any, features: int | Sequence[int], factor: float, **where: Any):
        super().__init__(sae, features, **where)
        self.factor = number(factor, "the scale factor")

    def new_values(self, selected: torch.Tensor) -> torch.Tensor:
        return selected * self.factor


# -- bridges -----------------------------------------------------------------------------------------


def attach_sae(bridge: Any, sae: Any, *, use_error_term: bool = True) -> Any:
    """Attach ``sae`` at its hook point of a TransformerLens bridge with SAE-Lens's
    ``SAETransformerBridge.add_sae``; a plain `TransformerBridge` (`to_bridge`) becomes one by
    the class swap SAE-Lens's own boot performs. With ``use_error_term=True`` (the default) the
    bridge's outputs stay as they were until features are changed. Returns the bridge.

    Example:
        >>> bridge = attach_sae(to_bridge(model), sae)
        >>> logits, cache = bridge.run_with_cache(**bridge_inputs(model, obs))
        >>> cache[bridge.get_sae_hook_name(sae)]           # the features, [batch, positions, d_sae]
    """
    _check_is_sae(sae)
    from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge
    from transformer_lens.model_bridge import TransformerBridge

    if not isinstance(bridge, TransformerBridge):
        raise InputError(
            f"{type(bridge).__name__} is not a TransformerBridge; build one with to_bridge(model)."
        )
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise InputError("the SAE's cfg.metadata.hook_name is empty; set it to the hook it reads.")
    site = Site.parse(hook, "vlm")
    width = getattr(bridge.cfg, KINDS[site.kind].width)
    if sae.cfg.d_in != width:
        raise InputError(
            f"the SAE at {hook!r} has d_in={sae.cfg.d_in}, but that hook of the bridge has width "
            f"{width} ({KINDS[site.kind].width}); use an SAE trained on this model's activations."
        )
    if not isinstance(bridge, SAETransformerBridge):
        bridge.__class__ = SAETransformerBridge  # what SAETransformerBridge.boot_transformers does
        bridge._acts_to_saes = {}
        bridge._transcoder_output_hooks = {}
    if bridge._resolve_hook_name(hook) not in bridge._hook_registry and hook not in bridge._acts_to_saes:
        raise InputError(f"the bridge has no hook point {hook!r}; SAE-Lens would skip this SAE.")
    bridge.add_sae(sae, use_error_term=use_error_term)
    return bridge


def to_sae_bridge(model: Any, saes: Any, *, use_error_term: bool = True, part: str = "vlm") -> Any:
    """A bridge of ``model`` (`to_bridge`) with ``saes`` attached (`attach_sae`), each checked
    against the model's sites first.

    Example:
        >>> bridge = to_sae_bridge(model, sae)
        >>> logits = bridge(**bridge_inputs(model, obs))   # equals the plain bridge's (error term on)
    """
    items = [saes] if not isinstance(saes, (list, tuple)) else list(saes)
    if not items:
        raise InputError("no SAEs given; pass an SAE or a list of them.")
    for sae in items:
        site = sae_site(model, sae)
        if site.tower != "vlm":
            raise InputError(
                f"TransformerLens bridges cover the language model ('vlm'), not tower {site.tower!r}."
            )
    bridge = to_bridge(model, part)
    for sae in items:
        attach_sae(bridge, sae, use_error_term=use_error_term)
    return bridge


def feature_hooks(bridge: Any, interventions: Any) -> list[tuple[str, Any]]:
    """Feature interventions as ``fwd_hooks`` of an SAE bridge (`FeatureIntervention.bridge_hook`).

    Example:
        >>> bridge.run_with_hooks(**bridge_inputs(model, obs), fwd_hooks=feature_hooks(bridge, steer))
    """
    items = as_list(interventions)
    bad = [i for i in items if not isinstance(i, FeatureIntervention)]
    if bad:
        raise InputError(f"{bad[0]!r} is not a feature intervention (ClampFeatures, ScaleFeatures).")
    return [i.bridge_hook(bridge) for i in items]


__all__ = [
    "ClampFeatures", "FeatureIntervention", "ScaleFeatures", "attach_sae", "feature_hooks",
    "load_sae", "sae_features", "sae_site", "sae_tower", "to_sae_bridge",
]
