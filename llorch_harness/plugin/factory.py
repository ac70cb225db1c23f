"""The gate's worker factory: spawns workers of the lab's kind for one model, shares one live
worker per device, and keeps a record of every worker life it ran.

Why a record per life: CP4's "All workers spawn and stop cleanly" is about every worker of a
model on a backend (the live one and the restart check's), and a worker that died on its
own, left a child or kept its port is a finding even when every request before it passed.
Why peers: a factory per model, and a worker of one model is stopped before another
model's worker starts on the same device (plugin/models.py).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from llorch_harness.plugin.memory import MemoryLedger

if TYPE_CHECKING:
    from llorch_harness.plugin.fixtures import GateModel
    from llorch_harness.plugin.labs import LabDecision
    from llorch_harness.pool.paths import PoolPaths
    from llorch_harness.pool.workers import StopResult, WorkerHandle


class Stoppable(Protocol):
    """What the atexit and teardown safety net needs of a worker: a way to stop it."""

    def stop(self, grace: float = ...) -> object: ...


_TRACKED: dict[int, Stoppable] = {}
_TRACKED_LOCK = threading.Lock()


def _track(handle: Stoppable) -> None:
    with _TRACKED_LOCK:
        _TRACKED[id(handle)] = handle


def _untrack(handle: Stoppable) -> None:
    with _TRACKED_LOCK:
        _TRACKED.pop(id(handle), None)


def stop_tracked(grace: float = 5.0) -> int:
    """Stop every worker this process started and still holds (teardown and atexit)."""
    with _TRACKED_LOCK:
        handles = list(_TRACKED.values())
        _TRACKED.clear()
    for h in handles:
        with contextlib.suppress(Exception):
            h.stop(grace=grace)
    return len(handles)


atexit.register(stop_tracked)


def xdist_worker_name() -> str | None:
    """This process's xdist worker name (gw0, ...), None outside xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER")


@dataclass
class WorkerLife:
    """One worker the factory spawned (or failed to): how it started and how it ended."""

    model_id: str
    backend: str
    gpu: int
    worker_id: str
    role: str  # "live" (the shared worker of the inference checks) | "spawn" (a test's own)
    ready_seconds: float | None = None
    spawn_error: str | None = None
    died_on_its_own: bool = False  # gone before the factory stopped it
    stop: dict[str, Any] | None = None  # StopResult.to_json()
    left_behind: str | None = None  # leftovers.Leftovers.describe(), None: nothing
    log_path: str | None = None  # where this life's log is now (a respawn rotates it to .1)
    memory: dict[str, Any] | None = None  # the memory ledger's record of this life

    @property
    def clean(self) -> bool:
        """Spawned, alive until asked to stop, ended on SIGINT, nothing left behind."""
        return (self.spawn_error is None and not self.died_on_its_own and self.stop is not None
                and self.stop.get("step") == "sigint" and bool(self.stop.get("port_free"))
                and self.left_behind is None)

    def problem(self) -> str | None:
        """Why this life was not clean, in one phrase (None: it was)."""
        if self.spawn_error is not None:
            return f"{self.worker_id} did not start: {self.spawn_error}"
        if self.died_on_its_own:
            return f"{self.worker_id} died on its own before it was stopped"
        if self.stop is None:
            return f"{self.worker_id} was never stopped"
        if self.stop.get("step") != "sigint":
            return (f"{self.worker_id} did not end on SIGINT within the grace: stopped by "
                    f"{self.stop.get('step')} after {self.stop.get('seconds')} s")
        if not self.stop.get("port_free") or self.left_behind is not None:
            return f"{self.worker_id} left behind: {self.left_behind or 'its port still bound'}"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model_id, "backend": self.backend, "gpu": self.gpu,
                "worker_id": self.worker_id, "role": self.role,
                "ready_seconds": self.ready_seconds, "spawn_error": self.spawn_error,
                "died_on_its_own": self.died_on_its_own, "stop": self.stop,
                "left_behind": self.left_behind, "clean": self.clean, "log_path": self.log_path}


@dataclass
class WorkerFactory:
    """Spawns workers of the lab's kind; one live worker per (backend, gpu) is shared."""

    lab: LabDecision
    paths: PoolPaths
    model_id: str
    gate_model: GateModel | None = None  # for the model files' hashes in every report
    live_workers: dict[tuple[str, int], WorkerHandle] = field(default_factory=dict)
    spawned: list[WorkerHandle] = field(default_factory=list)
    memory: MemoryLedger = field(default_factory=MemoryLedger)  # each life's memory (issue 15)
    lives: list[WorkerLife] = field(default_factory=list)
    peers: list[WorkerFactory] = field(default_factory=list)  # the other models' factories
    id_tag: str = ""  # in worker ids of a model other than the gate model (its own logs)
    _life_of: dict[int, tuple[WorkerLife, list[Any]]] = field(default_factory=dict)

    def worker_kind(self, backend: str) -> str:
        st = self.lab.backends[backend]
        if not st.usable:
            pytest.skip(st.reason or f"{backend} not usable")
        return st.worker or self.lab.worker_kind

    def default_id(self, backend: str, gpu: int, tag: str = "gate") -> str:
        model = f"{self.id_tag}-" if self.id_tag else ""
        return f"{tag}-{model}{backend}-{gpu}-{xdist_worker_name() or 'main'}"

    def release_device(self, backend: str, gpu: int) -> None:
        """Stop this factory's live worker on the device (another model needs it)."""
        handle = self.live_workers.pop((backend, gpu), None)
        if handle is not None:
            self.stop(handle)

    def _make_room(self, backend: str, gpu: int) -> None:
        for peer in self.peers:
            if peer is not self and peer.model_id != self.model_id:
                peer.release_device(backend, gpu)

    def spawn(self, backend: str, gpu: int = 0, *, worker_id: str | None = None,
              ready_timeout: float | None = None, extra_env: dict[str, str] | None = None,
              role: str = "spawn") -> WorkerHandle:
        """A fresh worker, stopped at session end at the latest (the test may stop it first)."""
        from llorch_harness.pool.workers import spawn_worker

        kind = self.worker_kind(backend)
        self._make_room(backend, gpu)
        wid = worker_id or self.default_id(backend, gpu, "spawn")
        life = WorkerLife(self.model_id, backend, gpu, wid, role)
        self._note_rotation(wid)
        self.lives.append(life)
        before = self.memory.before(backend, gpu)
        try:
            handle = spawn_worker(
                self.paths, backend, self.model_id, gpu=gpu, port=0, worker=kind,
                bin_dir=self.lab.settings.bin_dir,
                ready_timeout=ready_timeout or self.lab.settings.ready_timeout,
                extra_env=extra_env, worker_id=wid,
                die_with_parent=True, lease_dir=self.lab.settings.lease_dir,
                lease_wait=self.lab.settings.lease_wait,
                lease_out=sys.__stderr__,  # a wait for a leased device is said at once
            )
        except BaseException as exc:
            life.spawn_error = _one_line(exc)
            raise
        life.ready_seconds = handle.ready_seconds
        life.log_path = str(handle.log_path)
        _track(handle)
        self.spawned.append(handle)
        self._life_of[id(handle)] = (life, _snapshot(handle))
        self.memory.start(handle, before)
        return handle

    def live(self, backend: str, gpu: int = 0) -> WorkerHandle:
        """The shared worker for (backend, gpu); respawned if it died."""
        key = (backend, gpu)
        handle = self.live_workers.get(key)
        if handle is not None and handle.poll() is None:
            return handle
        if handle is not None:
            self.stop(handle)
        handle = self.spawn(backend, gpu, worker_id=self.default_id(backend, gpu), role="live")
        self.live_workers[key] = handle
        return handle

    def restart(self, backend: str, gpu: int = 0) -> WorkerHandle:
        """Stop the live worker and start it again (same id, same model)."""
        key = (backend, gpu)
        old = self.live_workers.pop(key, None)
        if old is not None:
            self.stop(old)
        return self.live(backend, gpu)

    def stop(self, handle: WorkerHandle, grace: float | None = None) -> StopResult:
        """SIGINT with a grace longer than a generation (workers.STOP_GRACE_S); the life's
        end is recorded: how it stopped, and what it left behind."""
        from llorch_harness.pool.workers import STOP_GRACE_S

        grace = STOP_GRACE_S if grace is None else grace
        life, refs = self._life_of.pop(id(handle), (None, []))
        if life is not None and handle.poll() is not None:
            life.died_on_its_own = True
        try:
            result = handle.stop(grace=grace)
        finally:
            _untrack(handle)
            record = self.memory.finish(handle)
            if life is not None:
                life.memory = record
        if life is not None:
            life.stop = result.to_json()
            life.left_behind = _left_behind(refs, handle)
        return result

    def _note_rotation(self, worker_id: str) -> None:
        """A spawn under an id keeps that id's previous log as <log>.1 (workers.rotate_log):
        follow it, so every life's log can still be read; older ones are gone."""
        for earlier in self.lives:
            if earlier.worker_id != worker_id or earlier.log_path is None:
                continue
            earlier.log_path = (None if earlier.log_path.endswith(".1")
                                else earlier.log_path + ".1")

    def lives_of(self, backend: str, role: str | None = "live") -> list[WorkerLife]:
        return [x for x in self.lives if x.backend == backend and (role is None or x.role == role)]

    def stop_all(self) -> None:
        for handle in [*self.spawned]:
            with contextlib.suppress(Exception):
                self.stop(handle)
        self.live_workers.clear()
        self.spawned.clear()


def _one_line(exc: BaseException) -> str:
    one_line = getattr(exc, "one_line", None)
    text = one_line() if callable(one_line) else (str(exc) or type(exc).__name__)
    return str(text).splitlines()[0][:400] if text else type(exc).__name__


def _snapshot(handle: WorkerHandle) -> list[Any]:
    """The worker's processes while it runs (a child whose parent died is found no more)."""
    from llorch_harness.pool import leftovers

    try:
        return leftovers.snapshot(handle.pid)
    except Exception:  # a reading must never stop a spawn
        return []


def _left_behind(refs: list[Any], handle: WorkerHandle) -> str | None:
    """What the stopped worker left: a live descendant or its port (settled a few seconds)."""
    from llorch_harness.pool import leftovers

    try:
        found = leftovers.find(refs, port=handle.port)
    except Exception as exc:  # unreadable process table: say so, never crash a stop
        return f"could not check: {exc}"
    if not found:
        return None
    leftovers.clean_up(found)  # the finding is kept; the pool is left clean
    return found.describe()
