"""The port of candle-examples' TokenOutputStream (refworker/token_stream.py): which pieces
the real worker's token events carry, on the tiny model's byte-level BPE tokenizer."""

from __future__ import annotations

import random
import sys

import pytest
from tokenizers import Tokenizer

from llorch_harness.lab.refworker.token_stream import TokenOutputStream, is_alphanumeric
from llorch_harness.lab.tinymodel import build_tiny_model


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tiny-tok")
    build_tiny_model(out, seed=0)
    return Tokenizer.from_file(str(out / "tokenizer.json"))


def stream(tok: Tokenizer, ids: list[int]) -> tuple[list[str | None], str | None]:
    s = TokenOutputStream(tok)
    return [s.next_token(i) for i in ids], s.decode_rest()


def ids_of(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=True).ids


def test_punctuation_and_spaces_ride_with_the_next_word(tok: Tokenizer) -> None:
    ids = ids_of(tok, "Hello, world!!! How are you?")
    assert [tok.decode([i]) for i in ids] == ["Hello", ",", " wor", "ld", "!", "!", "!", " ",
                                              "How", " are", " you", "?"]
    pieces, rest = stream(tok, ids)
    assert pieces == ["Hello", None, ", wor", "ld", None, None, None, None, "!!! How", " are",
                      " you", None]
    assert rest == "?"  # the final flush: the only piece that may end in punctuation


def test_newlines_wait_for_the_next_word(tok: Tokenizer) -> None:
    pieces, rest = stream(tok, ids_of(tok, "line one\n\nline two"))
    assert pieces == ["l", "ine", " one", None, None, "\n\nl", "ine", " two"]
    assert rest is None


def test_multibyte_characters_split_across_tokens_come_whole(tok: Tokenizer) -> None:
    ids = ids_of(tok, "café 世界 naïve")
    assert "\ufffd" in tok.decode([ids[3]])  # é is two byte tokens
    pieces, rest = stream(tok, ids)
    assert pieces == ["c", "a", "f", None, "é", None, None, None, " 世", None, None, "界", " n",
                      "a", None, "ï", "ve"]
    assert rest is None
    assert all("\ufffd" not in p for p in pieces if p)


def test_special_tokens_are_invisible(tok: Tokenizer) -> None:
    im_start, eot = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|endoftext|>")
    a, b = ids_of(tok, "a")[0], ids_of(tok, "b")[0]
    pieces, rest = stream(tok, [a, im_start, eot, b, eot])
    assert pieces == ["a", None, None, "b", None]
    assert rest is None  # nothing visible was held back


def test_utf8_bytes_not_chars_decide_growth(tok: Tokenizer) -> None:
    """A lone continuation byte decodes to U+FFFD: longer, but not alphanumeric, so held."""
    ids = ids_of(tok, "é")
    pieces, rest = stream(tok, ids[:1])
    assert pieces == [None] and rest == "\ufffd"  # decode_rest flushes the lossy text


def test_random_ids_keep_the_invariants(tok: Tokenizer) -> None:
    """Whatever is sampled: pieces + flush == decode(all), every piece but the flush ends in
    an alphanumeric character, and no piece is empty."""
    rng = random.Random(5)
    vocab = tok.get_vocab_size()
    for _ in range(30):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        pieces, rest = stream(tok, ids)
        emitted = [p for p in pieces if p is not None]
        assert "".join(emitted) + (rest or "") == tok.decode(ids, skip_special_tokens=True)
        assert all(p and is_alphanumeric(p[-1]) for p in emitted)
        assert rest is None or rest != ""


def test_clear_starts_over(tok: Tokenizer) -> None:
    s = TokenOutputStream(tok)
    for i in ids_of(tok, "Hello, wor"):
        s.next_token(i)
    s.clear()
    assert (s.tokens, s.prev_index, s.current_index) == ([], 0, 0)
    assert s.decode_rest() is None


@pytest.mark.parametrize(("ch", "expected"), [
    ("a", True), ("Z", True), ("7", True), ("é", True), ("世", True), ("½", True), ("Ⅻ", True),
    ("\u093e", True),  # DEVANAGARI VOWEL SIGN AA: Other_Alphabetic, not str.isalnum
    ("\u05b0", True),  # HEBREW POINT SHEVA
    ("\u24b6", True),  # CIRCLED LATIN CAPITAL LETTER A
    ("\u0301", False),  # COMBINING ACUTE ACCENT: not alphabetic in Rust either
    (",", False), (" ", False), ("\n", False), ("\ufffd", False), ("🙂", False), ("_", False),
])
def test_is_alphanumeric_is_rusts(ch: str, expected: bool) -> None:
    assert is_alphanumeric(ch) is expected


def test_hindi_word_is_emitted_at_its_vowel_sign() -> None:
    """'नमस्ते' ends in U+0947 (a vowel sign): Rust emits it, str.isalnum alone would hold it."""
    assert not "\u0947".isalnum() and is_alphanumeric("\u0947")


def test_extra_alnum_table_matches_unicode_alphabetic() -> None:
    regex = pytest.importorskip("regex")
    pat = regex.compile(r"[\p{Alphabetic}\p{N}]")
    step = 7  # every 7th code point keeps the check quick but covers every block
    for cp in range(0, sys.maxunicode + 1, step):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        assert is_alphanumeric(ch) == bool(pat.match(ch)), hex(cp)

