"""Offline Unigram tokenizers in Llama's and Gemma's layouts whose pieces are ordinary English words (for tiny models)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

#: Words every tiny tokenizer knows, so lenses over tiny models print readable tokens.
WORDS = """
a an the to of in on at by for from with and or but not no yes it its this that these those
is are be put place pick up down left right forward backward back front behind top bottom
over under into onto inside outside near far next between above below around through
open close turn push pull lift lower raise drop grab hold release move stop go
slow slowly fast quickly quick careful carefully gently gentle steady smooth rough hard soft
high low higher upward downward upwards downwards sideways along across toward towards
robot arm gripper hand finger camera table shelf drawer cabinet door window stove microwave
bowl plate cup mug bottle can box basket pot pan lid bin tray rack book caddy sink faucet
black white red green blue yellow orange purple brown gray pink wooden metal plastic glass
ketchup milk butter cheese cream soup sauce salad bread cookie cookies chocolate pudding
alphabet tomato juice wine bbq
small large big little long short tall wide narrow empty full
first second third last one two three four five six seven eight nine ten
what action should take how where when why which who do does did done make made
task goal step steps start end finish begin again then now here there state
In Out What Task Action
""".split()


def _pieces() -> list[str]:
    pieces = ["▁"]
    pieces += list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    pieces += list(".,:;?!'\"-()/")
    for word in dict.fromkeys(WORDS):
        pieces += [f"▁{word}", f"▁{word.capitalize()}", word]
    return list(dict.fromkeys(pieces))


def _reserved(n: int) -> list[str]:
    """``n`` characters English text never produces.

    They are CJK ideographs from U+4E00 on, then (past U+9FFF, for vocabularies as large as
    PaliGemma's) the supplementary planes.
    """
    first = [chr(0x4E00 + i) for i in range(min(n, 0xA000 - 0x4E00))]
    return first + [chr(0x20000 + i) for i in range(n - len(first))]


def build_word_tokenizer(
    specials: list[str],
    bos: str,
    eos: str,
    unk: str,
    pad: str,
    n_reserved: int = 0,
    padding_side: str = "right",
    named: dict[str, str] | None = None,
    dummy_prefix: bool = True,
) -> PreTrainedTokenizerFast:
    """A deterministic Unigram tokenizer laid out like Llama's and Gemma's.

    Ids: ``specials`` first (in order), 256 byte-fallback pieces ``<0x00>``..``<0xFF>``,
    word pieces (``▁up``, ``▁Up``, ``up``, ...), single characters, then ``n_reserved``
    pieces that English text never produces (rare CJK characters). ``pad`` is added after
    them when it is not among ``specials``. BOS is prepended to every encoding. ``named``:
    model-specific special tokens by attribute name (SmolVLM's ``fake_image_token``), each
    one of ``specials``. ``dummy_prefix``: a "▁" before the text, as Llama's tokenizer adds and
    Gemma's does not (without it, "Action: " is ``Action, :, ▁``).

    Example:
        >>> tok = build_word_tokenizer(["<unk>", "<s>", "</s>"], "<s>", "</s>", "<unk>", "<PAD>")
        >>> tok.convert_ids_to_tokens(tok("pick up the bowl").input_ids)
        ['<s>', '▁pick', '▁up', '▁the', '▁bowl']
    """
    vocab: list[tuple[str, float]] = [(s, 0.0) for s in specials]
    vocab += [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    for piece in _pieces():
        whole = len(piece) > 2 or (piece.startswith("▁") and len(piece) > 1)
        vocab.append((piece, -2.0 if whole else -8.0))
    vocab += [(piece, -20.0) for piece in _reserved(n_reserved)]

    tok = Tokenizer(models.Unigram(vocab, unk_id=specials.index(unk), byte_fallback=True))
    prefix = [normalizers.Prepend("▁")] if dummy_prefix else []
    tok.normalizer = normalizers.Sequence([*prefix, normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    bos_id = specials.index(bos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk, padding_side=padding_side,
        extra_special_tokens=named,
    )
    if pad in specials:
        fast.pad_token = pad
    else:
        fast.add_special_tokens({"pad_token": pad})
    return fast
