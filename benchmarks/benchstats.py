"""Figures every benchmark reports the same way: nearest-rank percentiles and summaries."""

from __future__ import annotations

import statistics


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p95 of 5 repeats is the max)."""
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def stats(values: list[float]) -> dict[str, float]:
    """median, p95, min, max, n of a non-empty list."""
    return {"median": statistics.median(values), "p95": pct(values, 0.95),
            "min": min(values), "max": max(values), "n": len(values)}
