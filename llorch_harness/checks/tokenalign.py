"""Map a worker's streamed text back to token ids, guided by the reference's candidates.

The real worker streams detokenizer pieces, not token ids: one piece may hold several
tokens, special tokens are invisible, a half UTF-8 character waits for the next token.
To judge each generated token against the reference we need the ids. The bytes are
exact, so the ids are recovered by a search over the readings of the worker's bytes
(`alignsearch`): at each position every candidate of the reference within the margin that
spells the next bytes (or, where the log's count requires it, an invisible special token)
is a branch, and the reading the reference finds most plausible wins. Where no reading
within the margin spells the text, the furthest one shows where the worker parted from
the reference.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from llorch_harness.bytelevel import bytes_to_unicode
from llorch_harness.checks.alignsearch import (
    Reading,
    Search,
    SearchBounds,
    SearchResult,
    Spellings,
    fewest_tokens,
)

REPLACEMENT = "\ufffd".encode()
# what a rest is encoded behind when the tokenizer would prepend its dummy prefix to it
CANONICAL_SENTINEL = "\n"


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
    """The worker's tokens as the reference saw them, or where the furthest reading parted
    (then `steps` is that reading, `failure` its next token, `candidates` the reference's)."""

    steps: list[Step] = field(default_factory=list)
    failure: Step | None = None  # the first token outside the margin
    failure_text: str | None = None  # what the worker wrote there
    complete: bool = False  # every byte of the worker's text was accounted for
    forward_passes: int = 0
    expansions: int = 0  # readings the search expanded
    bounded: bool = False  # the search stopped at its bound before deciding
    why: str | None = None  # why the furthest reading could not go on
    candidates: list[tuple[int, float]] = field(default_factory=list)  # (id, gap in sigma)

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
    """Reads the worker's bytes with a reference's logits; `logits(ids)` is one forward pass.

    `align` searches every reading within the margin (`alignsearch`), most plausible first.
    """

    def __init__(self, tokenizer: Tokenizer, table: list[bytes],
                 logits: Callable[[list[int]], np.ndarray], *, delta: float, k: int) -> None:
        self.tokenizer = tokenizer
        self.table = table
        self.logits = logits
        self.delta = delta
        self.k = k
        self.strip = first_strip(tokenizer, table)
        self.spellings = Spellings.of(table)

    def _spells(self, rest: bytes, token_id: int, first: bool = False, pending: bytes = b""
                ) -> tuple[int, bytes] | None:
        """How many of `rest`'s bytes `token_id` spells and the bytes it leaves pending, or
        None if it does not. The text is exact bytes while the UTF-8 is valid (a token may
        end inside a character: the text holds the whole of it); bytes that are not valid
        UTF-8 show as U+FFFD, as the worker's lossy decoding writes them. `first`: the first
        generated text, whose leading space the decoder may have dropped."""
        tb = self.table[token_id] if 0 <= token_id < len(self.table) else b""
        if not tb:
            return None
        if not pending:
            if rest.startswith(tb):
                return len(tb), b""
            if first and self.strip and tb.startswith(self.strip) \
                    and len(tb) > len(self.strip) and rest.startswith(tb[len(self.strip):]):
                return len(tb) - len(self.strip), b""
            if not rest.startswith(REPLACEMENT):
                return None  # valid text here: only its exact bytes (above) spell it
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(pending + tb, final=False).encode()
        left = decoder.getstate()[0]
        if not rest.startswith(text):
            return None
        if not text and not left:
            return None
        return len(text), left

    def _flush(self, pending: bytes) -> bytes:
        """The text the worker's last piece shows for bytes still pending at the end: U+FFFD
        (a generation cut inside a character)."""
        return pending.decode("utf-8", "replace").encode() if pending else b""

    def _invisible(self, token_id: int) -> bool:
        return 0 <= token_id < len(self.table) and not self.table[token_id]

    def _canonical(self, rest: bytes, first: bool = False) -> list[int]:
        """The tokenizer's own split of `rest`, spelling exactly its bytes where it can: the
        guess a forward pass is teacher-forced along (a reading that follows it costs no
        further pass). A SentencePiece tokenizer prepends its dummy "▁" to whatever it
        encodes, which mid-text spells a space the text does not have; there the rest is
        encoded behind a newline (a byte token that merges with nothing) and that is cut."""
        try:
            text = rest.decode("utf-8")
        except UnicodeDecodeError:
            return []  # starts inside a character: only the candidates can continue it
        if not text:
            return []
        ids = self._encode(text)
        spelled = self._spelled(ids)
        if spelled == rest or (first and self.strip and spelled == self.strip + rest):
            return ids
        behind = self._encode(CANONICAL_SENTINEL + text)
        for cut in range(1, min(3, len(behind)) + 1):  # the dummy prefix, then the newline
            if self._spelled(behind[:cut]).endswith(CANONICAL_SENTINEL.encode()):
                return behind[cut:] if self._spelled(behind[cut:]) == rest else ids
        return ids

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _spelled(self, ids: list[int]) -> bytes:
        return b"".join(self.table[i] for i in ids if 0 <= i < len(self.table))

    def _search(self, prompt_ids: list[int], data: bytes, n_tokens: int | None,
                bounds: SearchBounds) -> SearchResult:
        fewest = fewest_tokens(data, self.spellings, self.strip, REPLACEMENT) \
            if n_tokens is not None else [0.0] * (len(data) + 1)
        return Search(data, n_tokens, self._spells, self._flush, self._invisible, self.logits,
                      tuple(prompt_ids), self._canonical, self.delta, self.k, bounds,
                      fewest).run()

    def align(self, prompt_ids: list[int], text: str, n_tokens: int | None,
              bounds: SearchBounds | None = None) -> Alignment:
        """Recover the worker's ids for `text`; `n_tokens` (the log's count) lets invisible
        special tokens stand where the count requires them, and nowhere else."""
        out = Alignment()
        if not prompt_ids:
            out.failure_text = "the prompt encodes to no tokens: nothing predicts the first token"
            return out
        data = text.encode()
        bounds = bounds or SearchBounds.for_stream(len(data), n_tokens)
        res = self._search(prompt_ids, data, n_tokens, bounds)
        out.forward_passes, out.expansions = res.passes, res.expansions
        if res.found is not None:
            return self._reading(out, res.found, complete=True)
        if res.spelled_all is None and n_tokens is not None and not res.bounded:
            # no reading has the log's count: is there one with another count? (then the
            # count is the problem, said as such by the caller)
            free = self._search(prompt_ids, data, None, bounds)
            out.forward_passes += free.passes
            out.expansions += free.expansions
            if free.found is not None:
                return self._reading(out, free.found, complete=True)
        if res.spelled_all is not None:
            return self._reading(out, res.spelled_all, complete=True)
        out.bounded = res.bounded
        return self._evidence(out, prompt_ids, data, res)

    def _reading(self, out: Alignment, reading: Reading, *, complete: bool) -> Alignment:
        for position, (tok, top1, gap, sigma, rank) in enumerate(reading.steps):
            out.steps.append(Step(position, tok, top1, gap, rank, sigma))
        out.complete = complete
        return out

    def _evidence(self, out: Alignment, prompt_ids: list[int], data: bytes,
                  res: SearchResult) -> Alignment:
        """The furthest reading and where it stopped: the worker's next token judged on the
        full row, the reference's candidates there with their gaps."""
        far = res.furthest
        if far is None:
            out.failure_text = (f"the search stopped at its bound ({res.passes} forward passes, "
                                f"{res.expansions} readings) before any reading failed")
            return out
        self._reading(out, far.reading, complete=False)
        rest = data[far.reading.pos:]
        out.failure_text = rest[:40].decode("utf-8", "replace")
        out.why = far.why
        if far.row is None:  # the count ran out with bytes left
            return out
        row = self.logits(prompt_ids + list(far.reading.ids))[-1]
        out.forward_passes += 1
        got = self._first_token(rest, row)
        out.failure = judge(row, got)
        out.failure.position = len(far.reading.ids)
        out.candidates = [(tok, far.row.sigma(i)) for i, tok in enumerate(far.row.order)]
        return out

    def _first_token(self, rest: bytes, row: np.ndarray) -> int:
        """The worker's next token: the canonical split's first, else the longest vocabulary
        entry spelling the next bytes (else the reference's top-1, for an empty tail)."""
        canonical = self._canonical(rest)
        if canonical:
            return canonical[0]
        best, best_len = int(np.argmax(row)), 0
        for i, tb in enumerate(self.table):
            if tb and len(tb) > best_len and rest.startswith(tb):
                best, best_len = i, len(tb)
        return best
