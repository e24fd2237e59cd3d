"""`LazyPackage`: the module type of a package whose names are imported on first use (PEP 562)."""

from __future__ import annotations

import types
from typing import Any


class LazyPackage(types.ModuleType):
    """A package that exports a function under its own submodule's name.

    Examples are ``nnsight_vla.collect`` and ``nnsight_vla.eval.evaluate``: importing that
    submodule would set the package's attribute to the module, so the function is kept instead.
    The package lists its names in ``_EXPORTS`` (name -> submodule).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_EXPORTS", {}).get(name) == name and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)
