"""The reference worker's HTTP side: `/health` and `/execute` exactly as llorch-candled answers.

Why stdlib `http.server`: no new dependencies, real sockets, one thread per connection;
requests to the model are still served one at a time (one lock), as the real worker does.
The whole generation finishes before the first SSE event is written (as at CP3), and an
inference failure is a 200 stream holding only an `error` event.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .engine import Engine, GenerationParams, GenerationResult
from .faults import Faults
from .logs import TARGET_BACKEND, TARGET_HTTP, JsonLogger
from .validation import ExecuteRequest, validate_execute

MAX_BODY_BYTES = 2 * 1024 * 1024  # axum's default body limit
VRAM_BYTES = 0  # a CPU worker holds no device memory
WARMUP_PROMPT = "Hello"
PANIC_LOCATION = "src/http/execute.rs:142:9"
ROUTES: dict[str, tuple[str, ...]] = {"/health": ("GET", "HEAD"), "/execute": ("POST",)}


def panic(message: str, location: str = PANIC_LOCATION) -> None:
    """Die the way a Rust panic does: text on stderr, exit status 101, no cleanup."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    text = (
        f"thread 'main' panicked at {location}:\n{message}\n"
        "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n"
    )
    try:
        os.write(2, text.encode())
    except OSError:
        pass
    os._exit(101)


class InferenceService:
    """Runs one request at a time and decides, per the fault switches, whether the request
    runs on a fresh KV cache or on the one an earlier pass left behind."""

    def __init__(self, engine: Engine, faults: Faults, log: JsonLogger) -> None:
        self.engine = engine
        self.faults = faults
        self.log = log
        self.lock = threading.Lock()
        self._last_prompt_len: int | None = None
        self._polluted_by_warmup = False
        self._never = threading.Event()

    def warm_up(self) -> None:
        """The cuda/metal warm-up pass over "Hello" whose KV cache is never reset."""
        with self.lock:
            result = self.engine.generate(
                WARMUP_PROMPT, GenerationParams(max_tokens=1, temperature=0.0)
            )
            self._last_prompt_len = result.prompt_tokens
            self._polluted_by_warmup = True
        self.log.info("Warm-up pass complete", target=TARGET_BACKEND, prompt=WARMUP_PROMPT)

    def _reuse_cache(self, prompt: str) -> bool:
        f = self.faults
        if self._polluted_by_warmup or (f.broadcast and f.drift):
            return True
        if not (f.broadcast or f.drift) or self._last_prompt_len is None:
            return False
        same_len = len(self.engine.encode(prompt)) == self._last_prompt_len
        return same_len if f.drift else not same_len

    def run(self, req: ExecuteRequest) -> GenerationResult:
        params = GenerationParams(
            max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
            top_k=req.top_k, min_p=req.min_p, repetition_penalty=req.repetition_penalty,
            seed=req.seed, stop=req.stop,
        )
        with self.lock:
            if self.faults.stall:
                self.log.info("stall fault: request accepted, never answered",
                              target=TARGET_BACKEND, job_id=req.job_id)
                self._never.wait()
            if self.faults.slow_execute > 0:
                time.sleep(self.faults.slow_execute)  # a generation that takes its time
            reuse = self._reuse_cache(req.prompt)
            self._polluted_by_warmup = False
            result = self.engine.generate(req.prompt, params, reuse_cache=reuse)
            self._last_prompt_len = result.prompt_tokens
            if self.faults.nan:
                self.log.warn("NaN detected in logits; sampling continued", target=TARGET_BACKEND,
                              job_id=req.job_id)
            return result


def sse_events(req: ExecuteRequest, model: str, result: GenerationResult,
               started_at: str) -> list[dict[str, Any]]:
    """The success stream: started, tokens, metrics, end."""
    events: list[dict[str, Any]] = [
        {"type": "started", "job_id": req.job_id, "model": model, "started_at": started_at}
    ]
    events += [{"type": "token", "t": t, "i": i} for i, t in enumerate(result.pieces)]
    n = len(result.pieces)
    decode = result.decode_seconds
    events.append({"type": "metrics", "tokens_per_sec": round(n / decode, 3) if decode > 0 else 0.0,
                   "vram_bytes": VRAM_BYTES})
    end: dict[str, Any] = {"type": "end", "tokens_out": n,
                           "decode_time_ms": int(round(decode * 1000)),
                           "stop_reason": result.stop_reason}
    if result.stop_reason == "stop_sequence":
        end["stop_sequence_matched"] = result.stop_sequence_matched
    events.append(end)
    return events


@dataclass
class ServerContext:
    """What the request handlers share: the model service, logging and the fault switches."""

    service: InferenceService
    log: JsonLogger
    worker_id: str
    model_name: str
    faults: Faults
    on_panic: Callable[[str], None] = panic
    executes_done: int = 0
    count_lock: threading.Lock = field(default_factory=threading.Lock)


class WorkerHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP/1.1 server that finishes in-flight requests and drops idle keep-alive
    connections on a graceful stop (like axum's `with_graceful_shutdown`)."""

    daemon_threads = False
    block_on_close = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, ctx: ServerContext) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.ctx = ctx
        self.closing = False
        self._conn_lock = threading.Lock()
        self._idle: dict[socket.socket, bool] = {}
        super().__init__((host, port), WorkerHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def mark(self, conn: socket.socket, idle: bool | None) -> None:
        with self._conn_lock:
            if idle is None:
                self._idle.pop(conn, None)
            else:
                self._idle[conn] = idle

    def begin_close(self) -> None:
        """Refuse further requests on open connections and wake the idle ones."""
        with self._conn_lock:
            self.closing = True
            idle = [c for c, is_idle in self._idle.items() if is_idle]
        for conn in idle:
            try:
                conn.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.ctx.log.warn("Connection error", target=TARGET_HTTP, peer=str(client_address),
                          error=repr(sys.exc_info()[1]))


class WorkerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: WorkerHTTPServer

    # -- connection bookkeeping -------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.server.mark(self.connection, True)

    def finish(self) -> None:
        self.server.mark(self.connection, None)
        super().finish()

    def handle_one_request(self) -> None:
        self.server.mark(self.connection, True)
        if self.server.closing:
            self.close_connection = True
            return
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs go through the JSON logger (per request), not stderr."""

    def send_response(self, code: int, message: str | None = None) -> None:
        """Status line and Date only: axum sends no Server header."""
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("date", self.date_time_string())

    # -- routing --------------------------------------------------------------------------

    def _route(self, method: str) -> None:
        self.server.mark(self.connection, False)
        self.correlation_id = self.headers.get("x-correlation-id") or str(uuid.uuid4())
        path = self.path.split("?", 1)[0]
        allowed = ROUTES.get(path)
        if allowed is None:
            self._discard_body()
            self._send_plain(HTTPStatus.NOT_FOUND, b"")
        elif method not in allowed:
            self._discard_body()
            self._send_plain(HTTPStatus.METHOD_NOT_ALLOWED, b"",
                             extra={"allow": ",".join(allowed)})
        elif path == "/health":
            body = {"status": "healthy", "vram_bytes": VRAM_BYTES}
            self._send_json(HTTPStatus.OK, body, head_only=(method == "HEAD"))
        else:
            self._execute()

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_OPTIONS(self) -> None:
        self._route("OPTIONS")

    # -- bodies -----------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """The request body, or None when it exceeds the cap (answered 413 here)."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        raw_len = self.headers.get("content-length")
        if raw_len is None:
            return b""
        try:
            length = int(raw_len)
            if length < 0:
                raise ValueError(raw_len)
        except ValueError:
            self.close_connection = True
            self._send_plain(HTTPStatus.BAD_REQUEST, b"invalid content-length")
            return None
        if length > MAX_BODY_BYTES:
            return self._too_large()
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes | None:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip() or b"x", 16)
            except ValueError:
                self.close_connection = True
                self._send_plain(HTTPStatus.BAD_REQUEST, b"invalid chunked body")
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                return self._too_large()
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _too_large(self) -> None:
        self.close_connection = True  # the unread body stays on the wire
        self._send_plain(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         b"Failed to buffer the request body: length limit exceeded")
        return None

    def _discard_body(self) -> None:
        raw_len = self.headers.get("content-length")
        if raw_len and raw_len.isdigit() and int(raw_len) <= MAX_BODY_BYTES:
            self.rfile.read(int(raw_len))
        elif raw_len or self.headers.get("transfer-encoding"):
            self.close_connection = True

    # -- responses ------------------------------------------------------------------------

    def _common_headers(self, extra: dict[str, str] | None = None) -> None:
        self.send_header("x-correlation-id", self.correlation_id)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.server.closing or self.close_connection:
            self.send_header("connection", "close")
            self.close_connection = True

    def _send_plain(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if body:
            self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self._common_headers(extra)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _send_json(self, status: int, obj: Any, head_only: bool = False) -> None:
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self._common_headers()
        self.end_headers()
        if not head_only:
            self.wfile.write(body)
        self.wfile.flush()

    def _send_sse(self, events: list[dict[str, Any]]) -> None:
        """Chunked, one chunk per event (as axum's `Sse`); HTTP/1.0 gets a close-delimited body."""
        chunked = self.request_version != "HTTP/1.0"
        self.send_response(HTTPStatus.OK)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        if chunked:
            self.send_header("transfer-encoding", "chunked")
        else:
            self.close_connection = True
        self._common_headers()
        self.end_headers()
        for event in events:
            data = f"data: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"
            chunk = data.encode()
            if chunked:
                chunk = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            self.wfile.write(chunk)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- /execute -------------------------------------------------------------------------

    def _execute(self) -> None:
        ctx = self.server.ctx
        raw = self._read_body()
        if raw is None:
            return
        checked = validate_execute(raw)
        if checked.request is None:
            ctx.log.info("Request validation failed", target=TARGET_HTTP,
                         correlation_id=self.correlation_id,
                         invalid_fields=[e.field for e in checked.errors])
            self._send_json(HTTPStatus.BAD_REQUEST, checked.body())
            return
        req = checked.request
        ctx.log.info("Execute request received", target=TARGET_HTTP, job_id=req.job_id,
                     correlation_id=self.correlation_id, prompt_chars=len(req.prompt),
                     max_tokens=req.max_tokens)
        started_at = datetime.now(UTC).isoformat()
        t0 = time.perf_counter()
        try:
            result = ctx.service.run(req)
        except Exception as err:  # every failure becomes an error event, never a dead worker
            message = str(err) or type(err).__name__
            ctx.log.warn("Inference failed", target=TARGET_HTTP, job_id=req.job_id,
                         error=message, correlation_id=self.correlation_id)
            events = [{"type": "error", "code": "INFERENCE_FAILED", "message": message}]
        else:
            events = sse_events(req, ctx.model_name, result, started_at)
            ctx.log.info("Inference completed", target=TARGET_HTTP, job_id=req.job_id,
                         tokens=len(result.pieces), prompt_tokens=result.prompt_tokens,
                         stop_reason=result.stop_reason,
                         duration_ms=int(round((time.perf_counter() - t0) * 1000)),
                         correlation_id=self.correlation_id)
        try:
            self._send_sse(events)
        except OSError as err:
            self.close_connection = True
            ctx.log.info("Client went away before the stream was sent", target=TARGET_HTTP,
                         job_id=req.job_id, error=str(err))
        with ctx.count_lock:
            ctx.executes_done += 1
            first = ctx.executes_done == 1
        if first and ctx.faults.panic_after_first:
            ctx.on_panic("index out of bounds: the len is 0 but the index is 0 "
                         "(fault switch panic_after_first)")
