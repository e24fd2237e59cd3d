"""Interventions: what to change (clamp, scale, ablate FFN neurons; add a direction) and where."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..neurons import NeuronCluster
from ..sites import Site
from ..towers import Tower, get_tower
from .directions import mean_activations
from .edits import Edit, EditFn, apply

POSITIONS = ("all", "prefix", "last")
CALLS = ("all", "prefill")


def number(value: Any, what: str) -> float:
    """``value`` as a finite float; strings, booleans, NaN and infinities are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{what} must be a number, got {value!r} ({type(value).__name__}).")
    if not np.isfinite(value):
        raise InputError(f"{what} must be finite, got {value!r}.")
    return float(value)


def _choice(value: Any, allowed: Sequence[str], what: str, negative: bool = False) -> Any:
    """One of ``allowed``, or a non-empty tuple of ints (negative ones only if ``negative``)."""
    wrong = InputError(f"{what}={value!r} is not one of {list(allowed)} or a list of ints.")
    if isinstance(value, str):
        if value not in allowed:
            raise wrong
        return value
    try:
        items = tuple(value)
    except TypeError as err:
        raise wrong from err
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
        raise wrong
    if not items:
        raise InputError(f"{what}={value!r} is empty; give at least one index or {list(allowed)}.")
    if not negative and min(items) < 0:
        raise InputError(f"{what}={value!r}: indices count from 0 (the first forward of a prediction).")
    return tuple(int(v) for v in items)


class Intervention:
    """Where and when an intervention acts (shared by every kind).

    Args:
        positions: ``"all"`` token positions, ``"prefix"`` (the observation's tokens: the
            prefill call only), ``"last"``, or explicit indices along each call's sequence axis.
        calls: ``"all"`` forward calls of the site in a prediction, ``"prefill"`` (the first
            only: the paper's rule for autoregressive decoding), or explicit call indices.
        steps: For a tower run once per denoising step (Pi0's expert): which steps.
        tower: ``"vlm"`` (the language model) or another tower of the model (``"expert"``).
    """

    def __init__(self, *, positions: Any = "all", calls: Any = "all", steps: Any = "all", tower: str = "vlm"):
        self.positions = _choice(positions, POSITIONS, "positions", negative=True)
        self.calls = _choice(calls, CALLS, "calls")
        self.steps = _choice(steps, ("all",), "steps")
        self.tower = str(tower)

    def apply(self, model: Any, step: int = 0) -> None:
        """Apply inside an nnsight trace at its current ``step`` (see `steering.apply`)."""
        apply(model, self, step)

    def random_like(self, model: Any, seed: int, rng: np.random.Generator) -> Intervention:
        """The same intervention at random sites of the same shape: the paired control."""
        raise NotImplementedError

    # -- binding ------------------------------------------------------------------------

    def edits(self, model: Any) -> list[Edit]:
        """This intervention's edits on ``model`` (checks it fits the model)."""
        raise NotImplementedError

    def _tower(self, model: Any) -> Tower:
        tower = get_tower(model, self.tower)
        if self.steps != "all" and (tower.name == "vlm" or tower.runs == 1):
            raise InputError(
                f"steps= selects denoising steps of a tower run once per step (Pi0's 'expert'); "
                f"tower {self.tower!r} of {model.spec.family} has none: use calls= instead."
            )
        if self.tower != "vlm" and (self.calls == "prefill" or self.positions == "prefix"):
            raise InputError(
                f"tower {self.tower!r} reads no observation prefix and has no prefill call; "
                "use positions='all'/'last'/indices and steps=."
            )
        runs = model.calls_per_prediction(tower.name)
        for what, chosen in (("calls", self.calls), ("steps", self.steps)):
            late = [c for c in chosen if runs is not None and c >= runs] if isinstance(chosen, tuple) else []
            if late:
                raise InputError(
                    f"{what}={list(chosen)}: tower {tower.name!r} runs {runs} time(s) per prediction "
                    f"(0..{runs - 1}), so {late} would never be steered."
                )
        return tower

    # -- when and where -----------------------------------------------------------------

    def active(self, call: int) -> bool:
        """Whether the intervention acts on the site's ``call``-th forward in a prediction."""
        if self.calls == "prefill" and call != 0:
            return False
        if isinstance(self.calls, tuple) and call not in self.calls:
            return False
        return self.steps == "all" or call in self.steps

    def position_index(self, length: int, call: int) -> torch.Tensor | None:
        """Indices along a call's sequence axis (None: every position; empty: none)."""
        if self.positions == "all":
            return None
        if self.positions == "prefix":
            return None if call == 0 else torch.empty(0, dtype=torch.long)
        if self.positions == "last":
            return torch.tensor([length - 1])
        bad = [p for p in self.positions if not -length <= p < length]
        if bad:
            raise InputError(f"positions {bad} are outside this call's {length} positions.")
        return torch.tensor([p % length for p in self.positions])


class NeuronIntervention(Intervention):
    """Changes chosen FFN neurons' activations: the input of each layer's ``mlp.down_proj``."""

    #: A constant that every chosen activation becomes (Clamp), or None.
    fill: float | None = None

    def __init__(self, cluster: NeuronCluster | Sequence[tuple[int, int]], **where: Any):
        super().__init__(**where)
        self.cluster = cluster if isinstance(cluster, NeuronCluster) else NeuronCluster(cluster)
        if len(self.cluster) == 0:
            raise InputError("the cluster is empty; give at least one (layer, neuron) pair.")

    def new_values(self, selected: torch.Tensor, layer: int, neurons: torch.Tensor) -> torch.Tensor:
        """Replacement values for the selected activations ``[..., positions, neurons]``."""
        raise NotImplementedError

    def prepare(self, model: Any) -> None:
        """Compute anything the edit needs from the model (e.g. mean activations)."""

    def edits(self, model: Any) -> list[Edit]:
        tower = self._tower(model)
        self.prepare(model)
        out = []
        for layer, neurons in self.cluster.by_layer().items():
            layer = tower.layer(layer)
            bad = [n for n in neurons if n >= tower.d_mlp]
            if bad:
                raise InputError(
                    f"neurons {bad[:5]} of layer {layer} are out of range: tower {self.tower!r} "
                    f"has d_mlp={tower.d_mlp} (0..{tower.d_mlp - 1})."
                )
            site = Site(layer, "neurons", self.tower)
            out.append(Edit(site, self._edit_fn(layer, torch.tensor(neurons))))
        return out

    def random_like(self, model: Any, seed: int, rng: np.random.Generator) -> NeuronIntervention:
        control = copy.copy(self)
        control.cluster = self.cluster.random_like(seed, d_mlp=get_tower(model, self.tower).d_mlp)
        if hasattr(control, "means"):
            control.means = {}
        return control

    def _edit_fn(self, layer: int, neurons: torch.Tensor) -> EditFn:
        def edit(x: torch.Tensor, call: int) -> torch.Tensor:
            if not self.active(call):
                return x
            positions = self.position_index(x.shape[-2], call)
            idx = neurons.to(x.device)
            if positions is None and self.fill is not None:
                return x.index_fill(-1, idx, self.fill)  # one op, out of place: Clamp's common case
            x = x.clone()
            if positions is None:
                x[..., idx] = self.new_values(x[..., idx], layer, idx).to(x.dtype)
            elif len(positions):
                pos = positions.to(x.device)[:, None]
                x[..., pos, idx] = self.new_values(x[..., pos, idx], layer, idx).to(x.dtype)
            return x

        return edit

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cluster!r}, tower={self.tower!r}, positions={self.positions!r}, calls={self.calls!r})"


class Clamp(NeuronIntervention):
    """Set the chosen neurons' activations to ``value`` — the paper's steering rule.

    Example:
        >>> with model.steer(Clamp(cluster, 6.0)):
        ...     action = model.predict_action(obs)
    """

    def __init__(self, cluster, value: float, **where: Any):
        super().__init__(cluster, **where)
        self.value = number(value, "the clamp value")

    @property
    def fill(self) -> float:
        return self.value

    def new_values(self, selected, layer, neurons):
        return torch.full_like(selected, self.value)


class Scale(NeuronIntervention):
    """Multiply the chosen neurons' activations by ``factor``."""

    def __init__(self, cluster, factor: float, **where: Any):
        super().__init__(cluster, **where)
        self.factor = number(factor, "the scale factor")

    def new_values(self, selected, layer, neurons):
        return selected * self.factor


class Ablate(NeuronIntervention):
    """Replace the chosen neurons' activations by zero, or by their mean over ``reference``
    observations (every position and forward call of the site)."""

    def __init__(self, cluster, mode: str = "zero", reference: Sequence[Any] | None = None, **where: Any):
        super().__init__(cluster, **where)
        if mode not in ("zero", "mean"):
            raise InputError(f"mode={mode!r} is not 'zero' or 'mean'.")
        if mode == "mean" and not reference:
            raise InputError("mode='mean' needs reference= observations to average over.")
        self.mode, self.reference = mode, reference
        self.means: dict[int, torch.Tensor] = {}

    def prepare(self, model: Any) -> None:
        if self.mode == "mean" and not self.means:
            self.means = mean_activations(model, self.reference, self.cluster.by_layer(), self.tower)

    def new_values(self, selected, layer, neurons):
        if self.mode == "zero":
            return torch.zeros_like(selected)
        means = self.means[layer].to(selected.device)  # [d_mlp]
        return means[neurons].expand_as(selected)


class Add(Intervention):
    """Add ``alpha * direction`` to the residual stream after ``layers[layer]``.

    Example:
        >>> direction = mean_difference(model, fast_obs, slow_obs, layer=3)
        >>> with model.steer(Add(direction, layer=3, alpha=4.0)):
        ...     action = model.predict_action(obs)
    """

    def __init__(self, direction: torch.Tensor, layer: int, alpha: float = 1.0, **where: Any):
        super().__init__(**where)
        direction = torch.as_tensor(direction, dtype=torch.float32)
        if direction.ndim != 1:
            raise InputError(f"direction must be a vector [d_model], got shape {tuple(direction.shape)}.")
        if not torch.isfinite(direction).all():
            raise InputError("the direction holds NaN or infinite values; compute it from finite activations.")
        self.direction, self.layer, self.alpha = direction, layer, number(alpha, "alpha")

    def edits(self, model: Any) -> list[Edit]:
        tower = self._tower(model)
        layer = tower.layer(self.layer)
        if self.direction.shape[0] != tower.d_model:
            raise InputError(
                f"direction has width {self.direction.shape[0]}, but tower {self.tower!r}'s "
                f"residual stream has width {tower.d_model}."
            )
        shift = self.alpha * self.direction

        def edit(x: torch.Tensor, call: int) -> torch.Tensor:
            if not self.active(call):
                return x
            positions = self.position_index(x.shape[-2], call)
            delta = shift.to(device=x.device, dtype=x.dtype)
            if positions is None:
                return x + delta
            x = x.clone()
            x[..., positions.to(x.device), :] += delta
            return x

        return [Edit(Site(layer, "resid", self.tower), edit)]

    def random_like(self, model: Any, seed: int, rng: np.random.Generator) -> Add:
        control = copy.copy(self)
        noise = torch.from_numpy(rng.standard_normal(self.direction.shape[0])).float()
        control.direction = noise / noise.norm() * self.direction.norm()
        return control

    def __repr__(self) -> str:
        return f"Add(layer={self.layer}, alpha={self.alpha}, tower={self.tower!r}, positions={self.positions!r})"
