"""Faults that tests switch on in a running hub: dropped bodies, corrupted bytes, 5xx,
404s, stalls, trickles and broken tree pagination.

Why apart from the server: the rules are plain data a test arms from its own thread;
the server only takes (consumes) the first matching rule per request.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class Rule:
    """One armed fault; `remaining` uses left (None: forever)."""

    kind: str
    glob: str | None
    remaining: int | None  # None = forever
    n_bytes: int = 0
    status: int = 0
    error_code: str = ""
    seconds: float = 0.0
    after_bytes: int | None = None
    mode: str = ""


@dataclass(frozen=True)
class BodyFaults:
    """What one file body suffers: drop, corruption, a stall, a trickle."""

    drop_after: int | None = None
    corrupt: bool = False
    stall_after: int | None = None
    stall_seconds: float = 0.0
    trickle_bytes: int | None = None  # send the body this many bytes at a time ...
    trickle_seconds: float = 0.0  # ... with this pause between (progress, never enough)

    @property
    def names(self) -> list[str]:
        out = []
        if self.drop_after is not None:
            out.append("drop_after")
        if self.corrupt:
            out.append("corrupt")
        if self.stall_after is not None:
            out.append("stall")
        if self.trickle_bytes is not None:
            out.append("trickle")
        return out


class HubFaults:
    """Faults that tests switch on at runtime; thread-safe.

    A glob is matched with `fnmatch` against the repo-relative file path (for resolve
    and tree requests, e.g. `"*.safetensors"`), against `ORG/NAME/FILE`, and against
    the decoded URL path (e.g. `"/api/models/*"`); `None` matches every request.
    `times=None` means forever.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []

    def drop_after(self, path_glob: str, n_bytes: int, times: int | None = 1) -> None:
        """Close the connection after `n_bytes` of body of a matching resolve GET.

        huggingface_hub 2.4 reads bodies in 10 MiB chunks: a drop before the first
        10 MiB makes it start the file again (200), a later one resumes with a Range
        at the last 10 MiB boundary (206).
        """
        self._add(Rule("drop_after", path_glob, times, n_bytes=max(0, n_bytes)))

    def corrupt(self, path_glob: str, times: int | None = None) -> None:
        """Serve same-size flipped bytes for matching resolve GETs; headers stay true."""
        self._add(Rule("corrupt", path_glob, times))

    def fail_5xx(
        self, status: int = 503, times: int | None = 1, path_glob: str | None = None
    ) -> None:
        """Answer the next `times` matching requests (any kind) with `status`."""
        if not 500 <= status <= 599:
            raise ValueError(f"fail_5xx needs a 5xx status, got {status}")
        self._add(Rule("fail_5xx", path_glob, times, status=status))

    def not_found(
        self, path_glob: str, error_code: str = "EntryNotFound", times: int | None = None
    ) -> None:
        """Answer matching requests with 404 and `X-Error-Code: error_code`."""
        self._add(Rule("not_found", path_glob, times, error_code=error_code))

    def stall(
        self,
        path_glob: str,
        seconds: float,
        after_bytes: int | None = None,
        times: int | None = 1,
    ) -> None:
        """Sleep `seconds` before answering, or after `after_bytes` of a resolve GET body."""
        self._add(Rule("stall", path_glob, times, seconds=seconds, after_bytes=after_bytes))

    def trickle(
        self,
        path_glob: str | None,
        n_bytes: int = 1,
        seconds: float = 0.1,
        times: int | None = None,
    ) -> None:
        """Send matching answers `n_bytes` at a time with `seconds` between: bytes keep
        coming, so no per-read timeout ever fires, yet a file never completes. Applies to
        resolve GET bodies and to API answers (info, tree) alike; ends when the hub stops."""
        self._add(Rule("trickle", path_glob, times, n_bytes=max(1, n_bytes),
                        seconds=max(0.0, seconds)))

    def tree_links(self, mode: str = "self", times: int | None = None) -> None:
        """Break tree pagination: every listing page carries `Link: rel="next"` to
        `self` (the same URL again), `cycle` (two URLs that link to each other), or
        `endless` (a new URL every time, the same entries on each page)."""
        if mode not in ("self", "cycle", "endless"):
            raise ValueError(f"tree_links mode must be self, cycle or endless, not {mode!r}")
        self._add(Rule("tree_links", None, times, mode=mode))

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._rules.clear()

    def active(self) -> list[str]:
        """Describe the faults still armed (for logs and assertions)."""
        with self._lock:
            return [f"{r.kind}({r.glob!r}, remaining={r.remaining})" for r in self._rules]

    def _add(self, rule: Rule) -> None:
        if rule.remaining is not None and rule.remaining <= 0:
            return
        with self._lock:
            self._rules.append(rule)

    def take_body(self, targets: list[str]) -> BodyFaults:
        """Consume the faults one resolve GET body suffers (each kind at most once)."""
        drop = self._take("drop_after", targets)
        bad = self._take("corrupt", targets)
        stall = self._take("stall", targets, pred=lambda r: r.after_bytes is not None)
        trickle = self._take("trickle", targets)
        return BodyFaults(
            drop_after=drop.n_bytes if drop else None,
            corrupt=bad is not None,
            stall_after=stall.after_bytes if stall else None,
            stall_seconds=stall.seconds if stall else 0.0,
            trickle_bytes=trickle.n_bytes if trickle else None,
            trickle_seconds=trickle.seconds if trickle else 0.0,
        )

    def _take(self, kind: str, targets: list[str], pred: Any = None) -> Rule | None:
        """Consume one use of the first matching rule of `kind`."""
        with self._lock:
            for rule in self._rules:
                if rule.kind != kind or (pred is not None and not pred(rule)):
                    continue
                if rule.glob is not None and not any(
                    fnmatch.fnmatchcase(t, rule.glob) for t in targets
                ):
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                return rule
        return None
