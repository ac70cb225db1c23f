"""Small real HTTP servers on 127.0.0.1 that answer /execute well or badly on purpose.

The worker client and the checks must be proven against real sockets, not mocks:
each server here runs in a thread on an OS-chosen port, records what it was
sent, and stops (joining every handler thread) in teardown. Handlers that hang
on purpose wait on the server's stop event so that nothing outlives the test.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from llorch_harness.checks.workerclient import is_uuid_shaped

Behaviour = Callable[["Handler"], None]
BROADCAST_MESSAGE = "cannot broadcast [5, 5] to [1, 14, 5, 10]"  # candle's text (other builds)
QWEN_FAILURE_MESSAGE = "Forward pass failed: Qwen forward pass failed"  # what CP3 sends for Qwen
HANG_LIMIT_S = 30.0  # a hanging handler gives up by itself even if stop() is never called


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads
    allow_reuse_address = True

    def __init__(self, behaviour: Behaviour):
        super().__init__(("127.0.0.1", 0), Handler)
        self.behaviour = behaviour
        self.stop_event = threading.Event()
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hang up on purpose in these tests


class Handler(BaseHTTPRequestHandler):
    """Reads the request, then lets the behaviour write whatever it wants."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> Any:
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", "replace")

    def do_GET(self) -> None:
        self._dispatch(None)

    def do_POST(self) -> None:
        self._dispatch(self._read_body())

    def _dispatch(self, body: Any) -> None:
        self.body = body
        with self.server.lock:
            self.server.requests.append(
                {"method": self.command, "path": self.path, "headers": dict(self.headers),
                 "body": body}
            )
            self.request_no = len(self.server.requests)
        self.close_connection = True
        try:
            self.server.behaviour(self)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            pass

    # -- helpers for behaviours -------------------------------------------------------------

    @property
    def stop_event(self) -> threading.Event:
        return self.server.stop_event

    def answer_correlation_id(self) -> str:
        return echo_correlation_id(self.headers.get("x-correlation-id"))

    def hang(self) -> None:
        self.stop_event.wait(HANG_LIMIT_S)

    def start_sse(self, content_type: str = "text/event-stream", status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.send_header("X-Correlation-ID", self.answer_correlation_id())
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def event(self, obj: dict) -> None:
        self.chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def events(self, objs: Iterable[dict]) -> None:
        for obj in objs:
            self.event(obj)
        self.end_chunks()

    def send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.send_header("X-Correlation-ID", self.answer_correlation_id())
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


class SSEServer:
    """Context manager: a real server on 127.0.0.1:<free port> running `behaviour` per request."""

    def __init__(self, behaviour: Behaviour):
        self._server = _Server(behaviour)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._server.lock:
            return list(self._server.requests)

    def start(self) -> SSEServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stop_event.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(10)
        self._server.server_close()  # joins handler threads

    def __enter__(self) -> SSEServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- canned streams ---------------------------------------------------------------------------

def good_events(job_id: str, tokens: list[str], *, stop_reason: str | None = None,
                metrics: bool | None = None, legacy: bool = False) -> list[dict]:
    """A successful stream as the real llorch-candled sends it (contract, HTTP): `started`
    with model "model" and started_at "0", the pieces, `end` with "MAX_TOKENS", no metrics.
    `legacy=True` gives the older format (timestamps, a metrics event, snake_case)."""
    evs: list[dict] = [{"type": "started", "job_id": job_id,
                        "model": "stub-model" if legacy else "model",
                        "started_at": "2026-11-28T12:00:00Z" if legacy else "0"}]
    evs += [{"type": "token", "t": t, "i": i} for i, t in enumerate(tokens)]
    if legacy if metrics is None else metrics:
        evs.append({"type": "metrics", "tokens_per_sec": 42.5, "vram_bytes": 0})
    reason = stop_reason or ("max_tokens" if legacy else "MAX_TOKENS")
    evs.append({"type": "end", "tokens_out": len(tokens), "decode_time_ms": 12,
                "stop_reason": reason})
    return evs


def pieces_of(tokens: list[str]) -> list[str]:
    """Token texts joined as candle's TokenOutputStream streams them: a piece is emitted when
    the text ends in an alphanumeric character; what is left is flushed at the end."""
    pieces: list[str] = []
    pending = ""
    for tok in tokens:
        pending += tok
        if pending and pending[-1].isalnum():
            pieces.append(pending)
            pending = ""
    if pending:
        pieces.append(pending)
    return pieces


def echo_correlation_id(sent: str | None) -> str:
    """What the real worker answers: a UUID-shaped id echoed, anything else replaced."""
    return sent if is_uuid_shaped(sent) else str(uuid.uuid4())


def _job(h: Handler) -> str:
    return h.body.get("job_id", "job") if isinstance(h.body, dict) else "job"


def _max_tokens(h: Handler, default: int = 3) -> int:
    v = h.body.get("max_tokens") if isinstance(h.body, dict) else None
    return v if isinstance(v, int) else default


def b_good(h: Handler) -> None:
    h.start_sse()
    h.events(good_events(_job(h), ["Hello", ",", " world"][: _max_tokens(h)]))


def b_no_data(h: Handler) -> None:
    h.start_sse()
    h.event(good_events(_job(h), [])[0])
    h.chunk(b'{"type":"token","t":"x","i":0}\n\n')
    h.chunk(b"event: token\n\n")
    h.events(good_events(_job(h), [])[-1:])


def b_invalid_json(h: Handler) -> None:
    h.start_sse()
    h.event(good_events(_job(h), [])[0])
    h.chunk(b'data: {"type":"token","t":"x",\n\n')
    h.events(good_events(_job(h), [])[-1:])


def b_unknown_type(h: Handler) -> None:
    h.start_sse()
    evs = good_events(_job(h), ["a"])
    h.event(evs[0])
    h.event({"type": "bogus", "x": 1})
    h.events(evs[1:])


def b_huge_line(h: Handler) -> None:
    """A 100 MB `data:` line, produced lazily: at most one 64 KiB block exists at a time."""
    h.start_sse()
    h.chunk(b"data: ")
    block = b"x" * (64 * 1024)
    for _ in range((100 * 1024 * 1024) // len(block)):
        if h.stop_event.is_set():
            return
        h.chunk(block)
    h.chunk(b"\n\n")
    h.end_chunks()


def b_never_answer(h: Handler) -> None:
    h.hang()


def b_stall_after_token(h: Handler) -> None:
    h.start_sse()
    evs = good_events(_job(h), ["one"])
    h.event(evs[0])
    h.event(evs[1])
    h.hang()


def b_trickle(h: Handler) -> None:
    """A token every 0.2 s, forever: only the total deadline stops it."""
    h.start_sse()
    h.event(good_events(_job(h), [])[0])
    i = 0
    while not h.stop_event.wait(0.2):
        h.event({"type": "token", "t": "x", "i": i})
        i += 1


def b_bad_request(h: Handler) -> None:
    h.send_json(400, {"errors": [{"field": "max_tokens", "constraint": "range(1..=2048)",
                                  "message": "max_tokens must be between 1 and 2048",
                                  "value": "0"}]})


def b_broadcast_error(h: Handler) -> None:
    h.start_sse()
    h.events([{"type": "error", "code": "INFERENCE_FAILED", "message": BROADCAST_MESSAGE}])


def b_frozen(h: Handler) -> None:
    """The real worker: nothing at all (not even headers) until the generation ends."""
    h.stop_event.wait(1.5)
    b_good(h)


def b_qwen_error(h: Handler) -> None:
    h.start_sse()
    h.events([{"type": "error", "code": "INFERENCE_FAILED", "message": QWEN_FAILURE_MESSAGE}])


def b_missing_terminal(h: Handler) -> None:
    h.start_sse()
    h.events(good_events(_job(h), ["a", "b"])[:-1])


def b_two_terminals(h: Handler) -> None:
    h.start_sse()
    evs = good_events(_job(h), ["a", "b"])
    h.events([*evs, evs[-1]])


def b_bad_indices(h: Handler) -> None:
    h.start_sse()
    evs = good_events(_job(h), ["a", "b", "c"])
    evs[3]["i"] = 3
    h.events(evs)


def b_not_sse(h: Handler) -> None:
    h.send_json(200, {"text": "hello"})


def b_many_events(h: Handler) -> None:
    h.start_sse()
    h.events(good_events(_job(h), ["x"] * 50))


def b_open_after_end(h: Handler) -> None:
    h.start_sse()
    for ev in good_events(_job(h), ["a"]):
        h.event(ev)
    h.hang()


def b_close_delimited(h: Handler) -> None:
    """HTTP/1.0 style: no length, no chunking, the body ends when the socket closes."""
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream")
    h.send_header("Connection", "close")
    h.end_headers()
    for ev in good_events(_job(h), ["a", "b"]):
        h.wfile.write(b"data: " + json.dumps(ev).encode() + b"\r\n\r\n")
    h.wfile.flush()


def b_newline_flood(h: Handler) -> None:
    """4 MiB of empty lines before a good stream: parsing must stay linear and memory capped."""
    h.start_sse()
    block = b"\n" * (64 * 1024)
    for _ in range(64):
        if h.stop_event.is_set():
            return
        h.chunk(block)
    h.events(good_events(_job(h), ["a"]))


BEHAVIOURS: dict[str, Behaviour] = {
    "good": b_good,
    "no_data": b_no_data,
    "invalid_json": b_invalid_json,
    "unknown_type": b_unknown_type,
    "huge_line": b_huge_line,
    "never_answer": b_never_answer,
    "stall_after_token": b_stall_after_token,
    "trickle": b_trickle,
    "bad_request": b_bad_request,
    "broadcast_error": b_broadcast_error,
    "qwen_error": b_qwen_error,
    "frozen": b_frozen,
    "missing_terminal": b_missing_terminal,
    "two_terminals": b_two_terminals,
    "bad_indices": b_bad_indices,
    "not_sse": b_not_sse,
    "many_events": b_many_events,
    "open_after_end": b_open_after_end,
    "close_delimited": b_close_delimited,
    "newline_flood": b_newline_flood,
}


def sse_server(name: str) -> SSEServer:
    return SSEServer(BEHAVIOURS[name])


# -- a stub worker that follows the contract, with switchable faults ----------------------------

_VOCAB = ["the", " cat", " sat", " on", " a", " mat", ",", " and", " then", " it", " slept",
          ".", " Hello", " world", " I", " am", " fine", " thanks", "!", " you"]


class StubWorker:
    """A fake worker that speaks the real wire (deterministic tokens from prompt, seed and
    index; pieces as TokenOutputStream joins them; the real per-request log lines).

    Faults (a set of names) reproduce the ways a real worker fails the gate:
    `drift` greedy tokens change after the first request (polluted KV cache);
    `broadcast` a request whose prompt length differs from the previous one fails
    with candle's broadcast text in the error event and a WARN log line (other builds);
    `qwen_cache_bug` the CP3 Qwen path: every request logs WARN "Cache reset not
    implemented for Qwen", and from the second request on every prompt of two or more
    words fails with "Forward pass failed: Qwen forward pass failed";
    `seed_ignored` sampled tokens do not depend on the seed; `sampling_random` sampled
    tokens change every time; `bad_tokens_out` the end event miscounts; `panic_log` a
    panic line is logged (but the stream is fine); `nan_log` a NaN warning is logged;
    `eos_early` greedy generation ends after half of max_tokens (EOS);
    `log_overcount` the log claims more generated tokens than max_tokens;
    `log_pieces_mismatch` the log's piece count disagrees with the token events;
    `empty_pieces` every piece is empty; `legacy` the older per-token wire.
    """

    def __init__(self, faults: Iterable[str] = (), log_path: Path | None = None):
        self.faults = set(faults)
        self.log_path = log_path
        self._count = 0
        self._last_prompt_len: int | None = None
        self._lock = threading.Lock()
        self.server = SSEServer(self._handle)
        self.url = self.server.url

    def __enter__(self) -> StubWorker:
        if self.log_path is not None:
            self.log_path.touch()
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def _write(self, obj: dict[str, Any]) -> None:
        if self.log_path is None:
            return
        with self._lock, open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")

    def log(self, level: str, message: str, **fields: Any) -> None:
        """A tracing line, as `tracing_subscriber::fmt().json()` writes it."""
        self._write({"timestamp": "2026-11-28T12:00:00Z", "level": level,
                     "fields": {"message": message, **fields}})

    def narrate(self, actor: str, action: str, human: str, **fields: Any) -> None:
        """A narration line: INFO, no `message`, `actor`/`action`/`human`/`cute`."""
        self._write({"timestamp": "2026-11-28T12:00:00Z", "level": "INFO",
                     "fields": {"actor": actor, "action": action, "target": "t",
                                "human": human, "cute": "🎉", **fields}})

    @staticmethod
    def tokens_for(prompt: str, n: int, salt: str) -> list[str]:
        out = []
        for i in range(n):
            d = hashlib.sha256(f"{prompt}|{salt}|{i}".encode()).digest()
            out.append(_VOCAB[d[0] % len(_VOCAB)])
        return out

    def _handle(self, h: Handler) -> None:
        if h.command == "GET":
            self.narrate("http-server", "health_check", "Health check: healthy")
            h.send_json(200, {"status": "healthy", "vram_bytes": 0})
            return
        body = h.body if isinstance(h.body, dict) else {}
        errors = _validation_errors(body)
        if errors:
            self.log("WARN", "Validation failed", job_id=str(body.get("job_id", "")))
            h.send_json(400, {"errors": errors})
            return
        job, prompt, mt = body["job_id"], body["prompt"], body["max_tokens"]
        with self._lock:
            self._count += 1
            count = self._count
            prev_len, self._last_prompt_len = self._last_prompt_len, len(prompt)
        failure = self._failure(prompt, prev_len, count)
        if failure is not None:
            self.log("WARN", "Inference failed", job_id=job, error=failure)
            self.narrate("candle-backend", "error", f"Inference failed for job {job}: {failure}",
                         error_kind="inference_failed", job_id=job)
            h.start_sse()
            h.events([{"type": "error", "code": "INFERENCE_FAILED", "message": failure}])
            return
        tokens = self.tokens_for(prompt, mt, self._salt(body, count))
        if "eos_early" in self.faults and body.get("temperature", 1.0) == 0:
            tokens = tokens[: max(1, mt // 2)]
        legacy = "legacy" in self.faults
        pieces = list(tokens) if legacy else pieces_of(tokens)
        if "empty_pieces" in self.faults:
            pieces = ["" for _ in pieces]
        evs = good_events(job, pieces, legacy=legacy)
        self._log_success(job, tokens, pieces, mt)
        if "bad_tokens_out" in self.faults:
            evs[-1]["tokens_out"] = len(pieces) + 1
        h.start_sse()
        h.events(evs)

    def _failure(self, prompt: str, prev_len: int | None, count: int) -> str | None:
        if "qwen_cache_bug" in self.faults:
            self.log("WARN", "Cache reset not implemented for Qwen")
            self.narrate("candle-backend", "cache_reset",
                         "Reset KV cache before inference to clear warmup pollution")
            if count > 1 and len(prompt.split()) >= 2:
                return QWEN_FAILURE_MESSAGE
        if "broadcast" in self.faults and prev_len is not None and prev_len != len(prompt):
            return BROADCAST_MESSAGE
        return None

    def _salt(self, body: dict[str, Any], count: int) -> str:
        temp, seed = body.get("temperature", 1.0), body.get("seed", 42)
        if temp == 0:
            return "greedy" + (f"-{count}" if "drift" in self.faults and count > 1 else "")
        if "seed_ignored" in self.faults:
            return "sampled"
        if "sampling_random" in self.faults:
            return f"random-{time.monotonic_ns()}"
        return f"seed-{seed}-t{temp}"

    def _log_success(self, job: str, tokens: list[str], pieces: list[str], mt: int) -> None:
        if "panic_log" in self.faults:
            with self._lock, open(self.log_path or "/dev/null", "a", encoding="utf-8") as fh:
                fh.write("thread 'tokio-runtime-worker' panicked at src/backend/qwen.rs:88:14:\n")
        if "nan_log" in self.faults:
            self.log("WARN", "NaN detected in logits", job_id=job)
        generated = mt + 3 if "log_overcount" in self.faults else len(tokens)
        logged_pieces = len(pieces) + (2 if "log_pieces_mismatch" in self.faults else 0)
        self.log("INFO", "Inference completed", tokens_generated=generated, duration_ms=12,
                 tokens_per_sec=generated * 1000 // 12)
        self.narrate("candle-backend", "inference_complete",
                     f"Inference completed ({generated} tokens in 12 ms)",
                     tokens_out=generated, decode_time_ms=12)
        self.log("INFO", "Inference complete", job_id=job, tokens=logged_pieces)


def _validation_errors(body: dict[str, Any]) -> list[dict[str, str]]:
    errors = []
    if not isinstance(body.get("job_id"), str) or not body.get("job_id"):
        errors.append({"field": "job_id", "constraint": "non_empty", "message": "required"})
    if not isinstance(body.get("prompt"), str) or not body.get("prompt"):
        errors.append({"field": "prompt", "constraint": "length", "message": "required"})
    mt = body.get("max_tokens")
    if not isinstance(mt, int) or not 1 <= mt <= 2048:
        errors.append({"field": "max_tokens", "constraint": "range", "message": "1..2048"})
    return errors
