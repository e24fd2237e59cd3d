"""Steering SAE-Lens features at VLA sites: `ClampFeatures` and `ScaleFeatures`.

They steer in nnsight traces, around plain calls (`model.steer`) and on TransformerLens bridges
with the SAE attached (`attach_sae`, `to_sae_bridge`, `feature_hooks`). Loading and reading
live in `sae`.

Example:
    >>> with model.steer(ClampFeatures(sae, [12], 5.0)):
    ...     action = model.predict_action(obs)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..edits import Edit, as_list
from ..errors import InputError
from ..schedule import Calls, TowerSchedule
from ..sites import KINDS, Site
from ..steering.interventions import Intervention, number
from .bridge import to_bridge
from .sae import _STATEFUL_NORMS, _check_is_sae, sae_site, sae_tower


class FeatureIntervention(Intervention):
    """Steers chosen features of an SAE at its site.

    It encodes the activation, changes the chosen features, decodes, and adds back the SAE's
    reconstruction error, i.e. the activation becomes ``x + (decode(f') - decode(f))`` =
    ``decode(f') + (x - decode(f))``. Written as the change, an untouched SAE (``f' == f``)
    leaves the activation bit-for-bit as it was.

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
        """One edit at the SAE's `sae_site`: ``x + delta(x)`` at the chosen calls and positions."""
        _, calls = self._when(model)
        site = sae_site(model, self.sae, self.tower)

        def edit(x: torch.Tensor, call: int) -> torch.Tensor:
            return self._change(calls, x, call, lambda selected: selected + self.delta(selected))

        return [Edit(site, edit)]

    def bridge_hook(self, bridge: Any) -> tuple[str, Any]:
        """A ``(hook_name, fn)`` pair for ``bridge.run_with_hooks`` that steers the same features.

        It steers them on the SAE attached to ``bridge`` (`attach_sae`): it changes the
        attached SAE's feature activations (``hook_sae_acts_post``), and the bridge adds back
        the error term (an SAE attached with ``use_error_term=False`` instead replaces the
        activation by the steered reconstruction). Like `steering.hook_points`, it counts its
        calls (one per forward): make a fresh one per run.

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
        """``value`` for every chosen feature activation."""
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
        """The chosen feature activations times ``factor``."""
        return selected * self.factor


# -- bridges -----------------------------------------------------------------------------------------


def attach_sae(bridge: Any, sae: Any, *, use_error_term: bool = True) -> Any:
    """Attach ``sae`` at its hook point of a TransformerLens bridge; returns the bridge.

    The SAE is attached with SAE-Lens's ``SAETransformerBridge.add_sae``; a plain
    `TransformerBridge` (`to_bridge`) becomes one by the class swap SAE-Lens's own boot
    performs. With ``use_error_term=True`` (the default) the bridge's outputs stay as they were
    until features are changed.

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
    """A bridge of ``model`` (`to_bridge`) with ``saes`` attached (`attach_sae`).

    Each SAE is checked against the model's sites first.

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


__all__ = ["ClampFeatures", "FeatureIntervention", "ScaleFeatures", "attach_sae", "feature_hooks", "to_sae_bridge"]
