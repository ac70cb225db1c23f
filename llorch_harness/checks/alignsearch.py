"""The search behind the token alignment: every reading of the worker's bytes that stays
within the reference's margin, most plausible first.

Why a search: a greedy walk commits to one reading at each position. Where the reference
sees a near-tie between an invisible special token and a token that spells the next bytes
(reduced precision meets such ties in ordinary use), a wrong early choice judges every later
position against a prefix the worker never had, and a healthy worker fails. Here each
position offers every candidate within the margin (rank < k, gap <= delta sigma) that spells
the next bytes, or, where the log's count requires one, is invisible; readings are expanded
cheapest first by their summed gap in sigma (uniform-cost search), so the first complete
reading is the one the reference finds most plausible, and the worker fails only when no
reading within the margin spells its text.

Cost is bounded: rows of logits are computed by teacher-forced passes over the rest's
canonical tokenization and cached by prefix, so a reading that follows the reference costs
one pass; the search stops after `max_passes` forward passes or `max_expansions` expanded
readings (both scale with the stream's length, see `SearchBounds`), and says so.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

# every candidate kept per row: the top k for the margin, a few more as evidence
EVIDENCE_CANDIDATES = 8


@dataclass(frozen=True)
class RowView:
    """One row of the reference's logits, reduced to what the search judges with."""

    order: tuple[int, ...]  # token ids by descending logit (stable), the first few
    values: tuple[float, ...]
    spread: float  # the whole row's standard deviation

    @classmethod
    def of(cls, row: np.ndarray, keep: int) -> RowView:
        keep = min(keep, row.shape[0])
        top = np.argpartition(-row, keep - 1)[:keep]  # linear, not a sort of the vocabulary
        order = sorted((int(i) for i in top), key=lambda i: (-float(row[i]), i))
        return cls(tuple(int(i) for i in order), tuple(float(row[i]) for i in order),
                   float(np.std(row)))

    def sigma(self, index: int) -> float:
        gap = self.values[0] - self.values[index]
        return gap / self.spread if self.spread > 0 else 0.0

    def rank(self, index: int) -> int:
        """Tokens strictly above the `index`-th kept one (exact within the kept ones)."""
        value = self.values[index]
        return sum(1 for v in self.values if v > value)


@dataclass(frozen=True)
class SearchBounds:
    """How much one alignment may cost: forward passes and readings expanded.

    A correct worker's reading costs one pass plus one per place it parts from the
    canonical tokenization of its text (measured: benchmarks/RESULTS_reference_study.md);
    the bounds leave room for a search that backtracks over every near-tie.
    """

    max_passes: int
    max_expansions: int

    @classmethod
    def for_stream(cls, n_bytes: int, n_tokens: int | None) -> SearchBounds:
        n = max(n_bytes, n_tokens or 0)
        return cls(max_passes=4 * n + 32, max_expansions=64 * n + 512)


@dataclass
class Reading:
    """One reading of a prefix of the worker's bytes: the ids and what each cost."""

    ids: tuple[int, ...] = ()
    pos: int = 0  # bytes of the worker's text accounted for
    cost: float = 0.0  # summed gap to the reference's top-1, in sigma
    pending: bytes = b""  # token bytes that are not text yet (an unfinished character)
    steps: tuple[tuple[int, int, float, float, int], ...] = ()  # (id, top1, gap, sigma, rank)


@dataclass
class DeadEnd:
    """Where a reading could not go on: its row and the bytes left."""

    reading: Reading
    row: RowView | None  # None: the log's count was used up before the text
    why: str


@dataclass
class SearchResult:
    """The most plausible complete reading, or the evidence of why there is none."""

    found: Reading | None = None
    spelled_all: Reading | None = None  # a reading of every byte with another token count
    furthest: DeadEnd | None = None
    passes: int = 0
    expansions: int = 0
    bounded: bool = False  # stopped by `SearchBounds`, not by running out of readings


@dataclass
class Search:
    """One search over one stream's bytes; `logits(ids)` is one teacher-forced pass.

    Two phases share one budget and one cache of rows: first the cheapest reading first
    (uniform cost: the most plausible complete reading is the first found), and if half
    the budget passes without one, depth first along the best candidates (a reading within
    the margin, found fast where near-ties multiply the readings of equal cost). Either way
    a reading found is within the margin at every position, so the verdict is the same.
    """

    data: bytes
    n_tokens: int | None
    # (text bytes of `rest` the token spells, bytes still pending) or None: `spells(rest, id,
    # first, pending)`; `flush(pending)` is the text the worker's last piece shows for them
    spells: Callable[[bytes, int, bool, bytes], tuple[int, bytes] | None]
    flush: Callable[[bytes], bytes]
    invisible: Callable[[int], bool]  # the token adds no bytes to the text
    logits: Callable[[list[int]], np.ndarray]  # one forward pass: a row per position
    prompt_ids: tuple[int, ...]
    canonical: Callable[[bytes, bool], list[int]]  # (rest, at the text's start) -> ids
    delta: float
    k: int
    bounds: SearchBounds
    min_tokens: list[float] = field(default_factory=list)  # fewest tokens spelling data[i:]
    _cache: dict[tuple[int, ...], RowView] = field(default_factory=dict)
    result: SearchResult = field(default_factory=SearchResult)

    def run(self) -> SearchResult:
        if not self.min_tokens:
            self.min_tokens = [0.0] * (len(self.data) + 1)
        res = self.result
        half = SearchBounds(self.bounds.max_passes // 2, self.bounds.max_expansions // 2)
        if not self._uniform_cost(half) and res.bounded:
            res.bounded = False
            self._depth_first()
        return res

    def _spent(self, limit: SearchBounds) -> bool:
        res = self.result
        if res.passes >= limit.max_passes or res.expansions >= limit.max_expansions:
            res.bounded = True
            return True
        return False

    def _uniform_cost(self, limit: SearchBounds) -> bool:
        heap: list[tuple[float, int, int, int, Reading]] = [(0.0, 0, 0, 0, Reading())]
        seq = 0
        while heap and not self._spent(limit):
            reading = heapq.heappop(heap)[-1]
            self.result.expansions += 1
            if self._complete(reading):
                self.result.found = reading
                return True
            for child in self._children(reading):
                seq += 1
                heapq.heappush(heap, (child.cost, -child.pos, -len(child.ids), seq, child))
        return False

    def _depth_first(self) -> bool:
        stack = [Reading()]
        while stack and not self._spent(self.bounds):
            reading = stack.pop()
            self.result.expansions += 1
            if self._complete(reading):
                self.result.found = reading
                return True
            # tried first (pushed last): a token that spells text before an invisible one (the
            # count places those anywhere), then the cheaper
            stack.extend(sorted(self._children(reading), key=lambda r: (r.pos, -r.cost)))
        return False

    def _complete(self, reading: Reading) -> bool:
        if self.data[reading.pos:] != self.flush(reading.pending):
            return False
        if self.n_tokens is None or len(reading.ids) == self.n_tokens:
            return True
        best = self.result.spelled_all
        if best is None or reading.cost < best.cost:
            self.result.spelled_all = reading
        return False

    def _fits_count(self, count: int, pos: int) -> bool:
        """Can a reading with `count` tokens at byte `pos` still end with the log's count?"""
        return self.n_tokens is None or self.n_tokens - count >= self.min_tokens[pos]

    def _children(self, reading: Reading) -> list[Reading]:
        rest = self.data[reading.pos:]
        if self.n_tokens is not None and len(reading.ids) >= self.n_tokens:
            self._dead(reading, None, "the log's count of generated tokens is used up here")
            return []
        row = self._row(reading)
        # an invisible token only where the count leaves room for it beside the tokens the
        # rest of the text needs at the fewest
        allow_invisible = self.n_tokens is not None and \
            self._fits_count(len(reading.ids) + 1, reading.pos)
        out: list[Reading] = []
        for index, cand in enumerate(row.order[: self.k]):
            sigma = row.sigma(index)
            if sigma > self.delta:
                break
            if allow_invisible and self.invisible(cand):
                spelled: tuple[int, bytes] | None = (0, reading.pending)
            else:
                spelled = self.spells(rest, cand, reading.pos == 0, reading.pending)
            if spelled is None:
                continue
            n, pending = spelled
            pos = reading.pos + n
            if not self._fits_count(len(reading.ids) + 1, pos):
                continue
            step = (cand, row.order[0], row.values[0] - row.values[index], sigma,
                    row.rank(index))
            out.append(Reading(reading.ids + (cand,), pos, reading.cost + sigma, pending,
                               reading.steps + (step,)))
        if not out:
            self._dead(reading, row, "no candidate within the margin spells the next bytes"
                       if rest else "the text ends where the log counts more tokens")
        return out

    def _dead(self, reading: Reading, row: RowView | None, why: str) -> None:
        far = self.result.furthest
        # furthest into the bytes; there, a position the reference judged (a row) tells more
        # than a count used up, and the cheaper reading more than a costlier one
        if far is None or (reading.pos, row is not None, -reading.cost) > \
                (far.reading.pos, far.row is not None, -far.reading.cost):
            self.result.furthest = DeadEnd(reading, row, why)

    def _row(self, reading: Reading) -> RowView:
        cached = self._cache.get(reading.ids)
        if cached is not None:
            return cached
        # teacher-forced along the rest's canonical tokenization: a reading that follows it
        # finds its next rows here, without another pass
        guess = self.canonical(self.data[reading.pos:], reading.pos == 0)
        out = self.logits(list(self.prompt_ids) + list(reading.ids) + guess)
        self.result.passes += 1
        base = len(self.prompt_ids) + len(reading.ids) - 1
        rows = [out[base + j] for j in range(len(guess) + 1)]
        keep = max(self.k, EVIDENCE_CANDIDATES)
        prefix = reading.ids
        for j, row in enumerate(rows):
            key = prefix + tuple(guess[:j])
            if key not in self._cache:
                self._cache[key] = RowView.of(row, keep)
        return self._cache[reading.ids]



@dataclass(frozen=True)
class Spellings:
    """The distinct byte strings a vocabulary's tokens spell, built once per vocabulary (a
    set of up to 151,936 entries is not rebuilt for every stream)."""

    known: frozenset[bytes]
    longest: int

    @classmethod
    def of(cls, pieces: Iterable[bytes]) -> Spellings:
        known = frozenset(p for p in pieces if p)
        return cls(known, max((len(p) for p in known), default=1))


def fewest_tokens(data: bytes, spellings: Spellings, first_strip: bytes = b"",
                  replacement: bytes = b"") -> list[float]:
    """For each byte position i, the fewest tokens whose bytes spell `data[i:]` (inf where
    none do): the bound that keeps invisible tokens to where the log's count requires them.
    `first_strip`: bytes the decoder drops before the first token; `replacement`: U+FFFD, which
    the worker's text shows for invalid or unfinished UTF-8 from any tokens."""
    known, longest = spellings.known, spellings.longest
    n = len(data)
    best = [float("inf")] * (n + 1)
    best[n] = 0.0
    for i in range(n - 1, -1, -1):
        if replacement and data[i:i + len(replacement)] == replacement:
            # invalid bytes shown as U+FFFD: their token may be counted elsewhere (lower bound)
            best[i] = best[i + len(replacement)]
        for length in range(1, min(longest, n - i) + 1):
            piece = data[i:i + length]
            if piece in known or (i == 0 and first_strip and first_strip + piece in known):
                best[i] = min(best[i], 1.0 + best[i + length])
    return best
