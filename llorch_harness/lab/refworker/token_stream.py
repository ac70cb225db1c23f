"""Streaming detokenization exactly as llorch-candled does it: a port of candle-examples'
``TokenOutputStream`` (llorch-candled ``src/token_output_stream.rs``).

Why a faithful port and not a "nicer" detokenizer: the real worker's token events carry
*pieces* cut by this algorithm, and the harness must accept exactly those. After each
sampled token the window ``tokens[prev_index:]`` is decoded with special tokens skipped;
a piece is emitted only when the decoded text grew (compared in UTF-8 bytes, Rust's
``String::len``) and its last character is alphanumeric (Rust's ``char::is_alphanumeric``).
So spaces, punctuation, newlines and half UTF-8 characters ride with the next word, special
tokens are invisible, and ``decode_rest`` flushes what is left at the end. Consequences the
harness sees: fewer token events than sampled tokens, a piece such as ``", and"``, and a
final piece (the flush) that may end in punctuation.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Protocol

from llorch_harness.lab.refworker._alnum import EXTRA_ALNUM_RANGES

__all__ = ["TokenOutputStream", "is_alphanumeric"]

_STARTS = EXTRA_ALNUM_RANGES[0::2]
_ENDS = EXTRA_ALNUM_RANGES[1::2]


class _Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


def is_alphanumeric(ch: str) -> bool:
    """Rust's ``char::is_alphanumeric``: Unicode Alphabetic or a number (Nd, Nl, No).

    ``str.isalnum`` misses ``Other_Alphabetic`` (e.g. Devanagari vowel signs, Hebrew points)
    and letters newer than Python's Unicode database; ``_alnum.py`` lists those.
    """
    if ch.isalnum():
        return True
    cp = ord(ch)
    i = bisect_right(_STARTS, cp) - 1
    return i >= 0 and cp <= _ENDS[i]


class TokenOutputStream:
    """Feed sampled ids one by one; get ``str`` pieces (or ``None`` while text is held back).

    Mirrors the Rust struct field for field (``tokens``, ``prev_index``, ``current_index``)
    so that a reader can check the port line by line.
    """

    def __init__(self, tokenizer: _Decoder) -> None:
        self._tokenizer = tokenizer
        self.tokens: list[int] = []
        self.prev_index = 0
        self.current_index = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    def _prev_text(self) -> str:
        if not self.tokens:
            return ""
        return self._decode(self.tokens[self.prev_index : self.current_index])

    def next_token(self, token: int) -> str | None:
        """The new piece once the window's text grew and ends in an alphanumeric char."""
        prev_text = self._prev_text()
        self.tokens.append(int(token))
        text = self._decode(self.tokens[self.prev_index :])
        cut = len(prev_text.encode("utf-8"))
        raw = text.encode("utf-8")
        if len(raw) > cut and is_alphanumeric(text[-1]):
            self.prev_index = self.current_index
            self.current_index = len(self.tokens)
            # Rust's `split_at` panics off a char boundary; here that is a UnicodeDecodeError.
            # Neither can happen with byte-level BPE: prev_text is always a prefix of text.
            return raw[cut:].decode("utf-8")
        return None

    def decode_rest(self) -> str | None:
        """What is still held back at the end (the real worker sends it as a last piece)."""
        prev_text = self._prev_text()
        text = self._decode(self.tokens[self.prev_index :])
        cut = len(prev_text.encode("utf-8"))
        raw = text.encode("utf-8")
        if len(raw) > cut:
            return raw[cut:].decode("utf-8")
        return None

    def clear(self) -> None:
        self.tokens.clear()
        self.prev_index = 0
        self.current_index = 0
