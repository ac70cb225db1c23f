"""JSON log lines on stdout, exactly the two kinds llorch-candled writes.

Why: the harness scans worker logs (WARN lines with `job_id` and `error`, narration lines,
start-up milestones); the reference worker must produce lines those scanners parse the
same way as the real binary's. The real binary sets up
`tracing_subscriber::fmt().with_target(false).json()`, so a line is
`{"timestamp","level","fields":{...}}` with NO top-level `target` key, and:

- tracing lines carry `fields.message` first, then the event's own fields;
- narration lines (observability-narration-core's `narrate`, always INFO) carry no
  `message`: `fields` holds `actor`, `action`, `target`, `human`, then whichever optional
  fields were set, in the crate's declaration order (`cute`, `story`, ..., `job_id`, ...,
  `worker_id`, `error_kind`, ..., `duration_ms`, ..., `model_ref`, `device`, `tokens_in`,
  `tokens_out`, `decode_time_ms`). Unset fields are absent (tracing skips `None`).

One object per line, flushed at once so a crash or SIGKILL never loses a written line.
The level is fixed at INFO and above, as `RUST_LOG` is ignored by the real binary.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

# observability-narration-core's NarrationFields, optional part, in emit order.
NARRATION_OPTIONAL: tuple[str, ...] = (
    "cute", "story", "correlation_id", "session_id", "job_id", "task_id", "pool_id",
    "replica_id", "worker_id", "error_kind", "retry_after_ms", "backoff_ms", "duration_ms",
    "queue_position", "predicted_start_ms", "engine", "engine_version", "model_ref", "device",
    "tokens_in", "tokens_out", "decode_time_ms",
)


def rfc3339_now() -> str:
    """UTC timestamp with microseconds and a `Z`, as tracing-subscriber's json formatter."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JsonLogger:
    """Thread-safe writer of one JSON object per line: timestamp, level, fields."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def _write(self, level: str, fields: dict[str, Any]) -> None:
        record = {"timestamp": rfc3339_now(), "level": level, "fields": fields}
        line = json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":"))
        stream = self._stream if self._stream is not None else sys.stdout
        with self._lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass  # a closed stdout must never take the worker down

    def log(self, level: str, message: str, **fields: Any) -> None:
        """A tracing line: `message` first, then the fields in the order given."""
        self._write(level, {"message": message, **fields})

    def info(self, message: str, **fields: Any) -> None:
        self.log("INFO", message, **fields)

    def warn(self, message: str, **fields: Any) -> None:
        self.log("WARN", message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.log("ERROR", message, **fields)

    def narrate(self, actor: str, action: str, target: str, human: str,
                **optional: Any) -> None:
        """A narration line (INFO, no `message`); `optional` keys from NARRATION_OPTIONAL."""
        unknown = set(optional) - set(NARRATION_OPTIONAL)
        if unknown:
            raise ValueError(f"not a narration field: {sorted(unknown)}")
        fields: dict[str, Any] = {"actor": actor, "action": action, "target": target,
                                  "human": human}
        fields.update((k, optional[k]) for k in NARRATION_OPTIONAL
                      if optional.get(k) is not None)
        self._write("INFO", fields)
