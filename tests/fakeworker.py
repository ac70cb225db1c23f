#!/usr/bin/env python3
"""A small, deliberately faulty worker that speaks the llorch-candled contract.

Standalone (stdlib only) so it can be installed as `llorch-cpu-candled` behind a
shell wrapper. FAKEWORKER_MODE (comma list) picks the faults:
  crash_at_start        print 50 lines, then exit 3 (exit time written as the last line)
  never_ready           no callback, no bind; just sleeps
  unhealthy             normal start, but /health says "unhealthy"
  ignore_signals        SIGINT and SIGTERM are ignored
  spawn_detached_child  start a grandchild in its own session (setsid) that would outlive us
  slow_bind             callback, then bind 1 s later
  exit_after_ready      exit FAKEWORKER_EXIT_AFTER s (default 1) after its first /health
                        answer: only once the spawner can have seen it ready, however
                        slow the host (a timer from the bind raced the readiness poll)

By default it speaks the real wire (shared/contract/llorch-candled.md): tracing JSON
log lines without a target, a narration line per /health, "ready on port" logged
before the bind, `started` with model "model" and started_at "0", detokenizer-style
pieces, `end` with "MAX_TOKENS", the "Inference completed" {tokens_generated} and
"Inference complete" {job_id, tokens} log lines, UUID correlation ids echoed only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.path.basename(sys.argv[0]) if "candled" in sys.argv[0] else "llorch-cpu-candled"
WORDS = [" Hello", ",", " I", " am", " fine", ".", " And", " you", "?"]


def log(message: str, level: str = "INFO", **fields: object) -> None:
    line = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": level,
            "fields": {"message": message, **fields}}
    print(json.dumps(line), flush=True)


def narrate(human: str, **fields: object) -> None:
    line = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": "INFO",
            "fields": {"actor": "http-server", "action": "x", "target": "t", "human": human,
                       "cute": "!", **fields}}
    print(json.dumps(line), flush=True)


def pieces(tokens: list[str]) -> list[str]:
    """TokenOutputStream's rule: a piece ends in an alphanumeric character; flush the rest."""
    out, pending = [], ""
    for tok in tokens:
        pending += tok
        if pending[-1:].isalnum():
            out.append(pending)
            pending = ""
    return out + ([pending] if pending else [])


def correlation_id(sent: str | None) -> str:
    try:
        return sent if sent and len(sent) == 36 and str(uuid.UUID(sent)) == sent.lower() \
            else str(uuid.uuid4())
    except ValueError:
        return str(uuid.uuid4())


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llorch-cpu-candled")
    p.add_argument("--worker-id", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--callback-url", required=True)
    p.add_argument("--cuda-device", type=int)
    p.add_argument("--metal-device", type=int)
    p.add_argument("--host", default="0.0.0.0")
    return p.parse_args()


def callback(url: str, worker_id: str, port: int, vram: int) -> None:
    if "localhost:9999" in url:
        return
    body = json.dumps({"worker_id": worker_id, "vram_bytes": vram,
                       "uri": f"http://localhost:{port}"}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        if not 200 <= r.status < 300:
            raise SystemExit(f"callback refused: {r.status}")


class Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # headers and body are two writes: avoid a 40 ms delayed ACK
    healthy = True
    vram = 0
    exit_after: float | None = None  # exit_after_ready: armed by the first /health answer
    _exit_armed = threading.Lock()

    def _json(self, status: int, obj: object) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Correlation-ID", correlation_id(self.headers.get("X-Correlation-ID")))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            narrate("Health check: healthy" if self.healthy else "Health check: unhealthy")
            self._json(200, {"status": "healthy" if self.healthy else "unhealthy",
                             "vram_bytes": self.vram})
            if self.exit_after is not None and Handler._exit_armed.acquire(blocking=False):
                threading.Timer(self.exit_after, lambda: os._exit(0)).start()
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/execute":
            self._json(404, {"error": "not found"})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        job = body.get("job_id", "job")
        n = max(1, min(int(body.get("max_tokens", 3)), 2048))
        tokens = [WORDS[i % len(WORDS)] for i in range(n)]
        texts = pieces(tokens)
        events = [{"type": "started", "job_id": job, "model": "model", "started_at": "0"}]
        events += [{"type": "token", "t": t, "i": i} for i, t in enumerate(texts)]
        events.append({"type": "end", "tokens_out": len(texts), "decode_time_ms": 1,
                       "stop_reason": "MAX_TOKENS"})
        log("Inference completed", tokens_generated=n, duration_ms=1, tokens_per_sec=n * 1000)
        log("Inference complete", job_id=job, tokens=len(texts))
        data = "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Correlation-ID", correlation_id(self.headers.get("X-Correlation-ID")))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Access lines are not logged: the real worker narrates /health and logs /execute."""


def main() -> int:
    args = parse()
    modes = {m.strip() for m in os.environ.get("FAKEWORKER_MODE", "").split(",") if m.strip()}
    log(f"Starting {NAME}", worker_id=args.worker_id, port=args.port, modes=sorted(modes),
        pid=os.getpid())
    if "ignore_signals" in modes:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "spawn_detached_child" in modes:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        log("Spawned detached child", child_pid=child.pid)
    if "crash_at_start" in modes:
        for i in range(50):
            log(f"loading shard {i}", shard=i)
        print("thread 'main' panicked at src/main.rs:1:1:", file=sys.stderr, flush=True)
        print(f"fake crash at {time.time():.6f}", file=sys.stderr, flush=True)
        return 3
    if "never_ready" in modes:
        log("Loading forever")
        while True:
            time.sleep(1)
    vram = int(os.environ.get("FAKEWORKER_VRAM", "0"))
    log("Model loaded successfully")
    callback(args.callback_url, args.worker_id, args.port, vram)
    log("Callback sent to pool-managerd")
    log("Worker ready, starting HTTP server")
    log(f"{NAME} ready on port {args.port}")  # logged before the bind, as the real binary
    if "slow_bind" in modes:
        time.sleep(1.0)
    Handler.healthy = "unhealthy" not in modes
    Handler.vram = vram
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    if "exit_after_ready" in modes:
        Handler.exit_after = float(os.environ.get("FAKEWORKER_EXIT_AFTER", "1.0"))
    try:  # from the "listening" line on, a SIGINT is a graceful stop
        log("HTTP server listening", addr=f"{args.host}:{args.port}")
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        log("Received SIGINT/SIGTERM, initiating graceful shutdown")
        log("HTTP server shutting down gracefully", level="WARN")
    server.server_close()
    log("HTTP server shutdown complete")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
