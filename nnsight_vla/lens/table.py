"""`ValueVectorTable`: the top tokens of every projected FFN value vector, searchable and saved."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, LayerIndexError
from ..neurons import NeuronCluster, display
from ..paths import writable_file, writable_folder, writing

FORMAT = 1
ARRAYS, META, TEXT = "value_vectors.npz", "value_vectors.json", "top_tokens.txt"

#: How `ValueVectorTable.find` compares a word with a token's text (whitespace around both ignored).
MATCH_RULES = {
    "exact": lambda word, text: text == word,
    "nocase": lambda word, text: text.casefold() == word.casefold(),
    "substring": lambda word, text: word in text,
}


@dataclass(eq=False)
class ValueVectorTable:
    """Top-k tokens of FFN value vectors: ``ids[row, neuron, j]`` and ``scores`` for ``layers[row]``.

    Built by `project_value_vectors`; tests and tools may build one by hand.

    Attributes:
        ids: ``[len(layers), d_mlp, k]`` token ids, best first.
        scores: Their projection scores (logits), same shape.
        layers: The model layer of each row of ``ids``.
        vocab: A readable label for every token id.
        action_token_ids: Ids that encode actions, or None.
        n_layers: Layers of the model (flat indices and ranges refer to it).
        info: Provenance: model, tower, norm, unembedding.
        embeddings: The ``[vocab, d_model]`` unembedding the vectors were projected on, in
            float16 (for `cluster`), or None.

    Example:
        >>> table = project_value_vectors(model, top_k=10)
        >>> table.top_tokens(21, 6514)
        ['up', 'Up', '[action: -0.227]', ...]
        >>> table.find("up", match="nocase")
        NeuronCluster('up': [3.17], [21.6514], ...)
    """

    ids: np.ndarray
    scores: np.ndarray
    layers: tuple[int, ...]
    vocab: list[str]
    action_token_ids: range | None = None
    n_layers: int | None = None
    info: dict = field(default_factory=dict)
    embeddings: np.ndarray | None = None
    _norms: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int32)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.layers = tuple(int(layer) for layer in self.layers)
        self.vocab = list(self.vocab)
        if self.ids.ndim != 3 or self.ids.shape != self.scores.shape:
            raise InputError(
                f"ids {self.ids.shape} and scores {self.scores.shape} must share one shape "
                "[layers, d_mlp, k]."
            )
        if len(self.layers) != self.ids.shape[0] or len(set(self.layers)) != len(self.layers):
            raise InputError(
                f"layers {self.layers} must be distinct, one per row of ids {self.ids.shape}."
            )
        if self.ids.size and not 0 <= self.ids.min() <= self.ids.max() < len(self.vocab):
            raise InputError(f"token ids must lie in 0..{len(self.vocab) - 1} (the vocabulary).")
        self.n_layers = self.n_layers or (max(self.layers) + 1 if self.layers else 0)
        if self.embeddings is not None:
            self.embeddings = np.asarray(self.embeddings, dtype=np.float16)
            if self.embeddings.ndim != 2 or len(self.embeddings) != len(self.vocab):
                raise InputError(
                    f"embeddings {self.embeddings.shape} must be [vocab, d_model] with one row per "
                    f"vocabulary label ({len(self.vocab)})."
                )

    @property
    def d_mlp(self) -> int:
        """Neurons per layer (the second axis of ``ids``)."""
        return self.ids.shape[1]

    @property
    def top_k(self) -> int:
        """Tokens kept per value vector (the last axis of ``ids``)."""
        return self.ids.shape[2]

    def __repr__(self) -> str:
        return (
            f"ValueVectorTable({len(self.layers)} layers x {self.d_mlp} neurons, top {self.top_k} "
            f"of {len(self.vocab)} tokens, {self.info})"
        )

    # -- lookup -------------------------------------------------------------------------

    def row(self, layer: int) -> int:
        """The row of ``ids`` holding model layer ``layer``."""
        if layer not in self.layers:
            raise LayerIndexError(
                f"layer {layer} is not in this table (it holds layers {_ranges(self.layers)}); "
                "project it with project_value_vectors(model, layers=[...])."
            )
        return self.layers.index(layer)

    def _neuron(self, neuron: int) -> int:
        if not 0 <= neuron < self.d_mlp:
            raise InputError(
                f"neuron {neuron} is out of range: layers have {self.d_mlp} (0..{self.d_mlp - 1})."
            )
        return neuron

    def top_ids(self, layer: int, neuron: int) -> list[int]:
        """Token ids of one value vector, best first."""
        return self.ids[self.row(layer), self._neuron(neuron)].tolist()

    def top_tokens(self, layer: int, neuron: int) -> list[str]:
        """Token labels of one value vector, best first."""
        return [self.vocab[i] for i in self.top_ids(layer, neuron)]

    def flat_index(self, layer: int, neuron: int) -> int:
        """``layer * d_mlp + neuron``: the reference repository's neuron key."""
        self.row(layer)
        return layer * self.d_mlp + self._neuron(neuron)

    def token_mask(self, word: str, match: str = "exact") -> np.ndarray:
        """A boolean per vocabulary id: does its text match ``word`` under ``match``?"""
        if match not in MATCH_RULES:
            raise InputError(f"match={match!r} is not a rule; use one of {list(MATCH_RULES)}.")
        word = str(word).strip()
        if not word:
            raise InputError("the word to find is empty; pass a token's text, e.g. 'up'.")
        rule = MATCH_RULES[match]
        mask = np.fromiter((rule(word, text.strip()) for text in self.vocab), bool, len(self.vocab))
        if not mask.any():
            import difflib

            close = difflib.get_close_matches(word, {t.strip() for t in self.vocab}, n=5)
            raise InputError(
                f"no token of this vocabulary matches {word!r} ({match}); close tokens: {close}. "
                "Try match='nocase' or 'substring', or another word."
            )
        return mask

    def find(self, word: str, match: str = "exact", k: int | None = None) -> NeuronCluster:
        """Neurons with a token matching ``word`` among their top ``k`` (default: all) tokens.

        ``match``: ``"exact"`` (the token's text, whitespace around it ignored), ``"nocase"``
        (the same, case-insensitive) or ``"substring"`` (the word inside the token's text).
        """
        k = self._k(k)
        hits = self.token_mask(word, match)[self.ids[..., :k]].any(-1)
        rows, neurons = np.nonzero(hits)
        return self.cluster_of(zip(rows.tolist(), neurons.tolist()), name=str(word).strip())

    def cluster_of(self, rows_and_neurons, name: str) -> NeuronCluster:
        """A `NeuronCluster` of ``(row, neuron)`` positions in this table, with their tokens."""
        pairs, tokens = [], []
        for row, neuron in rows_and_neurons:
            pairs.append((self.layers[row], neuron))
            tokens.append([self.vocab[i] for i in self.ids[row, neuron]])
        return NeuronCluster(pairs, name=name, tokens=tokens, d_mlp=self.d_mlp)

    def _k(self, k: int | None) -> int:
        if k is None:
            return self.top_k
        if not isinstance(k, int) or not 1 <= k <= self.top_k:
            raise InputError(
                f"k={k!r} must be an int in 1..{self.top_k} (the table keeps the top {self.top_k})."
            )
        return k

    # -- text ---------------------------------------------------------------------------

    def lines(self) -> Iterator[str]:
        """One line per neuron: ``[layer.neuron] ▁up, up, Up, [action: 0.25], ...``.

        Tokens appear as `display` shows them: ``▁`` marks a leading space.
        """
        labels = [display(label) for label in self.vocab]
        for row, layer in enumerate(self.layers):
            for neuron, ids in enumerate(self.ids[row].tolist()):
                yield f"[{layer}.{neuron}] " + ", ".join([labels[i] for i in ids])

    def write_text(self, path: str | Path) -> Path:
        """Write `lines` to a text file; returns its path."""
        path = writable_file(path, "text file")
        with writing(path, "text file"):
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as f:
                for line in self.lines():
                    f.write(line + "\n")
        return path

    # -- files --------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write ``value_vectors.npz`` (arrays) and ``value_vectors.json`` (the rest) into ``folder``."""
        folder = writable_folder(folder, "table folder")
        for name in (ARRAYS, META):
            writable_file(folder / name, "table file")
        arrays = {"ids": self.ids, "scores": self.scores}
        if self.embeddings is not None:
            arrays["embeddings"] = self.embeddings
        ids = self.action_token_ids
        meta = {
            "format": FORMAT,
            "layers": list(self.layers),
            "n_layers": self.n_layers,
            "action_token_ids": None if ids is None else [ids.start, ids.stop],
            "info": self.info,
            "vocab": self.vocab,
        }
        with writing(folder, "table folder"):
            folder.mkdir(parents=True, exist_ok=True)
            np.savez(folder / ARRAYS, **arrays)
            (folder / META).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, path: str | Path) -> ValueVectorTable:
        """Read a table written by `save` (the folder, or one of the files `nnsight-vla lens` writes).

        Anything else (a missing path, another folder, a damaged or foreign file) raises
        `InputError` saying what was found and how to write a table.
        """
        path = Path(path).expanduser()
        remedy = "write one with table.save(folder) or `nnsight-vla lens MODEL --out folder`"
        if not path.exists():
            raise InputError(f"{path} does not exist; pass the folder of a saved value-vector table ({remedy}).")
        if path.is_file() and path.name not in (ARRAYS, META, TEXT):
            raise InputError(
                f"{path} is not a value-vector table file; pass the folder that holds {ARRAYS} and {META}."
            )
        folder = path if path.is_dir() else path.parent
        missing = [name for name in (ARRAYS, META) if not (folder / name).is_file()]
        if missing:
            raise InputError(f"{folder} is not a saved value-vector table (missing {missing}); {remedy}.")
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{folder / META} is damaged (not JSON: {err}); {remedy} again.") from err
        if not isinstance(meta, dict) or "format" not in meta:
            raise InputError(
                f"{folder / META} is not a value-vector table's metadata (no 'format' field); {remedy}."
            )
        if meta["format"] != FORMAT:
            raise InputError(
                f"{folder / META} has table format {meta['format']!r}; this version reads format "
                f"{FORMAT}: project the table again with this version."
            )
        absent = [k for k in ("layers", "n_layers", "action_token_ids", "info", "vocab") if k not in meta]
        try:
            with np.load(folder / ARRAYS) as arrays:
                data = {k: arrays[k] for k in arrays.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise InputError(f"{folder / ARRAYS} is damaged ({err}); {remedy} again.") from err
        absent += [k for k in ("ids", "scores") if k not in data]
        if absent:
            raise InputError(f"{folder} is an incomplete value-vector table (no {absent}); {remedy} again.")
        ids = meta["action_token_ids"]
        return cls(
            data["ids"],
            data["scores"],
            tuple(meta["layers"]),
            meta["vocab"],
            action_token_ids=None if ids is None else range(*ids),
            n_layers=meta["n_layers"],
            info=meta["info"],
            embeddings=data.get("embeddings"),
        )


def _ranges(layers: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` -> ``"0-2, 5"``."""
    parts, start = [], None
    ordered = sorted(layers)
    for i, layer in enumerate(ordered):
        start = layer if start is None else start
        if i + 1 == len(ordered) or ordered[i + 1] != layer + 1:
            parts.append(str(start) if start == layer else f"{start}-{layer}")
            start = None
    return ", ".join(parts) or "none"
