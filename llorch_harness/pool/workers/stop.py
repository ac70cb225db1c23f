"""Stopping workers: one, every recorded one, and orphans (`worker stop`, `worker reap`).

A recorded pid is signalled only after procs.identify proved it is still our worker
(pid + create time + marker); a reused pid is never signalled, its record only removed.
The stop ladder (SIGINT, grace, SIGTERM, SIGKILL) takes the tree, the process group and
every process carrying the worker's marker; the record goes only once all of them did.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock, Timeout

from llorch_harness import fsutil
from llorch_harness.errors import HarnessError
from llorch_harness.pool import procs
from llorch_harness.pool.paths import PoolPaths, validate_worker_id
from llorch_harness.pool.workers.defaults import REAP_GRACE_S, STOP_GRACE_S
from llorch_harness.pool.workers.record import (
    WorkerRecord,
    read_record,
    record_identity,
    record_ids,
    record_path,
    remove_record,
    spawn_lock_path,
)


@dataclass
class StopResult:
    worker_id: str
    step: str  # "sigint" | "sigterm" | "sigkill" | "already_dead" | "stale_record"
    seconds: float
    port_free: bool

    def to_json(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "step": self.step,
                "seconds": round(self.seconds, 4), "port_free": self.port_free}


@dataclass
class StopFailure:
    """A record `stop --all` could not handle: which file, and why (one line)."""

    record: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"record": self.record, "error": self.message}


# --------------------------------------------------------------------------- one worker


def stop_process(
    paths: PoolPaths, rec_path: Path, record: WorkerRecord,
    proc: subprocess.Popen[bytes] | None, grace: float,
) -> StopResult:
    """Stop one recorded worker (we know it is ours) and everything carrying its marker."""
    wid = record.worker_id
    pool = record.pool_root or procs.pool_key(paths.root)
    try:
        root: psutil.Process | None = psutil.Process(record.pid)
        if root is not None and procs.is_gone(root):
            root = None
    except psutil.NoSuchProcess:
        root = None
    born = record.create_time

    def sweep() -> list[psutil.Process]:
        # the worker's own descendants carry its marker (session included) and were born
        # after it; a process that merely claims the marker is not one of them
        return [m.proc for m in procs.marked_processes(pool, wid)
                if (born is None or _born_after(m.proc, born))
                and (not record.has_session or m.session == record.session)]

    res = procs.stop_ladder(root, grace=grace, extra=sweep)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
    if res.survivors:
        raise HarnessError(
            f"worker {wid}: processes {', '.join(str(p.pid) for p in res.survivors)} "
            "survived SIGKILL", f"record {rec_path} kept; check them with ps")
    port = record.usable_port
    port_free = procs.wait_port_free(port) if port is not None else True
    remove_record(rec_path)
    return StopResult(wid, res.step, res.seconds, port_free)


def _born_after(proc: psutil.Process, created: float) -> bool:
    try:
        return proc.create_time() >= created - procs.CREATE_TIME_TOLERANCE_S
    except psutil.Error:
        return False


def stop_recorded(
    paths: PoolPaths, worker_id: str, grace: float, *, proc: subprocess.Popen[bytes] | None = None,
    fallback: WorkerRecord | None = None,
) -> StopResult:
    """Stop the worker its record names; `fallback` when the record is gone but the caller
    (a WorkerHandle) still knows the process."""
    rp = record_path(paths, worker_id)
    try:
        rec = read_record(rp)
    except FileNotFoundError:
        if fallback is None:
            leftovers = procs.marked_processes(procs.pool_key(paths.root), worker_id)
            hint = ("its unrecorded processes remain: run llorch-pool worker reap" if leftovers
                    else "see llorch-pool worker list")
            raise HarnessError(f"no worker {worker_id} in {paths.workers_dir}", hint) from None
        rec = fallback  # someone removed the record; our handle still knows the process
    t0 = time.monotonic()
    state, _ = record_identity(paths, rec)
    if state == "reused":
        # the pid names another process now: remove the record, signal nothing
        # (marked leftovers of this worker, if any, show as orphans for `worker reap`)
        remove_record(rp)
        port = rec.usable_port
        free = procs.port_is_free(port) if port is not None else True
        return StopResult(worker_id, "stale_record", time.monotonic() - t0, free)
    if state == "gone":
        res = stop_process(paths, rp, rec, proc, grace=min(grace, 2.0))  # leftovers by marker
        return StopResult(worker_id, "already_dead", res.seconds, res.port_free)
    return stop_process(paths, rp, rec, proc, grace=grace)


def stop_worker(paths: PoolPaths, worker_id: str, grace: float = STOP_GRACE_S) -> StopResult:
    """Stop a recorded worker: SIGINT, grace, SIGTERM, SIGKILL; a stale record is just removed."""
    return stop_recorded(paths, validate_worker_id(worker_id), grace)


# --------------------------------------------------------------------------- every worker


def stop_every(paths: PoolPaths, grace: float = STOP_GRACE_S) -> tuple[list[StopResult],
                                                               list[StopFailure]]:
    """Try every record, whatever happens to one of them: an unreadable record, an oddly
    named file or a worker that survives SIGKILL is reported, never the end of the loop."""
    results: list[StopResult] = []
    failures: list[StopFailure] = []
    for wid in record_ids(paths):
        name = f"{wid}.json"
        try:
            validate_worker_id(wid)
        except HarnessError as exc:
            failures.append(StopFailure(name, f"{exc.one_line()}; record "
                                        f"{paths.workers_dir / name} left alone"))
            continue
        try:
            results.append(stop_worker(paths, wid, grace))
        except FileNotFoundError:
            continue  # removed meanwhile (another stop, the worker's own CLI)
        except HarnessError as exc:
            if exc.message.startswith(f"no worker {wid} "):
                continue
            failures.append(StopFailure(name, exc.one_line()))
        except (OSError, ValueError, TypeError) as exc:
            failures.append(StopFailure(name, f"{type(exc).__name__}: {exc}"))
    return results, failures


def stop_all(paths: PoolPaths, grace: float = STOP_GRACE_S) -> list[StopResult]:
    """stop_every, then one error naming every record that could not be handled."""
    results, failures = stop_every(paths, grace)
    if failures:
        raise HarnessError(
            f"{len(failures)} worker record(s) not handled: "
            + "; ".join(f"{f.record}: {f.message}" for f in failures),
            f"{len(results)} other worker(s) were stopped; see llorch-pool worker list")
    return results


# --------------------------------------------------------------------------- orphans


def spawn_in_progress(paths: PoolPaths, worker_id: str) -> bool:
    """Is the spawn lock of this worker held right now? Creates nothing: a spawner makes its
    lock file before it starts the process, so no lock file means no spawn, and a lock path
    through a symbolic link is not looked at."""
    lock_path = spawn_lock_path(paths, worker_id)
    if fsutil.first_symlink(paths.root, lock_path) is not None:
        return False
    try:
        if not stat.S_ISREG(os.lstat(lock_path).st_mode):
            return False
    except OSError:
        return False
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


def _live_or_spawning(pp: PoolPaths, worker_id: str) -> bool:
    try:
        if record_identity(pp, read_record(record_path(pp, worker_id)))[0] == "alive":
            return True
    except (FileNotFoundError, HarnessError, OSError):
        pass
    return spawn_in_progress(pp, worker_id)


def find_orphans(
    paths: PoolPaths | None = None, *, session: str | None = None,
) -> list[psutil.Process]:
    """Marked processes whose worker has no record with a live process (all pools if paths is
    None). A worker being spawned right now (its spawn lock is held) is never an orphan."""
    pool = procs.pool_key(paths.root) if paths is not None else None
    live: dict[tuple[str, str], bool] = {}
    orphans = []
    for m in procs.marked_processes(pool, session=session):
        key = (m.pool_root, m.worker_id)
        if key not in live:
            # marked_processes only hands out markers whose id and pool root passed the
            # checks in procs.parse_marker: no path below is built from unchecked text
            live[key] = _live_or_spawning(PoolPaths(Path(m.pool_root)), m.worker_id)
        if not live[key]:
            orphans.append(m.proc)
    return orphans


def reap_orphans(
    paths: PoolPaths | None = None, grace: float = REAP_GRACE_S, *, session: str | None = None,
) -> list[int]:
    """Stop every orphan (identity re-checked by psutil before each signal); returns their pids."""
    found = find_orphans(paths, session=session)
    if not found:
        return []
    pids = [p.pid for p in found]

    def again() -> list[psutil.Process]:
        return find_orphans(paths, session=session)

    res = procs.stop_ladder(None, grace=grace, extra=lambda: found + again())
    if res.survivors:
        raise HarnessError(f"orphans {', '.join(str(p.pid) for p in res.survivors)} survived "
                           "SIGKILL", "check them with ps")
    return pids
