"""Interventions: what to change (clamp, scale, ablate FFN neurons; add a direction) and where."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import InputError, LayerIndexError
from ..neurons import NeuronCluster

POSITIONS = ("all", "prefix", "last")
CALLS = ("all", "prefill")

#: ``(activation, call) -> activation``: one intervention's effect on one site.
EditFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Edit:
    """One intervention bound to one site of one model: ``tower.layers[layer]`` and either
    its FFN activations (``site="neurons"``, the input of ``mlp.down_proj``) or its output
    (``site="resid"``, the residual stream after the layer)."""

    tower: str
    layer: int
    site: str
    fn: EditFn


def _choice(value: Any, allowed: Sequence[str], what: str) -> Any:
    if isinstance(value, str):
        if value not in allowed:
            raise InputError(f"{what}={value!r} is not one of {list(allowed)} or a list of ints.")
        return value
    try:
        items = tuple(int(v) for v in value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what}={value!r} is not one of {list(allowed)} or a list of ints.") from err
    if not items:
        raise InputError(f"{what}={value!r} is empty; give at least one index or {list(allowed)}.")
    return items


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
        self.positions = _choice(positions, POSITIONS, "positions")
        self.calls = _choice(calls, CALLS, "calls")
        self.steps = _choice(steps, ("all",), "steps")
        self.tower = str(tower)

    def apply(self, model: Any, step: int = 0) -> None:
        """Apply inside an nnsight trace at its current ``step`` (see `steering.apply`)."""
        from .runtime import apply

        apply(model, self, step)

    # -- binding ------------------------------------------------------------------------

    def edits(self, model: Any) -> list[Edit]:
        """This intervention's edits on ``model`` (checks it fits the model)."""
        raise NotImplementedError

    def _tower(self, model: Any):
        towers = model.towers()
        if self.tower not in towers:
            raise InputError(f"{type(model).__name__} has no tower {self.tower!r}; use one of {list(towers)}.")
        tower = towers[self.tower]
        runs_once = tower.runs == 1
        if self.steps != "all" and (runs_once or model.spec.expert is None):
            raise InputError(
                f"steps= selects denoising steps of a tower run once per step (Pi0's 'expert'); "
                f"tower {self.tower!r} of {model.spec.family} has none: use calls= instead."
            )
        if self.tower != "vlm" and (self.calls == "prefill" or self.positions == "prefix"):
            raise InputError(
                f"tower {self.tower!r} reads no observation prefix and has no prefill call; "
                "use positions='all'/'last'/indices and steps=."
            )
        return tower

    @staticmethod
    def _layer(tower: Any, layer: int) -> int:
        n = len(tower.layers)
        if not isinstance(layer, int) or not -n <= layer < n:
            raise LayerIndexError(
                f"layer {layer} is out of range: tower {tower.name!r} has {n} layers (0..{n - 1})."
            )
        return layer % n

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
        d_mlp = tower.layers[0].mlp.down_proj._module.in_features
        self.prepare(model)
        out = []
        for layer, neurons in self.cluster.by_layer().items():
            layer = self._layer(tower, layer)
            bad = [n for n in neurons if n >= d_mlp]
            if bad:
                raise InputError(
                    f"neurons {bad[:5]} of layer {layer} are out of range: tower {self.tower!r} "
                    f"has d_mlp={d_mlp} (0..{d_mlp - 1})."
                )
            out.append(Edit(self.tower, layer, "neurons", self._edit_fn(layer, torch.tensor(neurons))))
        return out

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
        self.value = float(value)

    @property
    def fill(self) -> float:
        return self.value

    def new_values(self, selected, layer, neurons):
        return torch.full_like(selected, self.value)


class Scale(NeuronIntervention):
    """Multiply the chosen neurons' activations by ``factor``."""

    def __init__(self, cluster, factor: float, **where: Any):
        super().__init__(cluster, **where)
        self.factor = float(factor)

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
            from .directions import mean_activations

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
        self.direction, self.layer, self.alpha = direction, layer, float(alpha)

    def edits(self, model: Any) -> list[Edit]:
        tower = self._tower(model)
        layer = self._layer(tower, self.layer)
        width = tower.layers[layer].mlp.down_proj._module.out_features
        if self.direction.shape[0] != width:
            raise InputError(
                f"direction has width {self.direction.shape[0]}, but tower {self.tower!r}'s "
                f"residual stream has width {width}."
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

        return [Edit(self.tower, layer, "resid", edit)]

    def __repr__(self) -> str:
        return f"Add(layer={self.layer}, alpha={self.alpha}, tower={self.tower!r}, positions={self.positions!r})"
