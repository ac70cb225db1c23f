"""What one `/execute` call sent and got back: the request body, problems, the result.

Why apart from the client: the checks (streamcheck, errorscan, agreement, inference
checks) read results without ever making a request, and reports build them from JSON.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from llorch_harness.checks.workerlog import GenerationFacts

EVENT_TYPES = frozenset({"started", "token", "metrics", "end", "error"})
TERMINAL_TYPES = frozenset({"end", "error"})
_HEX = "[0-9a-fA-F]"
_UUID_RE = re.compile(f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}")


def is_uuid_shaped(value: str | None) -> bool:
    """36 characters, hyphens at 8/13/18/23, hex elsewhere: the only ids the worker echoes."""
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None


@dataclass
class ExecuteRequest:
    """The contract's `/execute` body; None fields are omitted so the worker's defaults apply."""

    job_id: str
    prompt: str
    max_tokens: int
    temperature: float | None = 0.0
    seed: int | None = 42
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: list[str] | None = None
    min_p: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class StreamProblem:
    """One thing wrong with the answer; `kind` is stable for code, `message` is for people."""

    kind: str  # connect | read | first_event_timeout | event_timeout | deadline | line_too_long
    #            | body_too_large | too_many_events | content_type | content_encoding
    #            | invalid_json | not_an_object | missing_type | unknown_type | no_data | request
    message: str


@dataclass
class StreamResult:
    """Everything one `/execute` call produced, valid events and problems alike."""

    status_code: int  # 0 when no HTTP answer came at all
    events: list[dict]
    raw_lines: list[str]
    correlation_id: str | None
    elapsed_s: float
    first_event_s: float | None
    transport_error: str | None
    body_text: str | None = None
    body_json: Any = None
    content_type: str | None = None
    problems: list[StreamProblem] = field(default_factory=list)
    request_json: dict | None = None
    request_correlation_id: str | None = None
    uri: str | None = None
    log: GenerationFacts | None = None  # what the worker's log says of this job, when read
    # seconds from the request's start at which the bytes of each of `events` arrived (the
    # client's monotonic clock; events parsed from one read share its time): what a user
    # waits for, not the worker's own decode_time_ms (llorch_harness.perf.figures)
    arrival_s: list[float] = field(default_factory=list)

    @property
    def tokens_generated(self) -> int | None:
        """Sampled tokens per the worker log (token events are pieces, not tokens)."""
        return self.log.tokens_generated if self.log is not None else None

    @property
    def tokens(self) -> list[str]:
        return [e.get("t") for e in self.events if e.get("type") == "token"]  # type: ignore[misc]

    @property
    def text(self) -> str:
        return "".join(t for t in self.tokens if isinstance(t, str))

    @property
    def terminal(self) -> dict | None:
        """The first terminal event (`end` or `error`); streamcheck reports any extra ones."""
        for e in self.events:
            if e.get("type") in TERMINAL_TYPES:
                return e
        return None

    @property
    def error_event(self) -> dict | None:
        for e in self.events:
            if e.get("type") == "error":
                return e
        return None

    @property
    def errors(self) -> list[dict]:
        """The `errors` list of a 400 answer (empty otherwise)."""
        if isinstance(self.body_json, dict) and isinstance(self.body_json.get("errors"), list):
            return [e for e in self.body_json["errors"] if isinstance(e, dict)]
        return []

    @property
    def job_id(self) -> str | None:
        return (self.request_json or {}).get("job_id")

    @property
    def tokens_per_sec(self) -> float | None:
        """Generated tokens per second: the log's count over the worker's decode time, else
        a `metrics` event (older builds), else pieces over the whole request (a lower bound)."""
        end = self.terminal if self.terminal and self.terminal.get("type") == "end" else {}
        ms = end.get("decode_time_ms")
        n = self.tokens_generated
        if n and isinstance(ms, int | float) and not isinstance(ms, bool) and ms > 0:
            return n / (ms / 1000.0)
        for e in self.events:
            v = e.get("tokens_per_sec") if e.get("type") == "metrics" else None
            if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
                return float(v)
        pieces = len(self.tokens)
        if pieces and self.elapsed_s > 0:
            return pieces / self.elapsed_s
        return None

    def summary(self) -> dict:
        """A JSON-able digest for reports."""
        term = self.terminal
        return {
            "job_id": self.job_id,
            "status_code": self.status_code,
            "tokens": self.tokens,
            "text": self.text,
            "terminal": term,
            "tokens_per_sec": self.tokens_per_sec,
            "tokens_generated": self.tokens_generated,
            "elapsed_s": round(self.elapsed_s, 3),
            # not a time to first token: at CP3 the worker sends every event at once after
            # the whole generation, so this is the generation's duration as the client saw it
            "first_event_s": None if self.first_event_s is None else round(self.first_event_s, 3),
            "correlation_id": self.correlation_id,
            "transport_error": self.transport_error,
            "log": self.log.to_json() if self.log is not None else None,
        }
