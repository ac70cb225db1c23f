"""tracing-style JSON log lines on stdout, the shape the real worker's `tracing` subscriber writes.

Why: the harness scans worker logs for error patterns (WARN lines holding `job_id` and
`error`); the reference worker must produce lines those scanners parse the same way.
One object per line, flushed at once so a crash or SIGKILL never loses a written line.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

TARGET_MAIN = "llorch_candled"
TARGET_HTTP = "llorch_candled::http::execute"
TARGET_BACKEND = "llorch_candled::backend"


def rfc3339_now() -> str:
    """UTC timestamp with microseconds and a `Z`, as tracing-subscriber's json formatter."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JsonLogger:
    """Thread-safe writer of one JSON object per line: timestamp, level, fields, target."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def log(self, level: str, message: str, *, target: str = TARGET_MAIN, **fields: Any) -> None:
        record = {
            "timestamp": rfc3339_now(),
            "level": level,
            "fields": {"message": message, **fields},
            "target": target,
        }
        line = json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":"))
        stream = self._stream if self._stream is not None else sys.stdout
        with self._lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass  # a closed stdout must never take the worker down

    def info(self, message: str, **kw: Any) -> None:
        self.log("INFO", message, **kw)

    def warn(self, message: str, **kw: Any) -> None:
        self.log("WARN", message, **kw)

    def error(self, message: str, **kw: Any) -> None:
        self.log("ERROR", message, **kw)
