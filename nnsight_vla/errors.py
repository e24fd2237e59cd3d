"""Exception types: every error nnsight-vla raises derives from `VLAError`."""

from __future__ import annotations


class VLAError(Exception):
    """Base class of every error this project raises; the message names the fix."""


class InputError(VLAError, ValueError):
    """An observation, instruction or argument that the model cannot take."""


class CheckpointError(VLAError, OSError):
    """A checkpoint folder that is incomplete or does not match the architecture."""


class UnknownModelError(VLAError, LookupError):
    """A name or path that no registered model family can load."""


class StandardNameError(VLAError, AttributeError):
    """A name the model does not have.

    Either a family's rename map that misses a standard module name, or a fact asked of the
    model that lives on ``model.spec``.
    """


class LayerIndexError(VLAError, IndexError):
    """A layer index outside the model's range."""


class SetupError(VLAError, RuntimeError):
    """A missing package, asset or system library; the message says how to install it."""


class StackError(VLAError, RuntimeError):
    """A local NDIF stack that cannot start, deploy or stop as asked (the message says why)."""
