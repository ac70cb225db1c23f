"""Talk to a llorch-candled worker over HTTP/SSE without ever hanging or exhausting memory.

A gate run must survive a hostile worker: one that never answers, stalls after a
token, sends a 100 MB line or garbage. So `execute` parses SSE itself (`sse`) with a
byte cap per line and per body, and a watchdog thread (`deadlines.Watchdog`) enforces
the first-event, per-event and total deadlines by shutting the socket down (httpx
timeouts are per read). What the result keeps (its events and the raw lines) stays
within the body cap: the raw lines are a diagnostic copy and give way to the events.
Worker misbehaviour never raises: it is recorded in the returned `StreamResult`.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import httpx

from llorch_harness.checks.sse import INCOMPLETE, LineTooLong, SSEParser
from llorch_harness.checks.streamresult import (
    EVENT_TYPES,
    TERMINAL_TYPES,
    ExecuteRequest,
    StreamProblem,
    StreamResult,
    is_uuid_shaped,
)
from llorch_harness.deadlines import Watchdog, read_capped
from llorch_harness.pool.localhttp import local_client

__all__ = [  # the request and result types live in streamresult; callers import them here
    "BODY_TEXT_LIMIT", "CORRELATION_HEADER", "DEADLINE_BASE_S", "DEADLINE_PER_TOKEN_S",
    "EVENT_TYPES", "MAX_RAW_LINES", "TERMINAL_TYPES", "ExecuteRequest", "StreamProblem",
    "StreamResult", "Watchdog", "execute", "generation_deadline", "health", "is_uuid_shaped",
    "read_capped",
]

BODY_TEXT_LIMIT = 64 * 1024
CORRELATION_HEADER = "X-Correlation-ID"
_EXCERPT = 200
_MAX_PROBLEMS = 100
MAX_RAW_LINES = 200_000  # raw_lines keeps the first lines only; a flood must not eat memory
_SLOT = 8  # a list slot, counted with each kept line or event
_ARRIVAL_SIZE = 32  # an event's arrival time: a float and its list slot
# A llorch-candled worker sends nothing, not even headers, until the whole generation has
# ended (contract, HTTP): the deadline for the first event is the deadline for the whole
# generation, so it grows with max_tokens.
DEADLINE_BASE_S = 120.0
DEADLINE_PER_TOKEN_S = 2.0


def generation_deadline(max_tokens: int | None) -> float:
    """Seconds a whole `/execute` may take: a base plus a budget per requested token."""
    n = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0
    return DEADLINE_BASE_S + DEADLINE_PER_TOKEN_S * n


class _Abort(Exception):
    """Raised inside the read loop to stop reading; the problem is already recorded."""


def _excerpt(data: bytes | str, limit: int = _EXCERPT) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def retained_size(obj: Any) -> int:
    """Bytes a parsed JSON value keeps alive: the object and everything in it (iterative,
    so a deeply nested value cannot exhaust the stack)."""
    total, todo = 0, [obj]
    while todo:
        item = todo.pop()
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return total


class _Collector:
    """Turns SSE events into contract events and problems, with the per-call caps.

    Memory: the events and the raw lines kept together stay within `budget` bytes (the
    body cap). The raw lines are a diagnostic copy of the same bytes, so when an event
    needs room, raw lines are dropped from the end (raw_lines keeps the first lines).
    """

    def __init__(self, max_events: int, watchdog: Watchdog, started: float, budget: int):
        self.max_events = max_events
        self.watchdog = watchdog
        self.started = started
        self.budget = budget
        self.retained = 0
        self.raw_full = False
        self.events: list[dict] = []
        self.raw_lines: list[str] = []
        self.problems: list[StreamProblem] = []
        self.first_event_s: float | None = None
        self.sse_events = 0
        self.arrival_s: list[float] = []  # parallel to events
        self.chunk_at: float | None = None  # when the read being parsed arrived

    def keep_line(self, line: str) -> None:
        if self.raw_full or len(self.raw_lines) >= MAX_RAW_LINES:
            return
        size = sys.getsizeof(line) + _SLOT
        if self.retained + size > self.budget:
            self.raw_full = True
            return
        self.raw_lines.append(line)
        self.retained += size

    def _make_room(self, size: int) -> bool:
        """Drop raw lines from the end until `size` more bytes fit; False if they cannot."""
        while self.retained + size > self.budget and self.raw_lines:
            self.retained -= sys.getsizeof(self.raw_lines.pop()) + _SLOT
            self.raw_full = True
        return self.retained + size <= self.budget

    def problem(self, kind: str, message: str) -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(StreamProblem(kind, message))

    def add(self, data: str | None, fields: list[str]) -> None:
        self.sse_events += 1
        n = self.sse_events
        if self.first_event_s is None:
            self.first_event_s = time.monotonic() - self.started
        if n > self.max_events:
            self.problem("too_many_events", f"more than max_events={self.max_events} events")
            raise _Abort
        obj = self._parse(data, fields, n)
        if obj is None:
            self.watchdog.event_seen()
            return
        size = retained_size(obj) + _SLOT + _ARRIVAL_SIZE
        if not self._make_room(size):
            self.problem("body_too_large",
                         f"the stream's events hold more than max_body_bytes={self.budget} "
                         "bytes in memory; stopped reading")
            raise _Abort
        self.retained += size
        self.events.append(obj)
        self.arrival_s.append((self.chunk_at or time.monotonic()) - self.started)
        self.watchdog.event_seen(terminal=obj["type"] in TERMINAL_TYPES)

    def _parse(self, data: str | None, fields: list[str], n: int) -> dict | None:
        """The event's JSON object when it is a contract event; else None, problem noted."""
        if data is INCOMPLETE:
            self.problem(
                "incomplete_event",
                f"SSE event {n} was cut off by the end of the stream (no blank line after it)",
            )
            return None
        if data is None:
            names = ", ".join(_excerpt(f, 60) for f in fields[:5])
            self.problem("no_data", f"SSE event {n} has no `data:` line (fields/lines: {names})")
            return None
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as exc:  # deep nesting is the worker's fault
            self.problem("invalid_json",
                         f"SSE event {n}: `data:` is not valid JSON ({exc}): {_excerpt(data)}")
            return None
        if not isinstance(obj, dict):
            self.problem("not_an_object", f"SSE event {n}: JSON is not an object: {_excerpt(data)}")
            return None
        kind = obj.get("type")
        if kind is None:
            self.problem("missing_type", f"SSE event {n}: JSON has no `type`: {_excerpt(data)}")
            return None
        if kind not in EVENT_TYPES:
            self.problem(
                "unknown_type",
                f"SSE event {n}: unknown type {_excerpt(str(kind), 60)} "
                f"(expected one of {sorted(EVENT_TYPES)})",
            )
            return None
        return obj


def _summarise(problems: list[StreamProblem]) -> str | None:
    if not problems:
        return None
    head = "; ".join(p.message for p in problems[:3])
    more = len(problems) - 3
    return head + (f" (and {more} more problems)" if more > 0 else "")



def execute(
    uri: str,
    request: ExecuteRequest | dict,
    *,
    first_event_timeout: float | None = None,
    event_timeout: float = 30.0,
    total_timeout: float | None = None,
    max_line_bytes: int = 1 << 20,
    max_events: int = 100_000,
    headers: dict | None = None,
    max_body_bytes: int = 64 << 20,
    connect_timeout: float = 10.0,
) -> StreamResult:
    """POST /execute and read the SSE answer under deadlines and caps; never raises for the worker.

    The total and first-event deadlines default to `generation_deadline(max_tokens)`: the
    worker is frozen while it generates and sends its first byte only at the end.
    A UUID correlation id is sent so the worker's answer can be matched to this call; a
    caller's id that is not UUID-shaped is replaced (the worker would not echo it).
    """
    body = request.to_json() if isinstance(request, ExecuteRequest) else dict(request)
    deadline = generation_deadline(body.get("max_tokens"))
    total_timeout = deadline if total_timeout is None else total_timeout
    first_event_timeout = total_timeout if first_event_timeout is None else first_event_timeout
    hdrs, sent_cid = _request_headers(headers)
    url = uri.rstrip("/") + "/execute"
    started = time.monotonic()
    result = StreamResult(
        status_code=0, events=[], raw_lines=[], correlation_id=None, elapsed_s=0.0,
        first_event_s=None, transport_error=None, request_json=body,
        request_correlation_id=sent_cid, uri=uri,
    )
    backstop = min(max(first_event_timeout, event_timeout), total_timeout) + 5.0
    timeout = httpx.Timeout(
        connect=min(connect_timeout, total_timeout), read=backstop, write=backstop, pool=backstop
    )
    wd = Watchdog(first_event_timeout, event_timeout, total_timeout)
    col = _Collector(max_events, wd, started, max_body_bytes)
    try:
        with wd, local_client(timeout) as client:
            _run_request(client, url, body, hdrs, wd, col, result, max_line_bytes, max_body_bytes)
    except Exception as exc:  # a client-side bug must still not hang or crash the gate
        col.problem("request", f"client error: {type(exc).__name__}: {exc}")
    fired = wd.fired
    if fired is not None and all(p.kind != fired.kind for p in col.problems):
        # a close-delimited body ends "normally" when the watchdog shuts the socket down
        col.problem(fired.kind, fired.message)
    result.events = col.events
    result.raw_lines = col.raw_lines
    result.problems = col.problems
    result.first_event_s = col.first_event_s
    result.arrival_s = col.arrival_s
    result.elapsed_s = time.monotonic() - started
    result.transport_error = _summarise(col.problems)
    return result


def _request_headers(headers: dict | None) -> tuple[dict, str]:
    """The request's headers and the correlation id they carry: the caller's when it is
    UUID-shaped (the worker echoes no other kind), else a fresh one."""
    hdrs = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
    hdrs.update({k: v for k, v in (headers or {}).items()
                 if k.lower() != CORRELATION_HEADER.lower() or is_uuid_shaped(v)})
    sent_cid = next((v for k, v in hdrs.items() if k.lower() == CORRELATION_HEADER.lower()), None)
    if sent_cid is None:
        sent_cid = str(uuid.uuid4())
        hdrs[CORRELATION_HEADER] = sent_cid
    return hdrs, sent_cid


def _run_request(
    client: httpx.Client, url: str, body: dict, hdrs: dict, wd: Watchdog, col: _Collector,
    result: StreamResult, max_line_bytes: int, max_body_bytes: int,
) -> None:
    try:
        req = client.build_request("POST", url, json=body, headers=hdrs,
                                   extensions={"trace": wd.trace})
        response = client.send(req, stream=True)
    except httpx.TimeoutException as exc:
        col.problem(*_timeout_problem(wd, "connect", f"{url}: {type(exc).__name__}: {exc}"))
        return
    except httpx.HTTPError as exc:
        _http_problem(wd, col, "connect",
                      f"{url}: {type(exc).__name__}: {exc or 'connection failed'}")
        return
    try:
        result.status_code = response.status_code
        result.correlation_id = response.headers.get(CORRELATION_HEADER)
        ctype = response.headers.get("content-type")
        result.content_type = ctype
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        is_sse = (ctype or "").split(";")[0].strip().lower() == "text/event-stream"
        if encoding not in ("", "identity"):
            col.problem("content_encoding",
                        f"Content-Encoding {encoding!r} although identity was asked for")
            return
        if response.status_code != 200 or not is_sse:
            if response.status_code == 200:
                col.problem("content_type",
                            f"HTTP 200 with Content-Type {ctype!r}, expected text/event-stream")
            _read_body_text(response, result, wd, col)
            return
        _read_sse(response, wd, col, max_line_bytes, max_body_bytes)
    finally:
        response.close()


def _timeout_problem(wd: Watchdog, phase: str, text: str) -> tuple[str, str]:
    fired = wd.fired
    if fired is not None:
        return fired.kind, fired.message
    return ("read" if phase != "connect" else "connect"), f"timed out ({phase}): {text}"


def _read_body_text(response: httpx.Response, result: StreamResult, wd: Watchdog,
                    col: _Collector) -> None:
    try:
        data, truncated = read_capped(response, BODY_TEXT_LIMIT)
    except httpx.HTTPError as exc:
        col.problem(*_timeout_problem(wd, "read", f"reading the body: {exc}"))
        return
    text = data.decode("utf-8", "replace")
    result.body_text = text + ("\n[truncated at 64 KiB]" if truncated else "")
    if not truncated:
        try:
            result.body_json = json.loads(text)
        except ValueError:
            result.body_json = None


def _read_sse(response: httpx.Response, wd: Watchdog, col: _Collector, max_line_bytes: int,
              max_body_bytes: int) -> None:
    parser = SSEParser(max_line_bytes, col.keep_line)
    total = 0
    try:
        for chunk in response.iter_raw():
            col.chunk_at = time.monotonic()
            total += len(chunk)
            if total > max_body_bytes:
                col.problem("body_too_large",
                            f"stream larger than max_body_bytes={max_body_bytes}; stopped reading")
                return
            for data, fields in parser.feed(chunk):
                col.add(data, fields)
        for data, fields in parser.finish():
            col.add(data, fields)
    except LineTooLong as exc:
        col.problem("line_too_long",
                    f"an SSE line exceeded max_line_bytes={max_line_bytes} "
                    f"({exc.size} bytes buffered without a line end); stopped reading")
    except _Abort:
        return
    except httpx.HTTPError as exc:
        _http_problem(wd, col, "read", f"stream broke: {type(exc).__name__}: {exc}")


def _http_problem(wd: Watchdog, col: _Collector, kind: str, text: str) -> None:
    """An httpx error is the watchdog's deadline when it fired (it closed the socket)."""
    fired = wd.fired
    if fired is not None:
        col.problem(fired.kind, fired.message)
    else:
        col.problem(kind, text)


def health(uri: str, timeout: float = 5.0) -> dict | None:
    """GET /health; the JSON object on HTTP 200, None on anything else (never raises, never hangs).

    `timeout` bounds the whole call, so a worker that trickles bytes cannot stall a readiness poll.
    """
    wd = Watchdog(timeout, timeout, timeout)
    try:
        with wd, local_client(timeout) as client:
            req = client.build_request("GET", uri.rstrip("/") + "/health",
                                       headers={"Accept-Encoding": "identity"},
                                       extensions={"trace": wd.trace})
            response = client.send(req, stream=True)
            try:
                if response.status_code != 200:
                    return None
                data, truncated = read_capped(response, BODY_TEXT_LIMIT)
            finally:
                response.close()
        if truncated:
            return None
        obj = json.loads(data)
    except (httpx.HTTPError, ValueError, OSError):
        return None
    return obj if isinstance(obj, dict) else None
