"""`logit_lens`: each layer's residual stream at chosen positions, projected onto the vocabulary."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..collect import collect
from ..errors import InputError
from ..observation import Observation
from ..plotting import figure, save_png
from ..sites import Site
from ..towers import get_tower
from .labels import ensure_dispatched, token_labels
from .table import display


@dataclass(eq=False)
class LogitLensReading:
    """What `logit_lens` read: ``logits[row, i]`` is layer ``layers[i]``'s residual at row ``rows[row]``.

    Rows are the positions that emit the action tokens (``"action 0"``, ...; one forward pass
    each) or the positions asked for (``"position -1"``, ...).

    Example:
        >>> lens = logit_lens(model, obs)
        >>> lens.top_tokens(layer=20, row=0)
        >>> lens.action_distribution().shape    # [action dims, layers, action tokens]
        (7, 30, 256)
    """

    logits: torch.Tensor
    layers: tuple[int, ...]
    rows: list[str]
    vocab: list[str]
    action_token_ids: range | None = None
    info: dict = field(default_factory=dict)

    def _layer(self, layer: int) -> int:
        if layer not in self.layers:
            raise InputError(
                f"layer {layer} was not read; this lens holds layers {list(self.layers)}."
            )
        return self.layers.index(layer)

    def top_tokens(self, layer: int, row: int = 0, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` likeliest tokens and their probabilities at one layer and row."""
        if not -len(self.rows) <= row < len(self.rows):
            raise InputError(f"row {row} is out of range: the lens has rows {self.rows}.")
        probs = self.logits[row, self._layer(layer)].softmax(-1)
        best = probs.topk(min(k, probs.numel()))
        return [
            (self.vocab[i], float(p)) for i, p in zip(best.indices.tolist(), best.values.tolist())
        ]

    def action_labels(self) -> list[str]:
        """Labels of the action tokens, in id order (the columns of `action_distribution`)."""
        return [self.vocab[i] for i in self._action_ids()]

    def _action_ids(self) -> range:
        if self.action_token_ids is None:
            raise InputError("this model has no action tokens; read top_tokens instead.")
        return self.action_token_ids

    def action_distribution(self) -> np.ndarray:
        """``[rows, layers, action tokens]``: softmax over the action tokens' logits alone."""
        ids = self._action_ids()
        return self.logits[..., ids.start : ids.stop].softmax(-1).numpy()

    def describe(self, k: int = 3) -> str:
        """A text report: per row and layer, the top tokens and the likeliest action token."""
        lines = []
        actions = None if self.action_token_ids is None else self.action_distribution()
        for r, name in enumerate(self.rows):
            lines.append(f"{name}:")
            for i, layer in enumerate(self.layers):
                top = ", ".join(f"{display(t)} {p:.2f}" for t, p in self.top_tokens(layer, r, k))
                line = f"  [{layer}] {top}"
                if actions is not None:
                    best = int(actions[r, i].argmax())
                    line += f"   | {self.action_labels()[best]} {actions[r, i, best]:.2f}"
                lines.append(line)
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """PNG: per row, the action-token distribution by layer (or top-1 probability by layer)."""
        if self.action_token_ids is None:
            fig = figure(6, 3.5)
            ax = fig.subplots()
            top1 = self.logits.softmax(-1).max(-1).values.numpy()
            for r, name in enumerate(self.rows):
                ax.plot(self.layers, top1[r], marker="o", label=name)
            ax.set(xlabel="layer", ylabel="top-1 probability")
            ax.legend(fontsize=7)
            return save_png(fig, path)
        dist, labels = self.action_distribution(), self.action_labels()
        cols = min(4, len(self.rows))
        grid = -(-len(self.rows) // cols)
        fig = figure(3.2 * cols, 3.2 * grid)
        axes = np.atleast_1d(fig.subplots(grid, cols, squeeze=False)).ravel()
        ticks = np.linspace(0, len(labels) - 1, 5).astype(int)
        for r, ax in enumerate(axes):
            if r >= len(self.rows):
                ax.axis("off")
                continue
            ax.imshow(
                dist[r], aspect="auto", origin="lower", cmap="viridis", interpolation="nearest"
            )
            ax.set_title(f"{self.rows[r]}: P(action token) by layer", fontsize=8)
            ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=45, ha="right", fontsize=6)
            ax.set_yticks(range(len(self.layers)), [str(x) for x in self.layers], fontsize=5)
            ax.set_ylabel("layer", fontsize=7)
        return save_png(fig, path)


def logit_lens(
    model: Any,
    obs: Observation,
    positions: Iterable[int] | None = None,
    norm: bool = True,
    *,
    layers: Iterable[int] | None = None,
    tower: str | None = None,
) -> LogitLensReading:
    """Project each layer's residual stream for one observation onto the vocabulary.

    Args:
        model: A loaded `nnsight_vla.VLA`.
        obs: One observation.
        positions: Sequence positions of one forward pass (negative from the end; the image
            patches count). Default: for models with action tokens, the position that emits
            each action token, one ``predict_action`` step per action dimension; otherwise
            the last position.
        norm: Apply the tower's final norm before unembedding (the usual logit lens).
        layers: Which layers (default: all).
        tower: Which of ``model.towers()`` (default ``"vlm"``).

    Example:
        >>> lens = logit_lens(model, obs)
        >>> print(lens.describe())
        >>> lens.plot("logit_lens.png")
    """
    if not isinstance(obs, Observation):
        raise InputError(f"logit_lens reads one nnsight_vla.Observation, got {type(obs).__name__}.")
    ensure_dispatched(model)
    tw = get_tower(model, tower)
    chosen = sorted(tw.layer_indices(layers))  # read in execution order
    sites = [Site(layer, "resid", tw.name) for layer in chosen]
    if positions is None and model.spec.action_token_ids is not None:
        acts = collect(model, obs, sites, calls="actions", positions="last")
        states = torch.stack([acts[s][0, :, 0] for s in sites], dim=1)  # [calls, layers, d_model]
        rows = [f"action {i}" for i in range(len(states))]
    else:
        wanted = [-1] if positions is None else list(positions)
        if not wanted or not all(isinstance(p, int) for p in wanted):
            raise InputError(f"positions {wanted} must be ints, at least one.")
        acts = collect(model, obs, sites, calls="prefill", positions=wanted)
        states = torch.stack([acts[s][0, 0] for s in sites], dim=1)  # [positions, layers, d_model]
        rows = [f"position {p}" for p in wanted]
    logits = read_out(model, states, norm, tw.name)
    vocab = logits.shape[-1]
    actions = model.spec.action_token_ids if vocab == model.spec.vocab_size else None
    info = {"model": getattr(model, "name_or_path", ""), "tower": tw.name, "norm": bool(norm)}
    return LogitLensReading(logits, tuple(chosen), rows, token_labels(model, vocab), actions, info)


def read_out(model: Any, states: Any, norm: bool = True, tower: str | None = None) -> torch.Tensor:
    """Residual states ``[..., d_model]`` read out onto the tower's vocabulary.

    The states (a tensor or array) pass through the tower's final norm (``norm=True``) and
    its unembedding: float32 logits ``[..., vocab]`` on the CPU.

    Example:
        >>> read_out(model, residual).argmax(-1)   # the tokens each state reads as
    """
    tw = get_tower(model, tower)
    weight = tw.unembedding()
    with torch.no_grad():
        x = torch.as_tensor(states).to(device=weight.device, dtype=weight.dtype)
        if norm:
            x = tw.final_norm()(x)
        return (x @ weight.T).float().cpu()
