"""One retry for a transient lab failure, and the record of every retry made.

Why: a connection reset, a timeout or a 5xx from the hub or a pool is often gone a second
later; one retry keeps it from ending a gate item, and the record makes the retry visible
in the report (the plugin drains it into the test's report) instead of hiding it. A cause
that is not transient (refused, disk full, host key) is never retried: waiting does not
fix it, and a second try would only double the time to the same answer.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from llorch_harness.errors import LabFailure
from llorch_harness.redaction import redact

T = TypeVar("T")
_LOCK = threading.Lock()
_RETRIES: list[dict[str, Any]] = []


def retry_once(fn: Callable[[], T], what: str, *, announce: bool = True) -> T:
    """`fn()`; after a transient LabFailure, once more (noted). A second failure propagates
    with `retried` set, so its report says the retry was made."""
    try:
        return fn()
    except LabFailure as exc:
        if not exc.transient:
            raise
        note = {"what": what, "cause": exc.cause, "detail": redact(exc.detail)[:300]}
        if announce:
            print(redact(f"note: {what}: {exc.cause} ({exc.detail[:200]}); retrying once"),
                  file=sys.stderr, flush=True)
    try:
        result = fn()
    except LabFailure as again:
        again.retried = True
        _note({**note, "outcome": f"failed again: {again.cause}"})
        raise
    _note({**note, "outcome": "succeeded"})
    return result


def _note(entry: dict[str, Any]) -> None:
    with _LOCK:
        _RETRIES.append(entry)


def drain() -> list[dict[str, Any]]:
    """The retries made since the last drain (the plugin attaches them to a test's report)."""
    with _LOCK:
        out = list(_RETRIES)
        _RETRIES.clear()
    return out
