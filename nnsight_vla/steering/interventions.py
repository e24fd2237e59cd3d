"""Interventions: what to change (clamp, scale, ablate FFN neurons; add a direction) and where."""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..neurons import NeuronCluster
from ..schedule import Calls, Positions
from ..sites import Site
from ..towers import Tower, get_tower
from .directions import mean_activations
from ..edits import Edit, EditFn, apply

def number(value: Any, what: str) -> float:
    """``value`` as a finite float; strings, booleans, NaN and infinities are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{what} must be a number, got {value!r} ({type(value).__name__}).")
    if not np.isfinite(value):
        raise InputError(f"{what} must be finite, got {value!r}.")
    return float(value)


#: An edit's change of the activations it selects, ``[..., positions, width] -> same shape``.
Change = Callable[[torch.Tensor], torch.Tensor]


class Intervention:
    """Where and when an intervention acts, shared by every kind.

    Both are given in the vocabulary of `nnsight_vla.schedule` that `collect` reads with too.

    Args:
        positions: ``"all"`` token positions, ``"prefix"`` (the observation's tokens: the
            prefill call only), ``"last"``, or indices along each call's sequence axis
            (`Positions`; ``"mean"`` is for reading only).
        calls: ``"all"`` forward calls of the site in a prediction, ``"prefill"`` (the first
            only: the paper's rule for autoregressive decoding), ``"actions"`` (those that emit
            actions), call indices or a slice (`Calls`).
        steps: On a tower run once per denoising step (Pi0's expert), its name for ``calls``.
        tower: ``"vlm"`` (the language model) or another tower of the model (``"expert"``).
    """

    def __init__(self, *, positions: Any = "all", calls: Any = "all", steps: Any = "all", tower: str = "vlm"):
        self._positions, self._calls = Positions.parse(positions), Calls.parse(calls)
        self._steps = Calls.parse(steps, "steps")
        if self._positions.chosen == "mean":
            raise InputError("positions='mean' averages positions when reading; an intervention writes at "
                             "positions: use 'all', 'last', 'prefix' or indices.")
        if self._calls.chosen != "all" and self._steps.chosen != "all":
            raise InputError(f"calls={calls!r} and steps={steps!r}: steps= is the name of calls= on a denoising "
                             "tower; give one of them.")
        # as given: descriptions of a steering (an evaluation's run.json) record these
        self.positions, self.calls, self.steps = self._positions.chosen, self._calls.chosen, self._steps.chosen
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

    def _when(self, model: Any) -> tuple[Tower, frozenset[int] | None]:
        """The tower, and the forwards of it this intervention acts on (None: every one)."""
        tower = get_tower(model, self.tower)
        schedule = model.schedule()[tower.name]
        if self.steps != "all" and not schedule.denoising:
            raise InputError(
                f"steps= selects denoising steps of a tower run once per step (Pi0's 'expert'); "
                f"tower {self.tower!r} of {model.spec.family} has none: use calls= instead."
            )
        if schedule.denoising and (self.calls == "prefill" or self.positions == "prefix"):
            raise InputError(
                f"tower {self.tower!r} reads no observation prefix and has no prefill call; "
                "use positions='all'/'last'/indices and steps=."
            )
        what, chosen = ("steps", self._steps) if self.steps != "all" else ("calls", self._calls)
        calls = chosen.resolve(schedule, what)
        runs = schedule.forwards
        late = [c for c in calls if c >= runs] if calls is not None and runs is not None else []
        if late:
            raise InputError(
                f"{what}={list(calls)}: tower {tower.name!r} runs {runs} time(s) per prediction "
                f"(0..{runs - 1}), so {late} would never be steered."
            )
        return tower, None if calls is None else frozenset(calls)

    # -- when and where -----------------------------------------------------------------

    def _change(self, calls: frozenset[int] | None, x: torch.Tensor, call: int, change: Change) -> torch.Tensor:
        """``x`` with ``change`` applied at this intervention's positions of forward ``call``.

        ``x`` itself when ``call`` is not one of ``calls``, or no position is chosen.
        """
        if calls is not None and call not in calls:
            return x
        index = self._positions.index(x.shape[-2], call)
        if index is None:
            return change(x)
        if not len(index):
            return x
        pos = index.to(x.device)
        x = x.clone()
        x[..., pos, :] = change(x[..., pos, :])
        return x


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
        """After `prepare`, one edit per layer of the cluster, on its ``"neurons"`` site.

        Neurons past the tower's ``d_mlp`` are refused.
        """
        tower, calls = self._when(model)
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
            out.append(Edit(site, self._edit_fn(layer, torch.tensor(neurons), calls)))
        return out

    def random_like(self, model: Any, seed: int, rng: np.random.Generator) -> NeuronIntervention:
        """A copy on a random cluster of the same shape, drawn from ``seed``; means are cleared."""
        control = copy.copy(self)
        control.cluster = self.cluster.random_like(seed, d_mlp=get_tower(model, self.tower).d_mlp)
        if hasattr(control, "means"):
            control.means = {}
        return control

    def _edit_fn(self, layer: int, neurons: torch.Tensor, calls: frozenset[int] | None) -> EditFn:
        def change(x: torch.Tensor) -> torch.Tensor:
            idx = neurons.to(x.device)
            x = x.clone()
            x[..., idx] = self.new_values(x[..., idx], layer, idx).to(x.dtype)
            return x

        def edit(x: torch.Tensor, call: int) -> torch.Tensor:
            if self.fill is not None and self.positions == "all" and (calls is None or call in calls):
                return x.index_fill(-1, neurons.to(x.device), self.fill)  # one op, out of place: Clamp's common case
            return self._change(calls, x, call, change)

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
        """The clamp ``value``, which every chosen activation becomes."""
        return self.value

    def new_values(self, selected, layer, neurons):
        """``value`` for every selected activation."""
        return torch.full_like(selected, self.value)


class Scale(NeuronIntervention):
    """Multiply the chosen neurons' activations by ``factor``."""

    def __init__(self, cluster, factor: float, **where: Any):
        super().__init__(cluster, **where)
        self.factor = number(factor, "the scale factor")

    def new_values(self, selected, layer, neurons):
        """The selected activations times ``factor``."""
        return selected * self.factor


class Ablate(NeuronIntervention):
    """Replace the chosen neurons' activations by zero, or by their mean over ``reference``.

    The mean is over the ``reference`` observations: every position and forward call of the
    site.
    """

    def __init__(self, cluster, mode: str = "zero", reference: Sequence[Any] | None = None, **where: Any):
        super().__init__(cluster, **where)
        if mode not in ("zero", "mean"):
            raise InputError(f"mode={mode!r} is not 'zero' or 'mean'.")
        if mode == "mean" and not reference:
            raise InputError("mode='mean' needs reference= observations to average over.")
        self.mode, self.reference = mode, reference
        self.means: dict[int, torch.Tensor] = {}

    def prepare(self, model: Any) -> None:
        """With ``mode="mean"``, average the chosen neurons over ``reference`` (once)."""
        if self.mode == "mean" and not self.means:
            self.means = mean_activations(model, self.reference, self.cluster.by_layer(), self.tower)

    def new_values(self, selected, layer, neurons):
        """Zeros, or the chosen neurons' means over ``reference`` (``mode="mean"``)."""
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
        """One edit adding ``alpha * direction`` on the ``"resid"`` site of ``layer``.

        A direction whose width is not the tower's ``d_model`` is refused.
        """
        tower, calls = self._when(model)
        layer = tower.layer(self.layer)
        if self.direction.shape[0] != tower.d_model:
            raise InputError(
                f"direction has width {self.direction.shape[0]}, but tower {self.tower!r}'s "
                f"residual stream has width {tower.d_model}."
            )
        shift = self.alpha * self.direction

        def edit(x: torch.Tensor, call: int) -> torch.Tensor:
            delta = shift.to(device=x.device, dtype=x.dtype)
            return self._change(calls, x, call, lambda selected: selected + delta)

        return [Edit(Site(layer, "resid", self.tower), edit)]

    def random_like(self, model: Any, seed: int, rng: np.random.Generator) -> Add:
        """A copy whose direction is random, drawn from ``rng``, with the same norm."""
        control = copy.copy(self)
        noise = torch.from_numpy(rng.standard_normal(self.direction.shape[0])).float()
        control.direction = noise / noise.norm() * self.direction.norm()
        return control

    def __repr__(self) -> str:
        return f"Add(layer={self.layer}, alpha={self.alpha}, tower={self.tower!r}, positions={self.positions!r})"
