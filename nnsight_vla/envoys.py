"""Envoy subclasses the core uses: range-checked layer lists and sites that cannot change actions."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

from nnsight.intervention.envoy import Envoy

from .errors import InputError
from .towers import check_layer


class InertSiteWarning(UserWarning):
    """Steering or probing a module whose output cannot reach the predicted actions."""


class LayersEnvoy(Envoy):
    """The envoy of a decoder-layer list: indexing out of range raises `LayerIndexError`."""

    def __getitem__(self, key: Any) -> Envoy:
        if not isinstance(key, slice):
            check_layer(key, len(self), self.path)
        return super().__getitem__(key)


class InertEnvoy(Envoy):
    """A module that cannot change the actions: reading or writing its values warns.

    A family marks such modules through `VLA.inert_paths` (e.g. Pi0's last VLM layer's
    MLP, whose output no action-expert layer reads).
    """

    watched: ClassVar[frozenset[str]] = frozenset({"output", "input", "inputs", "skip", "source"})

    def _warn_inert(self) -> None:
        warnings.warn(
            f"{self.path} cannot change the predicted actions: nothing on the path to the "
            "action head reads it (see the family's docs), so steering it does nothing and "
            "probing it says nothing about actions. Use an earlier layer.",
            InertSiteWarning,
            stacklevel=3,
        )

    def __getattribute__(self, name: str) -> Any:
        if name in type(self).watched:
            self._warn_inert()
        return super().__getattribute__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self).watched:
            self._warn_inert()
        super().__setattr__(name, value)


class InertOutputEnvoy(InertEnvoy):
    """A module whose output cannot change the actions, though its inputs feed modules that can."""

    watched = frozenset({"output"})


class IdleEnvoy(Envoy):
    """A module that never runs in a prediction (Pi0's ``lm_head``).

    Reading or writing its values in a trace raises `InputError` instead of nnsight's
    out-of-order error.
    """

    def _refuse(self, name: str) -> None:
        raise InputError(
            f"{self.path} never runs in this model's predictions, so its .{name} never exists; "
            "read a module that runs (see the family's docs: what fires per prediction)."
        )

    def __getattribute__(self, name: str) -> Any:
        if name in InertEnvoy.watched:
            Envoy.__getattribute__(self, "_refuse")(name)
        return super().__getattribute__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in InertEnvoy.watched:
            self._refuse(name)
        super().__setattr__(name, value)
