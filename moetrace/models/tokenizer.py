"""A byte-level tokenizer that needs no download: every byte is a token, BPE merges optional."""

from __future__ import annotations

from typing import Any

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


def byte_level_tokenizer(merges: list[tuple[str, str]] | None = None, vocab: dict[str, int] | None = None) -> Any:
    """A `PreTrainedTokenizerFast` over bytes: `<pad>`=0, `<s>`=1, `</s>`=2, then the 256 byte symbols.

    With `vocab` and `merges` (from a trained byte-level BPE) it is that BPE tokenizer instead.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if vocab is None:
        vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
        for symbol in sorted(pre_tokenizers.ByteLevel.alphabet(), key=_byte_order):
            vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges or []))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )


def _byte_order(symbol: str) -> int:
    from tokenizers import pre_tokenizers  # noqa: F401  (keeps the import local)

    return _BYTE_OF_SYMBOL[symbol]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, as ByteLevel uses it."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


_BYTE_OF_SYMBOL = {symbol: byte for byte, symbol in _bytes_to_unicode().items()}
