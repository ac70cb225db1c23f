"""The hub's request log: what tests see of each answered request.

Why apart: the server writes records, the hub keeps them, tests read them; none of the
three needs the others' code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestRecord:
    """One answered request, as tests see it. `time` is the wall-clock start.

    `route` is one of info, tree, resolve, telemetry, unknown, bad, method; `file` is
    the repo-relative path for resolve requests; `fault` names the fault applied.
    """

    method: str
    path: str
    status: int
    range: str | None
    bytes_sent: int
    time: float
    route: str = ""
    repo: str | None = None
    file: str | None = None
    lfs: bool = False
    duration: float = 0.0
    fault: str | None = None


@dataclass
class Live:
    """A request's record while it is answered; published before its headers go out.

    Why: a client may act on the last byte before the handler thread runs again, so
    the log must already be complete when that byte is written.
    """

    method: str
    path: str
    range: str | None
    time: float
    status: int = 0
    bytes_sent: int = 0
    route: str = "unknown"
    repo: str | None = None
    file: str | None = None
    lfs: bool = False
    end: float | None = None
    faults: list[str] = field(default_factory=list)
    published: bool = False

    def freeze(self) -> RequestRecord:
        return RequestRecord(
            self.method, self.path, self.status, self.range, self.bytes_sent, self.time,
            self.route, self.repo, self.file, self.lfs,
            (self.end or time.time()) - self.time, ",".join(self.faults) or None,
        )
