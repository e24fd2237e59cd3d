"""When in a prediction: each tower's forwards, and the one vocabulary for choosing them.

`Schedule` holds each tower's forwards. Reading (`collect`) and writing (interventions) use
one vocabulary to choose forwards (`Calls`) and the positions inside each (`Positions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import InputError


@dataclass(frozen=True)
class TowerSchedule:
    """One tower's forwards in a prediction made with default options.

    Attributes:
        tower: Its name (``"vlm"``, ``"expert"``).
        forwards: How many (None: it varies, e.g. decoding that stops at a terminator).
        runs: 1 when it runs once per prediction (Pi0's VLM: at the trace's step 0 only),
            None when it runs at every step.
        actions: The forwards whose last position emits an action (OpenVLA's 7 decoding
            forwards, Pi0's denoising steps), or None when none does.
        denoising: Whether its forwards are denoising steps (``steps=`` names them).
    """

    tower: str
    forwards: int | None
    runs: int | None
    actions: range | None
    denoising: bool

    def runs_at(self, step: int) -> bool:
        """Whether the tower runs at a trace's ``step``."""
        return self.runs is None or step < self.runs


@dataclass(frozen=True)
class Schedule:
    """Every tower's forwards in one prediction (`VLA.schedule`)."""

    towers: dict[str, TowerSchedule]

    def __getitem__(self, tower: str) -> TowerSchedule:
        return self.towers[tower]

    @property
    def steps(self) -> int:
        """Forwards a trace iterates over: those of the tower that runs most often (1 if all vary)."""
        return max((t.forwards for t in self.towers.values() if t.forwards is not None), default=1)


CALL_WORDS = ("all", "prefill", "actions")
POSITION_WORDS = ("all", "last", "mean", "prefix")


def _chosen(value: Any, what: str, words: tuple[str, ...], negative: bool) -> str | tuple[int, ...]:
    """One of ``words``, or indices, as given.

    Indices are one int or a non-empty sequence; negative ones only if ``negative``.
    """
    slices = " or a slice" if what in ("calls", "steps") else ""
    wrong = InputError(f"{what}={value!r} is not one of {list(words)}, an index, a list of indices{slices}.")
    if isinstance(value, str):
        if value not in words:
            raise wrong
        return value
    items = (value,) if isinstance(value, (int, np.integer)) else value
    try:
        items = tuple(items)
    except TypeError as err:
        raise wrong from err
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
        raise wrong
    if not items:
        raise InputError(f"{what}={value!r} is empty; give at least one index or one of {list(words)}.")
    if not negative and min(items) < 0:
        raise InputError(f"{what}={value!r}: indices count from 0 (the first forward of a prediction).")
    return tuple(int(v) for v in items)


@dataclass(frozen=True)
class Calls:
    """Which forwards of a tower: a word, an index, a list of indices or a slice.

    The words are ``"all"``, ``"prefill"`` (the first) and ``"actions"`` (those emitting
    actions, per the family). A slice is written ``slice(0, 3)``; an open end needs a tower
    whose forwards are counted.

    Example:
        >>> Calls.parse("actions").resolve(model.schedule()["vlm"])     # OpenVLA: (0, ..., 6)
    """

    chosen: str | tuple[int, ...] | slice

    @classmethod
    def parse(cls, value: Any, what: str = "calls") -> Calls:
        """The one parser of a calls spelling (a `Calls` is returned as it is)."""
        if isinstance(value, slice):
            parts = (value.start, value.stop, value.step)
            if not all(p is None or (isinstance(p, (int, np.integer)) and not isinstance(p, bool)) for p in parts) \
                    or any(p is not None and p < 0 for p in parts[:2]) or (value.step is not None and value.step < 1):
                raise InputError(f"{what}={value!r}: a slice of calls has non-negative ints and a step >= 1.")
            return cls(value)
        return value if isinstance(value, Calls) else cls(_chosen(value, what, CALL_WORDS, negative=False))

    def resolve(self, tower: TowerSchedule, what: str = "calls") -> tuple[int, ...] | None:
        """The chosen forwards of ``tower``, in order (None: every one)."""
        if self.chosen == "all":
            return None
        if self.chosen == "prefill":
            if tower.denoising:
                raise InputError(f"tower {tower.tower!r} reads no observation prefix and has no prefill call; "
                                 "use calls='all', 'actions', indices or steps=.")
            return (0,)
        if self.chosen == "actions":
            if tower.actions is None:
                raise InputError(f"no forward of tower {tower.tower!r} emits actions; "
                                 f"choose {what}='all', 'prefill' or a list of ints.")
            return tuple(tower.actions)
        if isinstance(self.chosen, slice):
            if self.chosen.stop is None and tower.forwards is None:
                raise InputError(f"{what}={self.chosen!r}: tower {tower.tower!r} makes a varying number of "
                                 "forwards, so give the slice an end.")
            end = tower.forwards if self.chosen.stop is None else self.chosen.stop
            return tuple(range(self.chosen.start or 0, end, self.chosen.step or 1)) or ()
        return tuple(sorted(set(self.chosen)))

    def to_json(self) -> str | list[int] | dict:
        """This spelling as JSON (records and manifests): the word, the indices or the slice."""
        if isinstance(self.chosen, slice):
            return {"slice": [self.chosen.start, self.chosen.stop, self.chosen.step]}
        return self.chosen if isinstance(self.chosen, str) else list(self.chosen)

    def __str__(self) -> str:
        return repr(self.chosen) if isinstance(self.chosen, str) else str(self.chosen)


@dataclass(frozen=True)
class Positions:
    """Which positions of each forward's sequence: a word, an index or a list of indices.

    The words are ``"all"``, ``"last"``, ``"mean"`` (their average: reading only) and
    ``"prefix"`` (the observation's tokens: every position of the prefill, none of later
    forwards). Negative indices count from the end.
    """

    chosen: str | tuple[int, ...]

    @classmethod
    def parse(cls, value: Any, what: str = "positions") -> Positions:
        """The one parser of a positions spelling (a `Positions` is returned as it is)."""
        return value if isinstance(value, Positions) else cls(_chosen(value, what, POSITION_WORDS, negative=True))

    @property
    def from_the_end(self) -> bool:
        """Whether every chosen position counts from the end: ``"last"`` or negative indices.

        Positions counted from the sequence's end agree across padded batch rows (padded at
        the start).
        """
        return self.chosen == "last" or (isinstance(self.chosen, tuple) and all(p < 0 for p in self.chosen))

    def index(self, length: int, call: int) -> torch.Tensor | None:
        """Indices into a forward's ``length`` positions (None: every position; empty: none)."""
        if self.chosen == "all":
            return None
        if self.chosen == "prefix":
            return None if call == 0 else torch.empty(0, dtype=torch.long)
        if self.chosen == "last":
            return torch.tensor([length - 1])
        if self.chosen == "mean":
            raise InputError("positions='mean' averages positions when reading; a write needs positions: "
                             "use 'all', 'last', 'prefix' or indices.")
        bad = [p for p in self.chosen if not -length <= p < length]
        if bad:
            raise InputError(f"positions {bad} are out of range: this observation's sequence has {length} "
                             f"positions at forward {call} (0..{length - 1}, or -1..-{length}); image patches count.")
        return torch.tensor([p % length for p in self.chosen])

    def select(self, x: torch.Tensor, call: int) -> torch.Tensor:
        """``[batch, P, width]`` of a forward's ``[batch, length, width]`` activation."""
        if self.chosen == "mean":
            return x.mean(dim=1, keepdim=True)
        index = self.index(x.shape[1], call)
        return x if index is None else x[:, index.to(x.device)]

    def to_json(self) -> str | list[int]:
        """This spelling as JSON (records and manifests)."""
        return self.chosen if isinstance(self.chosen, str) else list(self.chosen)

    def __str__(self) -> str:
        return repr(self.chosen) if isinstance(self.chosen, str) else str(list(self.chosen))


__all__ = ["CALL_WORDS", "POSITION_WORDS", "Calls", "Positions", "Schedule", "TowerSchedule"]
