"""A small offline Llama-style tokenizer whose pieces are ordinary English words."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<unk>", "<s>", "</s>"]
PAD = "<PAD>"
N_RESERVED = 256  # the last pieces of the base vocabulary: OpenVLA overwrites them with actions

WORDS = """
a an the to of in on at by for from with and or but not no yes it its this that these those
is are be put place pick up down left right forward backward back front behind top bottom
over under into onto inside outside near far next between above below around through
open close turn push pull lift lower raise drop grab hold release move stop go
slow slowly fast quickly quick careful carefully gently gentle steady smooth rough hard soft
high low higher lower upward downward upwards downwards sideways along across toward towards
robot arm gripper hand finger camera table shelf drawer cabinet door window stove microwave
bowl plate cup mug bottle can box basket pot pan lid bin tray rack book caddy sink faucet
black white red green blue yellow orange purple brown gray pink wooden metal plastic glass
ketchup milk butter cheese cream soup sauce salad bread cookie cookies chocolate pudding
alphabet tomato orange juice wine bottle cabinet bbq basket
small large big little long short tall wide narrow empty full
first second third last one two three four five six seven eight nine ten
what action should take how where when why which who do does did done make made
task goal step steps start end finish begin again then now here there
In Out What
""".split()


def _pieces() -> list[str]:
    words = list(dict.fromkeys(WORDS))
    pieces = ["▁"]
    pieces += list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    pieces += list(".,:;?!'\"-()/")
    for word in words:
        pieces += [f"▁{word}", f"▁{word.capitalize()}", word]
    return list(dict.fromkeys(pieces))


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A Unigram tokenizer laid out like Llama-2's: ``<unk>, <s>, </s>``, 256 byte pieces,
    word pieces, then 256 reserved pieces that OpenVLA's action tokens overwrite; ``<PAD>``
    is added after the base vocabulary. Deterministic, offline.

    Example:
        >>> tok = build_tiny_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("pick up the bowl").input_ids)
        ['<s>', '▁pick', '▁up', '▁the', '▁bowl']
    """
    vocab: list[tuple[str, float]] = [(s, 0.0) for s in SPECIALS]
    vocab += [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    for piece in _pieces():
        score = -2.0 if len(piece) > 2 or piece.startswith("▁") and len(piece) > 1 else -8.0
        vocab.append((piece, score))
    # Reserved pieces: rare CJK characters, never produced by English text.
    vocab += [(chr(0x4E00 + i), -20.0) for i in range(N_RESERVED)]

    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
    )
    fast.add_special_tokens({"pad_token": PAD})
    return fast
