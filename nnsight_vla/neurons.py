"""`NeuronCluster`: a named set of FFN neurons, as (layer, neuron) pairs with their top tokens."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import InputError
from .paths import writable_file, writing

#: How a token's leading spaces are shown in text (SentencePiece's word-start marker).
SPACE_MARK = "▁"


def display(label: str) -> str:
    """A token label for one line of text, telling ``" up"`` from ``"up"``.

    Leading spaces (a word-initial token) show as ``▁`` (``"▁up"``, as Llama's pieces are
    written); labels with other whitespace, unprintable characters or a literal ``▁`` show
    as Python literals (``'up '``). Words passed to `ValueVectorTable.find` and `lens.cluster`
    are compared without the spaces, so ``"up"`` still finds both.

    Example:
        >>> [display(t) for t in (" up", "up", "up ", "[action: 0.5]")]
        ['▁up', 'up', "'up '", '[action: 0.5]']
    """
    text = label.lstrip(" ")
    shown = SPACE_MARK * (len(label) - len(text)) + text
    plain = text == text.strip() and text.isprintable() and SPACE_MARK not in text
    return shown if shown and plain else repr(label)


class NeuronCluster:
    """FFN neurons, each a (layer, neuron) pair, optionally with the top tokens of its value vector.

    Flat indices (``layer * d_mlp + neuron``) are the reference repository's keys; `to_yaml` and
    `from_yaml` read and write its intervention dictionaries (``name: {flat: [tokens]}``, or
    ``name: [flat, ...]`` without tokens).

    Args:
        pairs: ``(layer, neuron)`` pairs, non-negative and distinct; their order is kept.
        name: The cluster's name (its key in a YAML dictionary file).
        tokens: One token list per pair (or None).
        d_mlp: FFN width of the model, needed for flat indices.
        description: How the cluster was found (`lens.cluster` says what matched); the first
            line of `describe`. Not part of equality or of the YAML file.

    Example:
        >>> c = NeuronCluster([(21, 6514), (27, 3)], name="up_2", d_mlp=11008)
        >>> c.flat_indices()
        [237682, 297219]
        >>> c.by_layer()
        {21: [6514], 27: [3]}
    """

    def __init__(
        self,
        pairs: Iterable[tuple[int, int]],
        *,
        name: str = "cluster",
        tokens: Iterable[Iterable[str]] | None = None,
        d_mlp: int | None = None,
        description: str | None = None,
    ):
        self.pairs = tuple((_index(p, 0, "layer"), _index(p, 1, "neuron")) for p in pairs)
        twice = sorted(p for p, n in Counter(self.pairs).items() if n > 1)
        if twice:
            raise InputError(
                f"cluster {name!r} lists {twice[:5]} more than once; list each neuron once."
            )
        self.name = str(name)
        self.tokens = (
            None if tokens is None else tuple(tuple(str(t) for t in row) for row in tokens)
        )
        if self.tokens is not None and len(self.tokens) != len(self.pairs):
            raise InputError(
                f"cluster {name!r} has {len(self.pairs)} neurons but {len(self.tokens)} token lists; "
                "give one token list per (layer, neuron) pair, or none."
            )
        if d_mlp is not None and any(n >= d_mlp for _, n in self.pairs):
            bad = [p for p in self.pairs if p[1] >= d_mlp][:5]
            raise InputError(f"neurons {bad} are out of range for d_mlp={d_mlp} (0..{d_mlp - 1}).")
        self.d_mlp = d_mlp
        self.description = description

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.pairs)

    def __contains__(self, pair: object) -> bool:
        return pair in self.pairs

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronCluster):
            return NotImplemented
        return (self.name, self.pairs, self.tokens) == (other.name, other.pairs, other.tokens)

    def __repr__(self) -> str:
        shown = ", ".join(f"[{layer}.{neuron}]" for layer, neuron in self.pairs[:8])
        more = f", ... ({len(self)} neurons)" if len(self) > 8 else ""
        return f"NeuronCluster({self.name!r}: {shown}{more})"

    def by_layer(self) -> dict[int, list[int]]:
        """Neuron ids grouped by layer, layers ascending (the shape a steering loop wants)."""
        out: dict[int, list[int]] = {}
        for layer, neuron in sorted(self.pairs):
            out.setdefault(layer, []).append(neuron)
        return out

    def random_like(self, seed: int, d_mlp: int | None = None) -> "NeuronCluster":
        """A control cluster: as many neurons per layer, drawn at random from the others.

        Example:
            >>> up.random_like(0).by_layer().keys() == up.by_layer().keys()
            True
        """
        import numpy as np

        d_mlp = self._d_mlp(d_mlp)
        rng = np.random.default_rng(seed)
        pairs = []
        for layer, neurons in self.by_layer().items():
            free = np.setdiff1d(np.arange(d_mlp), neurons)
            if len(free) < len(neurons):
                raise InputError(
                    f"layer {layer} has {d_mlp - len(free)} of {d_mlp} neurons in the cluster; "
                    "too few are left to draw a control of the same size."
                )
            pairs += [(layer, int(n)) for n in rng.choice(free, size=len(neurons), replace=False)]
        return NeuronCluster(pairs, name=f"{self.name}_random{seed}", d_mlp=d_mlp)

    def flat_indices(self, d_mlp: int | None = None) -> list[int]:
        """``layer * d_mlp + neuron`` for every pair, in order."""
        d_mlp = self._d_mlp(d_mlp)
        return [layer * d_mlp + neuron for layer, neuron in self.pairs]

    def describe(self) -> str:
        """The `description` (when set), then one line per neuron.

        Each line reads ``[layer.neuron] ▁up, Up, ...`` (tokens as `display` shows them).
        """
        rows = self.tokens or [()] * len(self)
        lines = [
            f"[{layer}.{neuron}] {', '.join(display(t) for t in row)}".rstrip()
            for (layer, neuron), row in zip(self.pairs, rows)
        ]
        return "\n".join(([self.description] if self.description else []) + lines)

    def _d_mlp(self, d_mlp: int | None) -> int:
        d_mlp = d_mlp or self.d_mlp
        if not d_mlp:
            raise InputError(
                f"cluster {self.name!r} does not know the model's FFN width; pass d_mlp= "
                "(model.spec.d_mlp) to turn (layer, neuron) pairs into flat indices."
            )
        return d_mlp

    # -- YAML ---------------------------------------------------------------------------

    def to_yaml(self, path: str | Path, *, d_mlp: int | None = None) -> Path:
        """Write (or replace) this cluster under its name in a YAML dictionary file.

        Other clusters already in the file are kept, so one file can hold several.
        """
        import yaml

        d_mlp = self._d_mlp(d_mlp)
        path = writable_file(path, "cluster file")
        entries = _read_yaml(path) if path.exists() else {}
        rows = self.tokens or [None] * len(self)
        flat = self.flat_indices(d_mlp)
        if self.tokens is None:
            entries[self.name] = flat
        else:
            entries[self.name] = {index: list(row) for index, row in zip(flat, rows)}
        text = yaml.safe_dump(entries, allow_unicode=True, sort_keys=False, width=1000)
        with writing(path, "cluster file"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def from_yaml(
        cls, path: str | Path, name: str, *, d_mlp: int, n_layers: int | None = None
    ) -> NeuronCluster:
        """Read cluster ``name`` from a YAML dictionary file (flat index -> tokens, or a list).

        ``n_layers`` (``model.spec.n_layers``) makes flat indices beyond the model an error.

        Example:
            >>> up = NeuronCluster.from_yaml("dictionaries.yaml", "up_10", d_mlp=11008, n_layers=32)
        """
        entries = _read_yaml(Path(path))
        if name not in entries:
            raise InputError(f"{path} has no cluster {name!r}; it has {sorted(entries)}.")
        entry = entries[name] or {}
        if isinstance(entry, dict):
            flat, tokens = list(entry), [list(v or []) for v in entry.values()]
        elif isinstance(entry, list):
            flat, tokens = entry, None
        else:
            raise InputError(
                f"{path}: cluster {name!r} is a {type(entry).__name__}; write it as a mapping "
                "flat index -> token list, or as a list of flat indices."
            )
        limit = None if n_layers is None else n_layers * d_mlp
        bad = [
            i for i in flat if not isinstance(i, int) or i < 0 or (limit is not None and i >= limit)
        ]
        if bad:
            bound = (
                f"0..{limit - 1} ({n_layers} layers x {d_mlp} neurons)" if limit else "non-negative"
            )
            raise InputError(
                f"{path}: cluster {name!r} has flat indices {bad[:5]} outside this model's range "
                f"{bound}; the file was written for another model (check d_mlp and n_layers)."
            )
        pairs = [divmod(i, d_mlp) for i in flat]
        return cls(pairs, name=name, tokens=tokens, d_mlp=d_mlp)


def _index(pair: tuple, i: int, what: str) -> int:
    try:
        value = pair[i]
        ok = len(pair) == 2 and int(value) == value and value >= 0
    except (TypeError, ValueError, IndexError):
        ok = False
    if not ok:
        raise InputError(f"{pair!r} is not a (layer, neuron) pair of non-negative ints ({what}).")
    return int(value)


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        entries = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise InputError(
            f"{path} does not exist; write clusters with NeuronCluster.to_yaml."
        ) from err
    except yaml.YAMLError as err:
        raise InputError(f"{path} is not valid YAML ({err}).") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {path} as a YAML cluster file ({err}); pass the .yaml file.") from err
    if entries is None:
        return {}
    if not isinstance(entries, dict):
        raise InputError(f"{path} holds a {type(entries).__name__}, not a mapping name -> cluster.")
    return entries
