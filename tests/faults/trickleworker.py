#!/usr/bin/env python3
"""A worker whose /health misbehaves the way no per-read timeout can catch (issue 20 #10).

Stdlib only; installed as `llorch-cpu-candled` behind a shell wrapper. Speaks the start
of the llorch-candled contract (argv, ready callback, then bind), then answers /health
by TRICKLE_MODE once the first TRICKLE_AFTER answers (default 0) were healthy:
  trickle   status line and headers, then the body one byte every TRICKLE_GAP s (0.1)
  headers   the status line and headers themselves one byte at a time
  silent    accepts, reads the request, never answers (a real worker busy generating)
  healthy   always a prompt healthy answer
Every connection runs in its own thread, so one hung answer never blocks the next.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import urllib.request


def main() -> int:
    p = argparse.ArgumentParser(prog="llorch-cpu-candled")
    p.add_argument("--worker-id", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--callback-url", required=True)
    args, _ = p.parse_known_args()
    mode = os.environ.get("TRICKLE_MODE", "trickle")
    after = int(os.environ.get("TRICKLE_AFTER", "0"))
    gap = float(os.environ.get("TRICKLE_GAP", "0.1"))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    body = json.dumps({"worker_id": args.worker_id, "vram_bytes": 1,
                       "uri": f"http://localhost:{args.port}"}).encode()
    req = urllib.request.Request(args.callback_url, data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10):
        pass
    srv = socket.create_server(("127.0.0.1", args.port))
    srv.settimeout(0.2)
    print(f"trickleworker {args.worker_id} on {args.port}: {mode} after {after}", flush=True)
    answered = 0
    lock = threading.Lock()

    def one(conn: socket.socket) -> None:
        nonlocal answered
        conn.settimeout(60)
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
            with lock:
                n = answered
                answered += 1
            how = "healthy" if n < after else mode
            # trickled: valid JSON after 100000 blanks, longer than any deadline lets through
            payload = (b" " * 100000 if how == "trickle" else b"") + b'{"status": "healthy"}'
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n")
            if how == "healthy":
                conn.sendall(head + payload)
            elif how == "silent":
                stop.wait(3600)
            else:
                if how == "trickle":
                    conn.sendall(head)
                    data = payload
                else:
                    data = head + payload
                for i in range(len(data)):
                    conn.sendall(data[i:i + 1])
                    if stop.wait(gap):
                        return
        except OSError:
            pass
        finally:
            conn.close()

    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        threading.Thread(target=one, args=(conn,), daemon=True).start()
    srv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
