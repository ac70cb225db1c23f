"""Map a worker's streamed text back to token ids, guided by the reference's candidates.

The real worker streams detokenizer pieces, not token ids: one piece may hold several
tokens, special tokens are invisible, a half UTF-8 character waits for the next token.
To judge each generated token against the reference we need the ids. The bytes are
exact, so the ids are recovered by walking the worker's bytes: at each position the
reference's own candidates (top-k within a logit gap) that spell the next bytes are
tried first, then the canonical tokenization of the rest. Where no acceptable
candidate spells the next bytes, that position is where the worker parted from the
reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from llorch_harness.bytelevel import bytes_to_unicode

REPLACEMENT = "\ufffd".encode()


def token_bytes(tokenizer: Tokenizer, vocab_size: int) -> list[bytes]:
    """The bytes each id contributes to text decoded with `skip_special_tokens=True`.

    Byte-level BPE (Qwen2, GPT-2) maps exactly; SentencePiece-style vocabularies map
    `▁` to a space and `<0xNN>` to its byte. Special tokens contribute nothing.
    """
    table = {ch: b for b, ch in bytes_to_unicode().items()}
    byte_level = "ByteLevel" in type(tokenizer.decoder).__name__ or \
        "ByteLevel" in str(tokenizer.decoder)
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    out: list[bytes] = []
    for i in range(vocab_size):
        piece = tokenizer.id_to_token(i)
        if piece is None or i in special:
            out.append(b"")
        elif byte_level and all(ch in table for ch in piece):
            out.append(bytes(table[ch] for ch in piece))
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out.append(bytes([int(piece[3:5], 16)]))
        else:
            out.append(piece.replace("\u2581", " ").encode())
    return out


def first_strip(tokenizer: Tokenizer, table: list[bytes], probe: int = 64) -> bytes:
    """What the tokenizer's decoder drops from the start of a decoded text (b" " for a
    Llama-style SentencePiece decoder with `Strip`, else b""). A worker's detokenizer starts
    anew for every request, so the first generated token's space never reaches its text."""
    seen = 0
    for i, tb in enumerate(table):
        if len(tb) > 1 and tb.startswith(b" ") and tb[1:2] != b" ":
            seen += 1
            decoded = tokenizer.decode([i]).encode()
            if decoded == tb[1:]:
                return b" "
            if seen >= probe or decoded == tb:
                return b""
    return b""


@dataclass
class Step:
    """One generated token as judged: the worker's id and where it stood for the reference."""

    position: int  # 0-based index among generated tokens
    token_id: int
    top1_id: int
    gap: float  # logit(top1) - logit(token), in logits; 0 when the token is the top-1
    rank: int  # 0 = top-1
    sigma_gap: float = 0.0  # the same gap in units of the row's standard deviation


@dataclass
class Alignment:
    """The worker's tokens as the reference saw them, or where they parted."""

    steps: list[Step] = field(default_factory=list)
    failure: Step | None = None  # the first token outside the margin
    failure_text: str | None = None  # what the worker wrote there
    complete: bool = False  # every byte of the worker's text was accounted for
    forward_passes: int = 0

    @property
    def ids(self) -> list[int]:
        return [s.token_id for s in self.steps]

    @property
    def max_gap(self) -> float:
        """The largest gap, in standard deviations of the reference's logits."""
        return max((s.sigma_gap for s in self.steps), default=0.0)


def judge(row: np.ndarray, token_id: int) -> Step:
    """Where `token_id` stands in one row of logits (position left 0 for the caller).

    The gap is also given in units of the row's standard deviation: logit scales differ
    by model (a random tiny model's spread is several times a trained one's), so the
    margin `delta` is set in those units and means the same on every model.
    """
    top1 = int(np.argmax(row))
    value = float(row[token_id])
    gap = float(row[top1]) - value
    rank = int(np.count_nonzero(row > value))
    spread = float(np.std(row))
    return Step(0, token_id, top1, gap, rank, gap / spread if spread > 0 else 0.0)


class Aligner:
    """Walks the worker's bytes with a reference's logits; `logits(ids)` is one forward pass."""

    def __init__(self, tokenizer: Tokenizer, table: list[bytes],
                 logits: Callable[[list[int]], np.ndarray], *, delta: float, k: int) -> None:
        self.tokenizer = tokenizer
        self.table = table
        self.logits = logits
        self.delta = delta
        self.k = k
        self.strip = first_strip(tokenizer, table)

    def _spells(self, rest: bytes, token_id: int, first: bool = False) -> int | None:
        """How many of `rest`'s bytes `token_id` spells, or None if it does not (`first`:
        the first generated token, whose leading space the decoder may have dropped)."""
        tb = self.table[token_id] if 0 <= token_id < len(self.table) else b""
        if tb and rest.startswith(tb):
            return len(tb)
        if first and self.strip and tb.startswith(self.strip) and len(tb) > len(self.strip) \
                and rest.startswith(tb[len(self.strip):]):
            return len(tb) - len(self.strip)
        # a generation cut inside a character: the worker flushed U+FFFD for the partial bytes
        if tb and rest == REPLACEMENT and _is_partial_utf8(tb):
            return len(REPLACEMENT)
        return None

    def _canonical(self, rest: bytes) -> list[int]:
        try:
            text = rest.decode("utf-8")
        except UnicodeDecodeError:
            return []  # starts inside a character: only the candidates can continue it
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids) if text else []

    def _candidate(self, row: np.ndarray, rest: bytes, allow_invisible: bool,
                   first: bool = False) -> tuple[int, int] | None:
        """The best acceptable candidate that spells the next bytes (or is invisible)."""
        order = np.argsort(-row, kind="stable")[: self.k]  # each is within rank k
        best, spread = float(row[order[0]]), float(np.std(row))  # once per row, not per token
        for cand in (int(c) for c in order):
            gap = best - float(row[cand])
            if (gap / spread if spread > 0 else 0.0) > self.delta:
                break
            n = self._spells(rest, cand, first)
            if n:
                return cand, n
            if allow_invisible and not self.table[cand]:
                return cand, 0
        return None

    def align(self, prompt_ids: list[int], text: str, n_tokens: int | None) -> Alignment:
        """Recover the worker's ids for `text`; `n_tokens` (the log's count) lets invisible
        special tokens be placed where the reference expected them."""
        data = text.encode()
        out = Alignment()
        ids: list[int] = []
        pos = 0
        guess = self._canonical(data)
        limit = len(data) + (n_tokens or 0) + 2
        while out.forward_passes < limit:
            rows = self.logits(prompt_ids + ids + guess)
            out.forward_passes += 1
            base = len(prompt_ids) + len(ids) - 1
            restart = False
            for j in range(len(guess) + 1):
                row = rows[base + j]
                rest = data[pos:]
                want_more = n_tokens is not None and len(ids) < n_tokens
                if not rest and not want_more:
                    out.complete = True
                    return out
                tok = guess[j] if j < len(guess) else None
                # the reference's own best reading of the next bytes wins over the canonical
                # split: a correct worker generated exactly that token
                found = self._candidate(row, rest, allow_invisible=want_more,
                                        first=pos == 0 and not ids)
                if found is None and not rest:
                    out.complete = True  # text accounted for; the caller compares the counts
                    return out
                if found is None:
                    self._fail(out, ids, row, tok, rest)
                    return out
                cand, n = found
                self._take(out, ids, row, cand)
                pos += n
                if cand == tok:
                    continue  # the canonical split agrees: the rows after it stay valid
                guess = self._canonical(data[pos:])
                restart = True
                break
            if not restart:
                guess = self._canonical(data[pos:])
        out.failure_text = "the alignment did not converge"
        return out

    def _take(self, out: Alignment, ids: list[int], row: np.ndarray, tok: int) -> None:
        step = judge(row, tok)
        step.position = len(ids)
        out.steps.append(step)
        ids.append(tok)

    def _fail(self, out: Alignment, ids: list[int], row: np.ndarray, tok: int | None,
              rest: bytes) -> None:
        got = tok if tok is not None else self._first_token(rest, row)
        out.failure = judge(row, got)
        out.failure.position = len(ids)
        out.failure_text = rest[:40].decode("utf-8", "replace")

    def _first_token(self, rest: bytes, row: np.ndarray) -> int:
        """The worker's next token when the canonical split gave none: the longest vocabulary
        entry spelling the next bytes (else the reference's top-1, for an empty tail)."""
        best, best_len = int(np.argmax(row)), 0
        for i, tb in enumerate(self.table):
            if tb and len(tb) > best_len and rest.startswith(tb):
                best, best_len = i, len(tb)
        return best


def _is_partial_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
