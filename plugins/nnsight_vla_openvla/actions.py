"""OpenVLA's action tokens: 256 bins over [-1, 1], ids counting down from the vocabulary end."""

from __future__ import annotations

from typing import Any

import numpy as np

from nnsight_vla.family import InputError


class ActionTokenizer:
    """Maps normalised actions in [-1, 1] to token ids and back (bin centres).

    ``id = vocab_size - bin`` with ``bin = digitize(a, linspace(-1, 1, n_bins))``; decoding
    returns the centre of the bin. ``vocab_size`` is the size before padding (32000 for
    Llama-2), so the action ids are ``vocab_size - n_bins .. vocab_size - 1``.

    Example:
        >>> tok = ActionTokenizer(32000)
        >>> tok.encode(np.array([0.0]))
        array([31872])
        >>> round(float(tok.decode(np.array([31872]))[0]), 6)
        0.0
    """

    def __init__(self, vocab_size: int, n_bins: int = 256):
        self.vocab_size = vocab_size
        self.n_bins = n_bins
        self.bins = np.linspace(-1.0, 1.0, n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def token_ids(self) -> range:
        """The ids that encode actions."""
        return range(self.vocab_size - self.n_bins, self.vocab_size)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Token ids for normalised actions (clipped to [-1, 1])."""
        bins = np.digitize(np.clip(actions, -1.0, 1.0), self.bins)
        return self.vocab_size - bins

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """Normalised actions (bin centres) for token ids; non-action ids clip to the edge bins."""
        index = np.clip(self.vocab_size - np.asarray(token_ids) - 1, 0, self.n_bins - 2)
        return self.bin_centers[index]


def select_stats(norm_stats: dict[str, Any], unnorm_key: str | None) -> tuple[str, dict]:
    """The action statistics for ``unnorm_key`` (optional when there is one dataset)."""
    keys = sorted(norm_stats)
    if unnorm_key is None:
        if len(keys) != 1:
            raise InputError(
                f"this checkpoint holds statistics for {len(keys)} datasets; pass unnorm_key= "
                f"one of {keys}."
            )
        unnorm_key = keys[0]
    if unnorm_key not in norm_stats:
        raise InputError(f"unnorm_key {unnorm_key!r} is not in this checkpoint; use one of {keys}.")
    return unnorm_key, norm_stats[unnorm_key]["action"]


def unnormalize(actions: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Map [-1, 1] actions to the dataset's range with its q01/q99 (dims outside the mask pass)."""
    q01, q99 = np.asarray(stats["q01"]), np.asarray(stats["q99"])
    mask = np.asarray(stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
    return np.where(mask, 0.5 * (actions + 1.0) * (q99 - q01) + q01, actions)


def normalize(actions: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """The inverse of `unnormalize`: the dataset's q01/q99 range to [-1, 1] (masked dims pass)."""
    q01, q99 = np.asarray(stats["q01"]), np.asarray(stats["q99"])
    mask = np.asarray(stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
    return np.where(mask, 2.0 * (actions - q01) / np.where(q99 > q01, q99 - q01, 1.0) - 1.0, actions)
