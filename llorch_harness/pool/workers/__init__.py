"""Workers on this pool (CP3 WU3.2 + WU3.3): spawn, list, stop, logs, reap, records.

One job per module: `record` (the typed record and its files), `spawn` (checks, start,
readiness), `handle` (a live worker owned by this process), `stop` (one, all, orphans),
`listing` (`worker list` rows), `logs` (tails, `worker logs -f`), `defaults` (the numbers
the commands default to). The public names are reachable from here too, loaded on first
use, so `from llorch_harness.pool import workers; workers.spawn_worker(...)` keeps working
and `import llorch_harness.pool.workers.defaults` stays light (no psutil, no httpx).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES: dict[str, tuple[str, ...]] = {
    "defaults": ("BASE_PORT", "FAILED_START_GRACE", "LOG_TAIL_LINES", "READY_TIMEOUT_S",
                 "REAP_GRACE_S", "STOP_GRACE_S", "WORKER_KINDS"),
    "handle": ("WorkerHandle",),
    "listing": ("LIST_HEALTH_DEADLINE_S", "WorkerStatus", "list_workers"),
    "logs": ("follow_logs", "rotate_log", "tail_lines", "worker_logs"),
    "record": ("WorkerRecord", "log_path_for", "parse_time", "read_record", "record_identity",
               "record_ids", "record_path", "remove_record", "spawn_lock_path", "utc_now",
               "write_record"),
    "spawn": ("REFWORKER_MODULE", "WorkerStartError", "spawn_worker"),
    "stop": ("StopFailure", "StopResult", "find_orphans", "reap_orphans", "spawn_in_progress",
             "stop_all", "stop_every", "stop_worker"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

if TYPE_CHECKING:
    from llorch_harness.pool.workers.defaults import (
        BASE_PORT,
        FAILED_START_GRACE,
        LOG_TAIL_LINES,
        READY_TIMEOUT_S,
        REAP_GRACE_S,
        STOP_GRACE_S,
        WORKER_KINDS,
    )
    from llorch_harness.pool.workers.handle import WorkerHandle
    from llorch_harness.pool.workers.listing import (
        LIST_HEALTH_DEADLINE_S,
        WorkerStatus,
        list_workers,
    )
    from llorch_harness.pool.workers.logs import follow_logs, rotate_log, tail_lines, worker_logs
    from llorch_harness.pool.workers.record import (
        WorkerRecord,
        log_path_for,
        parse_time,
        read_record,
        record_identity,
        record_ids,
        record_path,
        remove_record,
        spawn_lock_path,
        utc_now,
        write_record,
    )
    from llorch_harness.pool.workers.spawn import REFWORKER_MODULE, WorkerStartError, spawn_worker
    from llorch_harness.pool.workers.stop import (
        StopFailure,
        StopResult,
        find_orphans,
        reap_orphans,
        spawn_in_progress,
        stop_all,
        stop_every,
        stop_worker,
    )

__all__ = [
    "BASE_PORT", "FAILED_START_GRACE", "LIST_HEALTH_DEADLINE_S", "LOG_TAIL_LINES",
    "READY_TIMEOUT_S", "REAP_GRACE_S", "REFWORKER_MODULE", "STOP_GRACE_S", "StopFailure",
    "StopResult", "WORKER_KINDS", "WorkerHandle", "WorkerRecord", "WorkerStartError",
    "WorkerStatus", "find_orphans", "follow_logs", "list_workers", "log_path_for", "parse_time",
    "read_record", "reap_orphans", "record_identity", "record_ids", "record_path",
    "remove_record", "rotate_log", "spawn_in_progress", "spawn_lock_path", "spawn_worker",
    "stop_all", "stop_every", "stop_worker", "tail_lines", "utc_now", "worker_logs",
    "write_record",
]  # the names of _HOMES


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME_OF])
