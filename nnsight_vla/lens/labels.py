"""Token labels for a lens: each id's text, the family's own labels (``[action: 0.25]``) first."""

from __future__ import annotations

from typing import Any

#: SentencePiece's word-start marker in token pieces (Llama, Gemma).
WORD_START = "▁"


def ensure_dispatched(model: Any) -> None:
    """Load the weights of a model built lazily (``dispatch=False``)."""
    if not getattr(model, "dispatched", True):
        model.dispatch()


def token_labels(model: Any, n: int | None = None) -> list[str]:
    """Readable text of token ids ``0..n-1`` (default: the whole vocabulary).

    Each token is decoded on its own, keeping the space that starts a word (``" up"``, also
    for SentencePiece tokenizers whose decoder drops it, so ``"▁up"`` and ``"up"`` stay
    apart); the family's own labels win where it has them (OpenVLA's ``[action: 0.250]``);
    ids the tokenizer lacks (padding rows) read ``<unused ID>``.

    Example:
        >>> token_labels(model)[model.tokenizer.convert_tokens_to_ids("▁up")]
        ' up'
    """
    n = model.spec.vocab_size if n is None else n
    ids = list(range(n))
    tokenizer = model.tokenizer
    family = model.token_strings(ids)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    texts = _decode_each(tokenizer, ids)
    out = []
    for i, label, piece, text in zip(ids, family, pieces, texts):
        if label is not None and label != piece:
            out.append(label)
        elif piece is None:
            out.append(f"<unused {i}>")
        elif piece.startswith(WORD_START) and not text.startswith(" "):
            out.append(" " + text)  # the decoder stripped the word-start space
        else:
            out.append(text)
    return out


def _decode_each(tokenizer: Any, ids: list[int]) -> list[str]:
    """``tokenizer.decode([i])`` for every id, in one batch.

    Through a fast tokenizer's backend when decoding adds nothing to it (no clean-up of
    spaces), else through ``batch_decode``.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
    return tokenizer.batch_decode([[i] for i in ids])
