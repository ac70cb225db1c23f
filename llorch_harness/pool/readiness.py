"""Knowing when a worker is ready: its callback, then a healthy /health.

The real worker POSTs its ready callback *before* it binds its port, so the
callback alone proves nothing; and a worker that dies while loading must be
reported at once, not after the ready timeout.

Every /health is asked with one whole-call deadline (`ask_health`), enforced by the
watchdog of `deadlines` (the worker client's too) that shuts the socket down: httpx's
timeouts are per read, so a worker trickling one byte every 0.1 s would defeat them
forever (issue 20 #10). The real llorch-candled answers nothing, not even /health, while
it generates, so a /health without an answer within the deadline means "busy generating,
or hung".
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from llorch_harness.deadlines import Watchdog, read_capped  # the one deadline mechanism
from llorch_harness.pool.localhttp import local_client
from llorch_harness.pool.procs import port_accepts

POLL_S = 0.01
POLL_AFTER_CALLBACK_S = 0.001  # the worker binds right after its callback: look closely
HEALTH_TIMEOUT_S = 0.3  # short, so a process exit is still seen within half a second
HEALTH_BODY_LIMIT = 64 * 1024  # a /health answer is a few bytes; more is read no further
NO_ANSWER = "no answer"


@dataclass
class Callback:
    payload: dict[str, Any]
    received_at: float  # time.monotonic()


@dataclass
class CallbackServer:
    """A tiny HTTP server on 127.0.0.1:0 in a thread; it records the worker's ready POST."""

    expected_worker_id: str
    host: str = "127.0.0.1"
    callbacks: list[Callback] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _event: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://{self.host}:{self._server.server_address[1]}/ready"

    def start(self) -> CallbackServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length > 0 else b""
                problem = owner._accept(body)
                status = 400 if problem else 200
                reply = json.dumps({"ok": not problem, "error": problem}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"callback-{self.expected_worker_id}", daemon=True,
        )
        self._thread.start()
        return self

    def _accept(self, body: bytes) -> str | None:
        """Check the contract's payload {worker_id, vram_bytes, uri}; a bad one is refused."""
        problem: str | None
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            problem = f"ready callback body is not JSON: {body[:200]!r}"
        else:
            problem = None
            if not isinstance(payload, dict):
                problem = "ready callback body is not a JSON object"
            elif payload.get("worker_id") != self.expected_worker_id:
                problem = (f"ready callback names worker {payload.get('worker_id')!r}, "
                           f"expected {self.expected_worker_id!r}")
            elif not isinstance(payload.get("vram_bytes"), int) or payload["vram_bytes"] < 0:
                problem = f"ready callback vram_bytes is not a u64: {payload.get('vram_bytes')!r}"
            elif not isinstance(payload.get("uri"), str):
                problem = "ready callback has no uri"
            if problem is None:
                self.callbacks.append(Callback(payload, time.monotonic()))
                self._event.set()
                return None
        self.problems.append(problem)
        self._event.set()
        return problem

    @property
    def received(self) -> Callback | None:
        return self.callbacks[0] if self.callbacks else None

    def close(self, wait: bool = False) -> None:
        """Stop serving. By default without blocking: shutdown() waits up to one poll
        interval, which would otherwise add ~50 ms to every spawn."""
        server, self._server = self._server, None
        if server is None:
            return

        def finish() -> None:
            server.shutdown()
            server.server_close()

        if wait:
            finish()
        else:
            threading.Thread(target=finish, name="callback-close", daemon=True).start()

    def __enter__(self) -> CallbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class NotReady(Exception):
    """Why a worker did not become ready; `exit_status` is set when it exited."""

    def __init__(self, reason: str, exit_status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status


@dataclass(frozen=True)
class Health:
    """One /health answer. state: healthy | unhealthy (it answered, not healthy) |
    no answer (nothing complete within the deadline: busy generating, or hung) |
    unreachable (refused, reset) | invalid (the uri itself is unusable)."""

    state: str
    detail: str

    @property
    def healthy(self) -> bool:
        return self.state == "healthy"


def health_url(base_uri: object) -> httpx.URL | None:
    """`base_uri` + /health if it is a usable http(s) URL with a host and a valid port."""
    if not isinstance(base_uri, str):
        return None
    try:
        url = httpx.URL(base_uri.rstrip("/") + "/health")
        if url.scheme not in ("http", "https") or not url.host:
            return None
        if url.port is not None and not 1 <= url.port <= 65535:
            return None
    except (httpx.InvalidURL, ValueError, TypeError, UnicodeError):
        return None
    return url


def ask_health(base_uri: object, deadline: float) -> Health:
    """GET /health, the whole call (connect, headers, body) within `deadline` seconds.

    Never raises. A deadline that is not a positive finite number is a bug of the caller.
    """
    if not (isinstance(deadline, int | float) and math.isfinite(deadline) and deadline > 0):
        raise ValueError(f"health deadline must be a positive number of seconds: {deadline!r}")
    url = health_url(base_uri)
    if url is None:
        return Health("invalid", f"unusable worker uri {str(base_uri)[:80]!r}")
    no_answer = Health(NO_ANSWER,
                       f"no answer within {deadline:.3g} s (busy generating, or hung)")
    wd = Watchdog(deadline, deadline, deadline)
    try:
        # a fresh client per call: the watchdog can only shut down a connection it saw open
        with wd, local_client(deadline) as client:
            req = client.build_request("GET", url, headers={"Accept-Encoding": "identity"},
                                       extensions={"trace": wd.trace})
            response = client.send(req, stream=True)
            try:
                status = response.status_code
                data, _ = read_capped(response, HEALTH_BODY_LIMIT)
            finally:
                response.close()
    except httpx.TimeoutException:
        return no_answer
    except (httpx.HTTPError, OSError) as exc:
        if wd.fired is not None:
            return no_answer
        return Health("unreachable", type(exc).__name__)
    if wd.fired is not None:
        return no_answer
    if status != 200:
        return Health("unhealthy", f"HTTP {status}")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return Health("unhealthy", "body is not JSON")
    value = obj.get("status") if isinstance(obj, dict) else None
    return Health("healthy" if value == "healthy" else "unhealthy",
                  f"status {str(value)[:40]!r}")


def check_health(base_uri: str, deadline: float = HEALTH_TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, detail) from GET /health within `deadline`; never raises."""
    h = ask_health(base_uri, deadline)
    return h.healthy, h.detail


def wait_ready(
    proc: subprocess.Popen[bytes], port: int, callback: CallbackServer, timeout: float,
    host: str = "127.0.0.1",
) -> float:
    """Block until callback + healthy /health; returns seconds waited. Raises NotReady.

    Each loop polls the process (exit seen within ~10 ms), a cheap TCP connect, and
    only once the port accepts, one short /health request.
    """
    if not (math.isfinite(timeout) and timeout > 0):
        raise NotReady(f"ready timeout {timeout!r} is not a positive number of seconds")
    t0 = time.monotonic()
    deadline = t0 + timeout
    last = "no ready callback yet"
    answered = False  # whether /health has answered at all (its words beat a cut-short poll)
    base = f"http://{host}:{port}"
    while True:
        status = proc.poll()
        if status is not None:
            raise NotReady(f"exited with status {status} before it was ready", status)
        if callback.problems:
            raise NotReady(callback.problems[0])
        left = deadline - time.monotonic()
        if left > 0 and port_accepts(port, host, timeout=min(HEALTH_TIMEOUT_S, left)):
            # whole-call deadline: a trickled answer cannot outlast the ready timeout
            left = max(deadline - time.monotonic(), 0.001)
            budget = min(HEALTH_TIMEOUT_S, left)
            health = ask_health(base, budget)
            if health.healthy and callback.received is not None:
                return time.monotonic() - t0
            cut_short = health.state == "no answer" and budget < HEALTH_TIMEOUT_S
            if not (cut_short and answered):  # a poll the ready deadline cut short says less
                last = (f"/health {health.detail}" if not health.healthy
                        else "/health is healthy but no ready callback arrived")
            answered = answered or health.state in ("healthy", "unhealthy")
        elif callback.received is not None and not answered:
            # once /health has answered, a connect cut short by the deadline says less
            last = "ready callback received, port not accepting connections yet"
        if time.monotonic() >= deadline:
            raise NotReady(f"not ready within {timeout:g} s ({last})")
        time.sleep(POLL_S if callback.received is None else POLL_AFTER_CALLBACK_S)
