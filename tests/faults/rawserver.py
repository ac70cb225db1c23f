"""A raw-socket HTTP server for hostile-worker tests: one request read, then a script.

Why raw: http.server cannot send a malformed status line, stall half-way through a
chunk, or stream a 100 MB line lazily; a script on the bare socket can. Every
connection runs in its own thread; `__exit__` sets `stop` (scripts that hang wait on
it) and joins them all, so nothing outlives the test.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class RawServer:
    """A raw-socket HTTP server: reads one request per connection, then plays a script."""

    def __init__(self, script: Callable[[socket.socket], None] | None = None) -> None:
        self.script = script
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.accepted = 0
        self.scripts: list[Callable[[socket.socket], None]] | None = None  # per connection
        self.read_request = True  # False: accept and never even read the request
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            t = threading.Thread(target=self._one, args=(conn, self.accepted - 1), daemon=True)
            t.start()
            self.threads.append(t)

    def _one(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(30)
        try:
            if not self.read_request and index == 0:
                self.stop.wait(30)
                return
            buf = b""
            while b"\r\n\r\n" not in buf and len(buf) < 1 << 20:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, body = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
            script = self.script
            if self.scripts is not None:
                script = self.scripts[min(index, len(self.scripts) - 1)]
            if script is not None:
                script(conn)
        except OSError:
            pass  # the client hung up on purpose: that is what these cases test
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def __enter__(self) -> RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(timeout=10)
        for t in self.threads:
            t.join(timeout=35)
