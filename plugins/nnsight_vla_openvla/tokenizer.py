"""The offline tokenizer of tiny-openvla: Llama-2's layout over ordinary English words."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from nnsight_vla.testing.words import build_word_tokenizer

N_RESERVED = 256  # the last pieces of the base vocabulary: OpenVLA's action tokens overwrite them


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """``<unk>, <s>, </s>``, 256 byte pieces, word pieces, 256 reserved pieces, then ``<PAD>``.

    Example:
        >>> tok = build_tiny_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("pick up the bowl").input_ids)
        ['<s>', '▁pick', '▁up', '▁the', '▁bowl']
    """
    return build_word_tokenizer(
        ["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", unk="<unk>", pad="<PAD>",
        n_reserved=N_RESERVED, padding_side="left",
    )
