"""The one deadline mechanism for answers read from outside (workers, the hub).

Why: httpx's timeouts are per read, so a peer that trickles one byte every 0.1 s never
trips them. A `Watchdog` thread enforces a first-event, a between-events and a whole-call
deadline by shutting the socket down (closing a socket from another thread does not wake
a blocked read on Linux; `shutdown` does). `read_capped` reads a body no further than a
cap. A foundation module: the worker client (checks), readiness and the hub's deadlines
(pool) all use it, and none of them may import the others for it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Expired", "RawBody", "Watchdog", "read_capped"]


@dataclass(frozen=True)
class Expired:
    """Which deadline passed: `kind` is deadline | first_event_timeout | event_timeout."""

    kind: str
    message: str


class Watchdog:
    """Enforces the deadlines httpx cannot: first event, gap between events, whole call.

    Hand `trace` to the request as httpcore's trace extension (it learns the socket when it
    connects); call `event_seen` on progress. A context manager: the thread runs inside.
    """

    def __init__(self, first_event_timeout: float, event_timeout: float, total_timeout: float):
        self.start = time.monotonic()
        self.first_event_timeout = first_event_timeout
        self.event_timeout = event_timeout
        self.total_timeout = total_timeout
        self.last_event: float | None = None
        self.after_terminal = False
        self.fired: Expired | None = None
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

    def _due(self, now: float) -> tuple[float, Expired | None]:
        total_left = self.start + self.total_timeout - now
        if total_left <= 0:
            return 0, Expired("deadline", f"total deadline of {self.total_timeout:g} s exceeded")
        if self.last_event is None:
            left = self.start + self.first_event_timeout - now
            if left <= 0:
                return 0, Expired(
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
                return 0, Expired(
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


class RawBody(Protocol):
    """What `read_capped` needs of a response (httpx.Response has it)."""

    def iter_raw(self) -> Iterable[bytes]: ...


def read_capped(response: RawBody, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether there was more; the buffer is cut in
    place, so memory stays near `limit` plus one chunk (no second copy of a whole body)."""
    buf = bytearray()
    for chunk in response.iter_raw():
        buf += chunk
        if len(buf) > limit:
            del buf[limit:]
            return bytes(buf), True
    return bytes(buf), False
