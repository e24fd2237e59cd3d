"""Scoped, locked replacement of lerobot module attributes (sizes, tokenizers) while a policy is built."""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
from types import ModuleType
from typing import Any, Iterator, Mapping

from .kind import PolicyKind

_lock = threading.RLock()


@contextlib.contextmanager
def replaced(module: ModuleType, replacements: Mapping[str, Any]) -> Iterator[None]:
    """Within the block, ``module.<name>`` is ``replacements[name]``.

    The originals come back after it, exceptions included. One block runs at a time in the process.

    Example:
        >>> with replaced(math, {"pi": 3.0}):
        ...     math.pi
        3.0
    """
    with _lock:
        originals = {name: getattr(module, name) for name in replacements}
        for name, value in replacements.items():
            setattr(module, name, value)
        try:
            yield
        finally:
            for name, value in originals.items():
                setattr(module, name, value)


class Given:
    """Stands in for a transformers ``Auto*`` class inside `replaced`.

    Its ``from_pretrained`` returns ``value`` (a deep copy of it with ``fresh``, for values the
    caller may change).
    """

    def __init__(self, value: Any, fresh: bool = False):
        self.value, self.fresh = value, fresh

    def from_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        """``value``, or a deep copy of it with ``fresh``, whatever the arguments."""
        return copy.deepcopy(self.value) if self.fresh else self.value


@contextlib.contextmanager
def local_tokenizer(kind: PolicyKind, tokenizer: Any) -> Iterator[None]:
    """Within the block, ``kind``'s processor factory uses ``tokenizer``.

    It does so instead of fetching its tokenizer by name from the Hub.
    """
    with _lock:
        step = functools.partial(kind.processing.TokenizerProcessorStep, tokenizer=tokenizer)
        with replaced(kind.processing, {"TokenizerProcessorStep": step}):
            yield
