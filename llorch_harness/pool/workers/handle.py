"""A live worker owned by this process: what spawn returns, a context manager that stops it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TypeVar

from llorch_harness.pool import procs
from llorch_harness.pool.leases import Lease
from llorch_harness.pool.paths import PoolPaths
from llorch_harness.pool.workers.defaults import LOG_TAIL_LINES, STOP_GRACE_S
from llorch_harness.pool.workers.logs import tail_lines
from llorch_harness.pool.workers.record import WorkerRecord, record_path
from llorch_harness.pool.workers.stop import StopResult, stop_recorded

T = TypeVar("T")


def _given(value: T | None, name: str) -> T:
    """A field spawn always writes: its absence is a bug of ours, not bad input."""
    if value is None:
        raise ValueError(f"a spawned worker's record has no {name}")
    return value


class WorkerHandle:
    """A live worker owned by this process; a context manager that stops it on exit."""

    def __init__(
        self, paths: PoolPaths, record: WorkerRecord, proc: subprocess.Popen[bytes] | None,
    ) -> None:
        self.paths = paths
        self.record = record
        self._proc = proc
        self._stopped: StopResult | None = None
        self.worker_id: str = record.worker_id
        self.backend: str = _given(record.backend, "backend")
        self.model_id: str = _given(record.model_id, "model_id")
        self.gpu: int = record.gpu or 0
        self.pid: int = record.pid
        self.port: int = _given(record.port, "port")
        self.uri: str = _given(record.uri, "uri")
        self.log_path = Path(_given(record.log_path, "log_path"))
        self.record_path = record_path(paths, self.worker_id)
        self.ready_seconds: float = float(record.ready_seconds or 0.0)
        self.command: list[str] = list(record.cmdline or [])
        self.binary_path = Path(_given(record.binary_path, "binary_path"))
        self.binary_sha256: str = _given(record.binary_sha256, "binary_sha256")
        self.vram_bytes: int | None = record.vram_bytes
        self.create_time: float = _given(record.create_time, "create_time")
        self.lease: Lease | None = None  # the device lease spawn took (GPU backends)

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.worker_id} pid={self.pid} {self.uri}>"

    def poll(self) -> int | None:
        """Exit status if the worker has exited, else None."""
        return self._proc.poll() if self._proc is not None else (
            None if procs.process_alive(self.pid) else -1)

    def stop(self, grace: float = STOP_GRACE_S) -> StopResult:
        """Idempotent: the second call returns the first result."""
        if self._stopped is None:
            self._stopped = stop_recorded(self.paths, self.worker_id, grace, proc=self._proc,
                                          fallback=self.record)
            if self.lease is not None:  # the worker's inherited lock went with it
                self.lease.release()
        return self._stopped

    def log_tail(self, n: int = LOG_TAIL_LINES) -> str:
        return tail_lines(self.log_path, n)

    def __enter__(self) -> WorkerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
