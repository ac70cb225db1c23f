"""Worker logs `.runtime/workers/<id>.log`: bounded tails, rotation, `worker logs [-f]`.

A log is read only when it is a regular file (a FIFO in its place would block; see
fsutil.open_regular), and a tail reads a bounded window at the end however large the log.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import NotRegularFileError, open_regular, tail_text
from llorch_harness.pool.paths import PoolPaths
from llorch_harness.pool.workers.defaults import LOG_TAIL_LINES
from llorch_harness.pool.workers.record import (
    log_path_for,
    read_record,
    record_identity,
    record_path,
)


def tail_lines(path: Path, n: int = LOG_TAIL_LINES) -> str:
    """The last n lines from a bounded window at the end (fsutil.tail_text): linear however
    large the log and however long its lines (`\r`-redrawn progress has no newline).
    A log that is not a regular file (a FIFO would block) is named, never read."""
    try:
        return tail_text(path, n)
    except NotRegularFileError as exc:
        return f"(log {path} is {exc.kind}: not read)"
    except OSError as exc:
        return f"(log {path} cannot be read: {exc.strerror or exc})"


def rotate_log(log: Path) -> None:
    """Keep the previous run's log as <id>.log.1: never silently lost."""
    if log.exists():
        os.replace(log, log.with_name(log.name + ".1"))


def _existing_log(paths: PoolPaths, worker_id: str) -> Path:
    log = log_path_for(paths, worker_id)
    if not log.exists():
        raise HarnessError(f"no log for worker {worker_id} at {log}",
                           "see llorch-pool worker list for worker ids")
    open_regular(log, "worker log").close()  # a FIFO would block: refused with one line
    return log


def worker_logs(paths: PoolPaths, worker_id: str, n: int = LOG_TAIL_LINES) -> str:
    return tail_text(_existing_log(paths, worker_id), n, what="worker log")


def _worker_running(paths: PoolPaths, worker_id: str) -> bool:
    try:
        rec = read_record(record_path(paths, worker_id))
    except (FileNotFoundError, HarnessError):
        return False
    return record_identity(paths, rec)[0] == "alive"


def follow_logs(
    paths: PoolPaths, worker_id: str, n: int = LOG_TAIL_LINES, *, out: TextIO | None = None,
    poll: float = 0.2, until: Callable[[], bool] | None = None,
) -> None:
    """Print the tail, then new lines as they come (a rotated log is reopened). Ends on
    Ctrl-C, when `until()` is true, or once the worker is gone and the log is drained."""
    out = out or sys.stdout
    log = _existing_log(paths, worker_id)
    fh = open_regular(log, "worker log")
    try:
        # the tail ends where following starts: a line written between the two is neither
        # lost (a worker's last words at its stop) nor printed twice
        tail = tail_text(log, n, what="worker log", end=fh.seek(0, os.SEEK_END))
        if tail:
            print(tail, file=out, flush=True)
        while True:
            chunk = fh.read()
            if chunk:
                out.write(chunk.decode("utf-8", errors="replace"))
                out.flush()
                continue
            if until is not None and until():
                return
            if not _worker_running(paths, worker_id):
                rest = fh.read()
                if rest:
                    out.write(rest.decode("utf-8", errors="replace"))
                print(f"(worker {worker_id} is not running)", file=out, flush=True)
                return
            new = _rotated(log, fh)
            if new is not None:
                fh.close()  # only now: a log that vanished keeps the old one readable
                fh = new
                continue
            time.sleep(poll)
    finally:
        fh.close()


def _rotated(log: Path, fh: BinaryIO) -> BinaryIO | None:
    """The new log, opened, when the path now names another file than `fh`; else None."""
    try:
        if os.stat(log).st_ino == os.fstat(fh.fileno()).st_ino:
            return None
        return open_regular(log, "worker log")
    except FileNotFoundError:
        return None
