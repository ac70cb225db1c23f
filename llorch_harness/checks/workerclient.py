"""Talk to a llorch-candled worker over HTTP/SSE without ever hanging or exhausting memory.

A gate run must survive a hostile worker: one that never answers, stalls after a
token, sends a 100 MB line or garbage. So `execute` parses SSE itself with a
byte cap per line and per body, and a watchdog thread enforces the first-event,
per-event and total deadlines by shutting the socket down (httpx timeouts are
per read, and closing a socket from another thread does not wake a blocked
read on Linux; `shutdown` does). Worker misbehaviour never raises: it is
recorded in the returned `StreamResult`.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from llorch_harness.checks.workerlog import GenerationFacts
from llorch_harness.pool.localhttp import local_client

EVENT_TYPES = frozenset({"started", "token", "metrics", "end", "error"})
TERMINAL_TYPES = frozenset({"end", "error"})
BODY_TEXT_LIMIT = 64 * 1024
CORRELATION_HEADER = "X-Correlation-ID"
_EXCERPT = 200
_MAX_PROBLEMS = 100
MAX_RAW_LINES = 200_000  # raw_lines keeps the first lines only; a flood must not eat memory
_INCOMPLETE = "\x00incomplete"  # sentinel compared by identity
# A llorch-candled worker sends nothing, not even headers, until the whole generation has
# ended (contract, HTTP): the deadline for the first event is the deadline for the whole
# generation, so it grows with max_tokens.
DEADLINE_BASE_S = 120.0
DEADLINE_PER_TOKEN_S = 2.0
_HEX = "[0-9a-fA-F]"
_UUID_RE = re.compile(f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}")


def is_uuid_shaped(value: str | None) -> bool:
    """36 characters, hyphens at 8/13/18/23, hex elsewhere: the only ids the worker echoes."""
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None


def generation_deadline(max_tokens: int | None) -> float:
    """Seconds a whole `/execute` may take: a base plus a budget per requested token."""
    n = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0
    return DEADLINE_BASE_S + DEADLINE_PER_TOKEN_S * n


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


class _Abort(Exception):
    """Raised inside the read loop to stop reading; the problem is already recorded."""


class Watchdog:
    """Enforces the deadlines httpx cannot: first event, gap between events, whole call."""

    def __init__(self, first_event_timeout: float, event_timeout: float, total_timeout: float):
        self.start = time.monotonic()
        self.first_event_timeout = first_event_timeout
        self.event_timeout = event_timeout
        self.total_timeout = total_timeout
        self.last_event: float | None = None
        self.after_terminal = False
        self.fired: StreamProblem | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llorch-sse-watchdog", daemon=True)

    def trace(self, name: str, info: dict[str, Any]) -> None:
        """httpcore trace hook: remember the socket as soon as it is connected."""
        if name == "connection.connect_tcp.complete":
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            with self._lock:
                self._sock = sock
                fired = self.fired is not None
            if fired:
                self._shutdown()

    def event_seen(self, terminal: bool = False) -> None:
        self.last_event = time.monotonic()
        if terminal:
            self.after_terminal = True

    def _due(self, now: float) -> tuple[float, StreamProblem | None]:
        total_left = self.start + self.total_timeout - now
        if total_left <= 0:
            return 0, StreamProblem(
                "deadline", f"total deadline of {self.total_timeout:g} s exceeded"
            )
        if self.last_event is None:
            left = self.start + self.first_event_timeout - now
            if left <= 0:
                return 0, StreamProblem(
                    "first_event_timeout",
                    f"no event within first_event_timeout={self.first_event_timeout:g} s "
                    "(the worker accepted the request but sent nothing)",
                )
        else:
            left = self.last_event + self.event_timeout - now
            if left <= 0:
                what = (
                    "the stream was not closed after the terminal event"
                    if self.after_terminal
                    else "the stream stalled between events"
                )
                return 0, StreamProblem(
                    "event_timeout",
                    f"no further event within event_timeout={self.event_timeout:g} s ({what})",
                )
        return min(left, total_left), None

    def _run(self) -> None:
        while not self._stop.is_set():
            wait, problem = self._due(time.monotonic())
            if problem is not None:
                with self._lock:
                    self.fired = problem
                self._shutdown()
                return
            self._stop.wait(min(wait, 0.2))

    def _shutdown(self) -> None:
        with self._lock:
            sock = self._sock
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _excerpt(data: bytes | str, limit: int = _EXCERPT) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


class _SSEParser:
    """Line-by-line SSE framing (spec: CRLF, LF or CR line ends; `data` lines joined by LF)."""

    def __init__(self, max_line_bytes: int, on_line: Callable[[str], None]) -> None:
        self.max_line_bytes = max_line_bytes
        self.on_line = on_line
        self._buf = bytearray()
        self._data: list[str] = []
        self._fields: list[str] = []
        self._first_line = True

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, list[str]]]:
        """Yield (data or None, field names) for each completed event."""
        self._buf += chunk
        start = 0
        try:
            while True:
                end = self._line_end(start)
                if end is None:
                    if len(self._buf) - start > self.max_line_bytes:
                        raise _LineTooLong(len(self._buf) - start)
                    return
                pos, width = end
                if pos - start > self.max_line_bytes:
                    raise _LineTooLong(pos - start)
                line = bytes(self._buf[start:pos])
                start = pos + width
                ev = self._line(line)
                if ev is not None:
                    yield ev
        finally:
            del self._buf[:start]  # once per chunk: a flood of short lines stays linear

    def _line_end(self, start: int) -> tuple[int, int] | None:
        n = self._buf.find(b"\n", start)
        r = self._buf.find(b"\r", start, n if n >= 0 else len(self._buf))
        if r >= 0:
            if r == len(self._buf) - 1:
                return None  # a CR at the end may be half of a CRLF: wait for more bytes
            return r, 2 if self._buf[r + 1] == 0x0A else 1
        return (n, 1) if n >= 0 else None

    def finish(self) -> Iterator[tuple[str | None, list[str]]]:
        """End of stream: a trailing CR ends its line; an unterminated event is reported."""
        if self._buf.endswith(b"\r"):
            line = bytes(self._buf[:-1])
            self._buf.clear()
            ev = self._line(line)
            if ev is not None:
                yield ev
        if self._buf:
            self.on_line(bytes(self._buf).decode("utf-8", "replace"))
            self._buf.clear()
        if self._data or self._fields:
            yield (_INCOMPLETE, list(self._fields))

    def _line(self, raw: bytes) -> tuple[str | None, list[str]] | None:
        if self._first_line and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        self._first_line = False
        line = raw.decode("utf-8", "replace")
        self.on_line(line)
        if line == "":
            if not self._data and not self._fields:
                return None
            data = "\n".join(self._data) if self._data else None
            fields = self._fields
            self._data, self._fields = [], []
            return (data, fields)
        if line.startswith(":"):
            return None  # comment / keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        self._fields.append(name if sep else line)
        return None


class _LineTooLong(Exception):
    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


class _Collector:
    """Turns SSE events into contract events and problems, with the per-call caps."""

    def __init__(self, max_events: int, watchdog: Watchdog, started: float):
        self.max_events = max_events
        self.watchdog = watchdog
        self.started = started
        self.events: list[dict] = []
        self.raw_lines: list[str] = []
        self.problems: list[StreamProblem] = []
        self.first_event_s: float | None = None
        self.sse_events = 0

    def keep_line(self, line: str) -> None:
        if len(self.raw_lines) < MAX_RAW_LINES:
            self.raw_lines.append(line)

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
        if data is _INCOMPLETE:
            self.watchdog.event_seen()
            self.problem(
                "incomplete_event",
                f"SSE event {n} was cut off by the end of the stream (no blank line after it)",
            )
            return
        if data is None:
            self.watchdog.event_seen()
            names = ", ".join(_excerpt(f, 60) for f in fields[:5])
            self.problem("no_data", f"SSE event {n} has no `data:` line (fields/lines: {names})")
            return
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as exc:  # deep nesting is the worker's fault
            self.watchdog.event_seen()
            self.problem("invalid_json",
                         f"SSE event {n}: `data:` is not valid JSON ({exc}): {_excerpt(data)}")
            return
        if not isinstance(obj, dict):
            self.watchdog.event_seen()
            self.problem("not_an_object", f"SSE event {n}: JSON is not an object: {_excerpt(data)}")
            return
        kind = obj.get("type")
        if kind is None:
            self.watchdog.event_seen()
            self.problem("missing_type", f"SSE event {n}: JSON has no `type`: {_excerpt(data)}")
            return
        if kind not in EVENT_TYPES:
            self.watchdog.event_seen()
            self.problem(
                "unknown_type",
                f"SSE event {n}: unknown type {_excerpt(str(kind), 60)} "
                f"(expected one of {sorted(EVENT_TYPES)})",
            )
            return
        self.events.append(obj)
        self.watchdog.event_seen(terminal=kind in TERMINAL_TYPES)


def _summarise(problems: list[StreamProblem]) -> str | None:
    if not problems:
        return None
    head = "; ".join(p.message for p in problems[:3])
    more = len(problems) - 3
    return head + (f" (and {more} more problems)" if more > 0 else "")


def read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    buf = bytearray()
    for chunk in response.iter_raw():
        buf += chunk
        if len(buf) > limit:
            return bytes(buf[:limit]), True
    return bytes(buf), False


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
    hdrs = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
    hdrs.update({k: v for k, v in (headers or {}).items()
                 if k.lower() != CORRELATION_HEADER.lower() or is_uuid_shaped(v)})
    sent_cid = next((v for k, v in hdrs.items() if k.lower() == CORRELATION_HEADER.lower()), None)
    if sent_cid is None:
        sent_cid = str(uuid.uuid4())
        hdrs[CORRELATION_HEADER] = sent_cid
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
    col = _Collector(max_events, wd, started)
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
    result.elapsed_s = time.monotonic() - started
    result.transport_error = _summarise(col.problems)
    return result


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
    parser = _SSEParser(max_line_bytes, col.keep_line)
    total = 0
    try:
        for chunk in response.iter_raw():
            total += len(chunk)
            if total > max_body_bytes:
                col.problem("body_too_large",
                            f"stream larger than max_body_bytes={max_body_bytes}; stopped reading")
                return
            for data, fields in parser.feed(chunk):
                col.add(data, fields)
        for data, fields in parser.finish():
            col.add(data, fields)
    except _LineTooLong as exc:
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
