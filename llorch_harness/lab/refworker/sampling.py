"""Next-token selection: greedy or seeded sampling with the contract's knobs.

Why a per-request generator: the same request (prompt, params, seed) must always give
the same tokens, whatever ran before on the worker; a shared RNG would leak state.
Order of processing follows Hugging Face: repetition penalty, temperature, top-k,
top-p, min-p; then one draw from the renormalised distribution.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def make_rng(seed: int) -> np.random.Generator:
    """A fresh PCG64 generator; u64 seeds from the wire are accepted as is."""
    return np.random.Generator(np.random.PCG64(int(seed) & 0xFFFF_FFFF_FFFF_FFFF))


def apply_repetition_penalty(logits: np.ndarray, seen: Iterable[int], penalty: float) -> np.ndarray:
    """HF style: divide positive logits by ``penalty``, multiply negative ones."""
    if penalty == 1.0:
        return logits
    idx = np.fromiter(set(seen), dtype=np.int64)
    if idx.size == 0:
        return logits
    # The contract allows 0.0; candle would divide by zero. A tiny floor keeps the
    # logits finite (no inf/NaN warnings in the worker's log) with the same ranking.
    penalty = max(penalty, 1e-6)
    out = logits.copy()
    sel = out[idx]
    out[idx] = np.where(sel > 0, sel / penalty, sel * penalty)
    return out


def select_token(
    logits: np.ndarray,
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seen: Iterable[int] = (),
    rng: np.random.Generator | None = None,
) -> int:
    """Pick the next token id from a ``[vocab]`` logits row.

    ``temperature <= 0`` is greedy: argmax, ties resolved to the lowest id (np.argmax).
    """
    row = np.asarray(logits, dtype=np.float64).reshape(-1)
    row = apply_repetition_penalty(row, seen, repetition_penalty)
    if temperature <= 0.0:
        return int(np.argmax(row))
    if rng is None:
        raise ValueError("sampling needs an rng")
    row = row / temperature
    if top_k and 0 < top_k < row.size:
        kth = np.partition(row, -top_k)[-top_k]
        row = np.where(row >= kth, row, -np.inf)
    row = row - row.max()
    probs = np.exp(row)
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep_n = int(np.searchsorted(cum, top_p, side="left")) + 1
        keep = np.zeros_like(probs, dtype=bool)
        keep[order[:keep_n]] = True
        probs = np.where(keep, probs, 0.0)
    if min_p > 0.0:
        probs = np.where(probs >= min_p * probs.max(), probs, 0.0)
    total = probs.sum()
    if not np.isfinite(total) or total <= 0.0:
        return int(np.argmax(row))
    cdf = np.cumsum(probs / total)
    idx = int(np.searchsorted(cdf, rng.random(), side="right"))
    if idx >= probs.size:  # rounding left the cdf just under 1: take the last live token
        idx = int(np.flatnonzero(probs)[-1])
    return idx
