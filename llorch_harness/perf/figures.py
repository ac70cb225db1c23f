"""The figures one gate run measures per model, backend and pool, and how they are summarised.

Why client side: the worker's own `decode_time_ms` cannot see a slow HTTP layer or a worker
that buffers its stream; the harness times what a user of the worker waits for, from the
arrival times of the SSE events (`StreamResult.arrival_s`). At CP3 the worker sends every
event at once after the whole generation (contract, HTTP): then time to first token and
inter-token latency cannot be seen from outside, so they are recorded as *unavailable*
with the reason, never as numbers, and the per-token figure is the request time over the
log's `tokens_generated` (token events are pieces, not tokens).

Every figure is a median over at least `MIN_SAMPLES` samples with its spread (the median
absolute deviation, MAD), so one slow request cannot move it; the samples themselves are
kept, so that the regression rule can rank this run's samples against its baseline's.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MIN_SAMPLES = 5  # repetitions per figure per run: enough for a rank test (baseline.py)
# A request counts as streamed when its events arrived spread over at least this share of
# the time until the last one (and at least STREAM_MIN_S): the CP3 worker's one write
# arrives within microseconds; a streaming worker's `started` comes before the generation.
STREAM_MIN_SHARE = 0.1
STREAM_MIN_S = 0.001
AT_ONCE = ("the worker sent every event of a request at once after the generation "
           "(llorch-candled at CP3): not measurable from the client")


@dataclass(frozen=True)
class FigureSpec:
    """What a figure means; `better` is the direction a regression goes against (None: shown,
    never judged)."""

    name: str
    label: str
    unit: str  # s | s/token | tok/s | B | count
    better: str | None  # "lower" | "higher" | None

    @property
    def checked(self) -> bool:
        return self.better is not None


SPECS: dict[str, FigureSpec] = {s.name: s for s in (
    FigureSpec("load_s", "worker load time (spawn to ready)", "s", "lower"),
    FigureSpec("ttft_s", "time to first token", "s", "lower"),
    FigureSpec("itl_p50_s", "inter-token latency p50", "s", "lower"),
    FigureSpec("itl_p95_s", "inter-token latency p95", "s", "lower"),
    FigureSpec("s_per_token", "request time per generated token", "s/token", "lower"),
    # the inverse of s_per_token, shown for people; judging both would report one change twice
    FigureSpec("tokens_per_sec", "tokens per second (client side)", "tok/s", None),
    FigureSpec("worker_tokens_per_sec", "tokens per second (worker's decode_time_ms)", "tok/s",
               None),
    FigureSpec("memory_ready", "memory at ready", "B", "lower"),
    FigureSpec("memory_peak", "peak memory", "B", "lower"),
    FigureSpec("requests", "measured requests", "count", None),
    FigureSpec("harness_overhead_s", "harness overhead while measuring", "s", None),
)}


@dataclass(frozen=True)
class Figure:
    """One measured figure: a median with its MAD and sample count, or None with the reason."""

    name: str
    value: float | None
    spread: float | None = None
    n: int = 0
    note: str | None = None  # why unavailable; or what was measured (RSS, VRAM, ...)
    samples: tuple[float, ...] = ()  # the raw samples the median came from

    @property
    def available(self) -> bool:
        return self.value is not None

    @property
    def spec(self) -> FigureSpec:
        return SPECS.get(self.name) or FigureSpec(self.name, self.name, "", None)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "spread": self.spread, "n": self.n,
                "unit": self.spec.unit, "note": self.note, "samples": list(self.samples)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Figure:
        return cls(str(raw["name"]), _num(raw.get("value")), _num(raw.get("spread")),
                   int(raw.get("n") or 0), raw.get("note") if raw.get("note") else None,
                   samples_from(raw.get("samples")))


def samples_from(raw: Any) -> tuple[float, ...]:
    """Samples read back (a store's JSON text or an export's list); anything else: none."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return ()
    if not isinstance(raw, list):
        return ()
    values = [_num(v) for v in raw]
    return tuple(v for v in values if v is not None)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def unavailable(name: str, why: str) -> Figure:
    return Figure(name, None, None, 0, why)


def median_mad(samples: Sequence[float]) -> tuple[float, float]:
    """The median and the median absolute deviation (unscaled) of a non-empty list."""
    med = statistics.median(samples)
    return med, statistics.median(abs(x - med) for x in samples)


def summarise(name: str, samples: Sequence[float], *, note: str | None = None,
              min_samples: int = MIN_SAMPLES) -> Figure:
    """A median figure with its spread, or unavailable when there are too few samples."""
    values = [float(x) for x in samples if x is not None and math.isfinite(x)]
    if len(values) < min_samples:
        return unavailable(name, f"{len(values)} sample(s), at least {min_samples} needed"
                           + (f" ({note})" if note else ""))
    med, mad = median_mad(values)
    return Figure(name, med, mad, len(values), note, tuple(values))


# --------------------------------------------------------------------------- one request


@dataclass(frozen=True)
class RequestTiming:
    """What one measured `/execute` tells about speed, on the client's clock."""

    ok: bool
    why: str | None  # why the request is not usable for timing
    elapsed_s: float
    tokens_generated: int | None
    first_token_s: float | None
    gaps_s: tuple[float, ...] = ()
    streamed: bool = False
    decode_time_ms: float | None = None

    @property
    def s_per_token(self) -> float | None:
        if not self.ok or not self.tokens_generated:
            return None
        return self.elapsed_s / self.tokens_generated


def request_timing(res: Any) -> RequestTiming:
    """Timing of one StreamResult: arrival times of its events, the log's token count."""
    events: list[dict[str, Any]] = list(getattr(res, "events", []) or [])
    arrivals: list[float] = list(getattr(res, "arrival_s", []) or [])
    elapsed = float(getattr(res, "elapsed_s", 0.0) or 0.0)
    n = getattr(res, "tokens_generated", None)
    term = next((e for e in events if e.get("type") in ("end", "error")), None)
    why = _unusable(res, term, n, len(arrivals) == len(events))
    if why is not None:
        return RequestTiming(False, why, elapsed, n, None)
    token_at = [t for e, t in zip(events, arrivals, strict=True) if e.get("type") == "token"]
    spread = arrivals[-1] - arrivals[0] if arrivals else 0.0
    streamed = (len(token_at) >= 2 and spread >= STREAM_MIN_S
                and spread >= STREAM_MIN_SHARE * max(arrivals[-1], 1e-9))
    gaps = tuple(b - a for a, b in zip(token_at, token_at[1:], strict=False))
    ms = term.get("decode_time_ms") if term else None
    return RequestTiming(
        True, None, elapsed, n, token_at[0] if token_at else None, gaps, streamed,
        float(ms) if isinstance(ms, int | float) and not isinstance(ms, bool) else None)


def _unusable(res: Any, term: dict[str, Any] | None, n: Any, has_arrivals: bool) -> str | None:
    if getattr(res, "status_code", 0) != 200:
        return f"HTTP {getattr(res, 'status_code', 0)}"
    if getattr(res, "problems", None):
        return f"stream problem: {res.problems[0].message}"
    if term is None or term.get("type") != "end":
        msg = term.get("message") if term else "no terminal event"
        return f"no end event ({msg})"
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return "the worker log gave no tokens_generated for the request"
    if not has_arrivals:
        return "no arrival times recorded for the events"
    return None


def _pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def request_figures(timings: Sequence[RequestTiming],
                    min_samples: int = MIN_SAMPLES) -> dict[str, Figure]:
    """s_per_token, tokens/s, TTFT and ITL (when the worker streams) over measured requests."""
    ok = [t for t in timings if t.ok]
    out: dict[str, Figure] = {"requests": Figure("requests", float(len(timings)), None,
                                                 len(timings))}
    if len(ok) < min_samples:
        failed = sorted({t.why for t in timings if not t.ok and t.why})
        why = (f"{len(ok)} of {len(timings)} measured requests usable, at least {min_samples} "
               "needed" + (f": {'; '.join(failed[:3])}" if failed else ""))
        for name in ("s_per_token", "tokens_per_sec", "worker_tokens_per_sec", "ttft_s",
                     "itl_p50_s", "itl_p95_s"):
            out[name] = unavailable(name, why)
        return out
    out["s_per_token"] = summarise("s_per_token", [t.s_per_token or 0.0 for t in ok])
    out["tokens_per_sec"] = summarise("tokens_per_sec",
                                      [(t.tokens_generated or 0) / t.elapsed_s for t in ok
                                       if t.elapsed_s > 0])
    out["worker_tokens_per_sec"] = summarise(
        "worker_tokens_per_sec", [(t.tokens_generated or 0) * 1000.0 / t.decode_time_ms
                                  for t in ok if t.decode_time_ms], note="worker's own clock")
    out.update(_stream_figures(ok, min_samples))
    return out


def _stream_figures(ok: Sequence[RequestTiming], min_samples: int) -> dict[str, Figure]:
    names = ("ttft_s", "itl_p50_s", "itl_p95_s")
    if not all(t.streamed for t in ok):
        return {n: unavailable(n, AT_ONCE) for n in names}
    per_piece = "between token events (text pieces, not tokens)"
    p50s = [statistics.median(t.gaps_s) for t in ok if t.gaps_s]
    p95s = [_pct(t.gaps_s, 0.95) for t in ok if t.gaps_s]
    return {
        "ttft_s": summarise("ttft_s", [t.first_token_s for t in ok if t.first_token_s is not None],
                            min_samples=min_samples),
        "itl_p50_s": summarise("itl_p50_s", p50s, note=per_piece, min_samples=min_samples),
        "itl_p95_s": summarise("itl_p95_s", p95s, note=per_piece, min_samples=min_samples),
    }


# --------------------------------------------------------------------------- one run


@dataclass
class Measurement:
    """Raw samples of one measurement; `figures()` turns them into the recorded figures."""

    load_s: list[float] = field(default_factory=list)
    timings: list[RequestTiming] = field(default_factory=list)
    memory_ready: list[float] = field(default_factory=list)
    memory_peak: list[float] = field(default_factory=list)  # one peak per worker life
    memory_kind: str | None = None  # "RSS" | "VRAM"; None: memory not measurable here
    memory_why: str | None = None
    overhead_s: float | None = None

    def figures(self, min_samples: int = MIN_SAMPLES) -> dict[str, Figure]:
        out = {"load_s": summarise("load_s", self.load_s, min_samples=min_samples)}
        out.update(request_figures(self.timings, min_samples))
        kind = self.memory_kind
        why = self.memory_why or "memory not measurable on this backend"
        out["memory_ready"] = (summarise("memory_ready", self.memory_ready, note=kind,
                                         min_samples=min_samples)
                               if kind else unavailable("memory_ready", why))
        out["memory_peak"] = (summarise("memory_peak", self.memory_peak, note=kind,
                                        min_samples=min_samples)
                              if kind else unavailable("memory_peak", why))
        if self.overhead_s is not None:
            out["harness_overhead_s"] = Figure("harness_overhead_s", self.overhead_s, None, 1)
        return {n: out[n] for n in SPECS if n in out}


# --------------------------------------------------------------------------- display


def format_value(name: str, value: float | None) -> str:
    """A figure's value for people: ms below a second, MiB for bytes."""
    if value is None:
        return "unavailable"
    unit = SPECS[name].unit if name in SPECS else ""
    if unit in ("s", "s/token"):
        suffix = "/token" if unit == "s/token" else ""
        if abs(value) < 1.0:
            return f"{value * 1000:.3g} ms{suffix}"
        return f"{value:.3g} s{suffix}"
    if unit == "B":
        return f"{value / (1 << 20):.1f} MiB"
    if unit == "tok/s":
        return f"{value:.4g} tok/s"
    if unit == "count":
        return f"{value:g}"
    return f"{value:.4g}"


def figures_from_json(rows: Iterable[Mapping[str, Any]]) -> dict[str, Figure]:
    out = {}
    for raw in rows:
        fig = Figure.from_json(raw)
        out[fig.name] = fig
    return out


def best_of(first: Mapping[str, Figure], second: Mapping[str, Figure]) -> dict[str, Figure]:
    """Per judged figure the better of two measurements (the lower time or memory); the
    first measurement's for the rest. Used to confirm a suspected regression."""
    out = dict(first)
    for name, b in second.items():
        a = out.get(name)
        spec = SPECS.get(name)
        if spec is None or not spec.checked or b.value is None:
            continue
        if a is None or a.value is None:
            out[name] = b
        elif (b.value < a.value) == (spec.better == "lower"):
            out[name] = b
    return out
