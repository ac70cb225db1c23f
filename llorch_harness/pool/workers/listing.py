"""`worker list` / `status`: every record with what we see now (process identity, /health).

Status comes from process identity (pid + create time + marker, procs.identify), never
from the pid alone; health is one `/health` with a whole-call deadline, because the real
worker answers nothing while it generates (silence is not a crash).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import psutil

from llorch_harness.errors import HarnessError
from llorch_harness.pool.paths import PoolPaths
from llorch_harness.pool.readiness import NO_ANSWER, ask_health
from llorch_harness.pool.workers.record import (
    WorkerRecord,
    read_record,
    record_identity,
    record_ids,
)

LIST_HEALTH_DEADLINE_S = 1.0  # `worker list`/`status`: whole /health call, answer or not
STATUS_OF_STATE = {"alive": "running", "gone": "dead", "reused": "stale"}
NOTE_OF_STATUS = {"stale": "pid now belongs to another process",
                  "dead": "process gone; `worker stop` removes the record"}


@dataclass
class WorkerStatus:
    """One `worker list` row: the record plus what we see now."""

    worker_id: str
    pid: int | None
    backend: str
    model_id: str
    port: int | None
    status: str  # "running" | "starting" | "dead" | "stale" | "invalid" | "orphan"
    health: str  # "healthy" | "unhealthy" | "unreachable" | "no answer" | "-"
    uptime_s: float | None
    uri: str | None
    log_path: str | None
    started_at: str | None
    record: WorkerRecord | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "record"}
        out["record"] = self.record.to_json() if self.record is not None else {}
        return out


def _health(uri: str | None) -> tuple[str, str]:
    """(health column, note) for a live worker: one /health with a whole-call deadline."""
    if not uri:
        return "-", ""
    h = ask_health(uri, LIST_HEALTH_DEADLINE_S)
    if h.state == "invalid":
        return "-", f"record {h.detail}; /health not asked"
    if h.state == NO_ANSWER:
        return NO_ANSWER, f"/health: {h.detail}"
    return h.state, ("" if h.healthy else f"/health: {h.detail}")


def _row(paths: PoolPaths, wid: str, rec: WorkerRecord, check_health_now: bool) -> WorkerStatus:
    state, proc = record_identity(paths, rec)
    uptime = None
    if state == "alive" and proc is not None:
        with contextlib.suppress(psutil.Error):
            uptime = max(0.0, time.time() - proc.create_time())
    status = STATUS_OF_STATE[state]
    if status == "running" and rec.starting:
        status = "starting"
    uri = rec.endpoint  # the CP3 (Rust) record has no uri: built from the port then
    health, health_note = "-", ""
    if status in ("running", "starting") and check_health_now:
        health, health_note = _health(uri)
    note = NOTE_OF_STATUS.get(status, "")
    return WorkerStatus(
        worker_id=rec.worker_id, pid=rec.pid, backend=rec.backend or "?",
        model_id=rec.model_id or "?", port=rec.usable_port, status=status, health=health,
        uptime_s=uptime, uri=uri,
        log_path=rec.log_path or str(paths.workers_dir / f"{wid}.log"),
        started_at=rec.started_at, record=rec,
        note="; ".join(n for n in (note, health_note) if n),
    )


def list_workers(paths: PoolPaths, *, check_health_now: bool = True) -> list[WorkerStatus]:
    """Every record with its status from process identity (pid + create time + marker)."""
    rows: list[WorkerStatus] = []
    for wid in record_ids(paths):
        try:
            rec = read_record(paths.workers_dir / f"{wid}.json")
        except FileNotFoundError:
            continue
        except HarnessError as exc:
            rows.append(WorkerStatus(wid, None, "?", "?", None, "invalid", "-", None, None, None,
                                     None, note=exc.message))
            continue
        rows.append(_row(paths, wid, rec, check_health_now))
    return rows
