"""The reference worker's HTTP side: `/health` and `/execute` exactly as llorch-candled answers.

Why stdlib `http.server`: no new dependencies, real sockets. The real worker runs on a
single-threaded tokio runtime whose generation loop never yields, so **while a generation
runs the whole process is frozen**: `/health`, new requests and SIGINT wait until it ends.
Here one process-wide lock (`ServerContext.freeze`) is taken around the handling of every
request, while the server stays threaded so that idle keep-alive connections (which hold no
lock) never block anyone. The status line and headers of `/execute` are written after the
generation ends, then every event at once.

Request flow of `POST /execute` (axum + http/execute.rs): the `Json` extractor first
(415 / 413 / 400 / 422, text/plain, nothing logged; jsonbody.py), then `validate_all`
(400 JSON `{"errors": [...]}` and WARN "Validation failed" {job_id} plus a narration), then
INFO "Inference request validated" {job_id} plus a narration, then the generation
(service.py). `X-Correlation-ID` is echoed only when UUID-shaped, else a fresh UUIDv4.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llorch_harness.lab.refworker import narration
from llorch_harness.lab.refworker.faults import Faults
from llorch_harness.lab.refworker.jsonbody import (
    JSON_CONTENT_TYPE_MESSAGE,
    JsonRejection,
    extract_execute,
    is_json_content_type,
)
from llorch_harness.lab.refworker.logs import JsonLogger
from llorch_harness.lab.refworker.service import InferenceService
from llorch_harness.lab.refworker.validation import errors_body, validate_all

MAX_BODY_BYTES = 2 * 1024 * 1024  # axum's default body limit
PANIC_LOCATION = "src/http/execute.rs:142:9"
ROUTES: dict[str, tuple[str, ...]] = {"/health": ("GET", "HEAD"), "/execute": ("POST",)}
_HEX = frozenset("0123456789abcdefABCDEF")


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


def is_uuid_shaped(value: str | None) -> bool:
    """narration-core's `validate_correlation_id`: 36 chars, hyphens at 8/13/18/23, hex."""
    if value is None or len(value) != 36:
        return False
    return all((ch == "-") if i in (8, 13, 18, 23) else (ch in _HEX)
               for i, ch in enumerate(value))


@dataclass
class ServerContext:
    """What the request handlers share: the model service, logging and the fault switches."""

    service: InferenceService
    log: JsonLogger
    worker_id: str
    model_name: str
    faults: Faults
    vram_bytes: int = 0  # what /health reports (`vram_usage()`)
    freeze: threading.Lock = field(default_factory=threading.Lock)
    on_panic: Callable[[str], None] = panic
    executes_done: int = 0
    stop: list[bool] = field(default_factory=list)  # SIGINT seen (a plain flag: no locks)


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
        """A broken connection is not logged (hyper's connection errors are silent)."""


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
        """No access log: the real worker has none."""

    def send_response(self, code: int, message: str | None = None) -> None:
        """Status line and Date only: axum sends no Server header."""
        self.send_response_only(code, message)
        self.send_header("date", self.date_time_string())

    # -- routing --------------------------------------------------------------------------

    def _route(self, method: str) -> None:
        """Every request runs under the process-wide lock (the frozen single thread)."""
        self.server.mark(self.connection, False)
        ctx = self.server.ctx
        waited = not ctx.freeze.acquire(blocking=False)
        if waited:
            ctx.freeze.acquire()
        try:
            if waited and ctx.faults.concurrent_drift:
                ctx.service.mark_dirty()  # fault: a request that queued runs on a stale cache
            cid = self.headers.get("x-correlation-id")
            self.correlation_id = cid if is_uuid_shaped(cid) else str(uuid.uuid4())
            self._dispatch(method)
        finally:
            ctx.freeze.release()

    def _dispatch(self, method: str) -> None:
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
            self._health(head_only=(method == "HEAD"))
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
        """The request body, or None when it was already answered (413 / bad framing)."""
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
            self._too_large()
            return None
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
                self._too_large()
                return None
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _too_large(self) -> None:
        self.close_connection = True  # the unread body stays on the wire
        self._send_plain(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         b"Failed to buffer the request body: length limit exceeded")

    def _discard_body(self) -> None:
        raw_len = self.headers.get("content-length")
        if raw_len and raw_len.isdigit() and int(raw_len) <= MAX_BODY_BYTES:
            self.rfile.read(int(raw_len))
        elif raw_len or self.headers.get("transfer-encoding"):
            self.close_connection = True

    # -- responses ------------------------------------------------------------------------

    def _common_headers(self, extra: dict[str, str] | None = None) -> None:
        self.send_header("x-correlation-id", self.correlation_id or str(uuid.uuid4()))
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

    # -- /health and /execute ----------------------------------------------------------------

    def _health(self, head_only: bool) -> None:
        """http/health.rs: always healthy; one narration line per call."""
        ctx = self.server.ctx
        narration.health_check(ctx.log, "healthy", ctx.vram_bytes)
        self._send_json(HTTPStatus.OK, {"status": "healthy", "vram_bytes": ctx.vram_bytes},
                        head_only=head_only)

    def _execute(self) -> None:
        ctx = self.server.ctx
        content_type = self.headers.get("content-type")
        if not is_json_content_type(content_type):  # axum checks it before reading the body
            self._discard_body()
            self._send_plain(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, JSON_CONTENT_TYPE_MESSAGE.encode())
            return
        raw = self._read_body()
        if raw is None:
            return
        try:
            req = extract_execute(content_type, raw)
        except JsonRejection as rejected:
            if ctx.faults.dirty_after_reject:
                ctx.service.mark_dirty()
            self._send_plain(rejected.status, rejected.text.encode())
            return
        errors = validate_all(req)
        if errors:
            if ctx.faults.dirty_after_reject:
                ctx.service.mark_dirty()
            ctx.log.warn("Validation failed", job_id=req.job_id)
            narration.validation_failed(ctx.log, req.job_id)
            self._send_json(HTTPStatus.BAD_REQUEST, errors_body(errors))
            return
        ctx.log.info("Inference request validated", job_id=req.job_id)
        narration.execute_request(ctx.log, req.job_id)
        events = ctx.service.run(req, ctx.model_name)
        try:
            self._send_sse(events)
        except OSError:
            self.close_connection = True  # the client went away; the real worker logs nothing
        ctx.executes_done += 1
        if ctx.executes_done == 1 and ctx.faults.panic_after_first:
            ctx.on_panic("index out of bounds: the len is 0 but the index is 0 "
                         "(fault switch panic_after_first)")
