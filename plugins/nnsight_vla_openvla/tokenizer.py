"""The offline tokenizer of tiny-openvla: Llama-2's layout over ordinary English words."""

from __future__ import annotations

import functools

from transformers import PreTrainedTokenizerFast

from nnsight_vla.family import build_word_tokenizer

N_RESERVED = 256  # at least the last 256 pieces of the base vocabulary: OpenVLA's action tokens overwrite them
#: OpenVLA pads its vocabulary to a multiple of this (``pad_to_multiple_of`` in config.json).
PAD_TO_MULTIPLE_OF = 64


def _build(n_reserved: int) -> PreTrainedTokenizerFast:
    return build_word_tokenizer(
        ["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", unk="<unk>", pad="<PAD>",
        n_reserved=n_reserved, padding_side="left",
    )


@functools.cache
def n_reserved() -> int:
    """Reserved pieces: 256 or more, so that the base vocabulary is a multiple of 64.

    The base vocabulary is everything before ``<PAD>``; it is a multiple of 64 as Llama-2's 32000
    is. Then the official OpenVLA rule for where action ids end,
    ``text_config.vocab_size - pad_to_multiple_of``, gives the base vocabulary size.
    """
    base = _build(N_RESERVED).pad_token_id
    return N_RESERVED + (-base) % PAD_TO_MULTIPLE_OF


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny tokenizer: special pieces, then byte, word and reserved pieces, then ``<PAD>``.

    In that order: ``<unk>, <s>, </s>``, 256 byte pieces, word pieces, `n_reserved` reserved
    pieces, then ``<PAD>`` (whose id, the base vocabulary size, is a multiple of 64).

    Example:
        >>> tok = build_tiny_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("pick up the bowl").input_ids)
        ['<s>', '▁pick', '▁up', '▁the', '▁bowl']
        >>> tok.pad_token_id % 64
        0
    """
    return _build(n_reserved())
