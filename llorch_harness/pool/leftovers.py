"""What a stopped worker left behind: live descendants, its port still bound, GPU memory.

Why a finding and not just a kill: a worker that forks a helper and exits without it, or
keeps its port or GPU memory after it is told to stop, has a defect a user will meet (the
next spawn finds the port taken, the card full). The stop ladder would kill such leftovers
and the gate would pass; instead the harness snapshots the worker's tree while it runs,
stops the worker the way the contract says (SIGINT), gives it `settle_s` seconds, and
reports whatever is still there (pid and command line, port, MiB). Then it cleans up.

A process counts as the same one only with the same pid *and* create time, so a pid reused
meanwhile is never blamed on the worker, nor signalled.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from llorch_harness.pool import procs
from llorch_harness.redaction import redact

DEFAULT_SETTLE_S = 3.0
_POLL_S = 0.1
_CMDLINE_CHARS = 160


@dataclass(frozen=True)
class ProcRef:
    """A process as it was seen: pid, create time and command line."""

    pid: int
    create_time: float
    cmdline: tuple[str, ...]

    @classmethod
    def of(cls, proc: psutil.Process) -> ProcRef | None:
        try:
            with proc.oneshot():
                return cls(proc.pid, proc.create_time(), tuple(proc.cmdline()))
        except (psutil.Error, OSError):
            return None

    def process(self) -> psutil.Process | None:
        """The live process if it is still this one (same create time), else None."""
        try:
            proc = psutil.Process(self.pid)
            same = abs(proc.create_time() - self.create_time) <= procs.CREATE_TIME_TOLERANCE_S
        except psutil.Error:
            return None
        return proc if same and not procs.is_gone(proc) else None

    def describe(self) -> str:
        cmd = redact(" ".join(self.cmdline))
        if len(cmd) > _CMDLINE_CHARS:
            cmd = cmd[:_CMDLINE_CHARS] + "..."
        return f"pid {self.pid} ({cmd or '?'})"


def snapshot(pid: int, extra: Iterable[psutil.Process] = ()) -> list[ProcRef]:
    """The worker and its descendants now, plus `extra` (e.g. its marker's carriers): taken
    while it runs, because a child whose parent died is no longer found as its child."""
    found: dict[int, ProcRef] = {}
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        members = []
    for proc in [*members, *extra]:
        ref = ProcRef.of(proc)
        if ref is not None:
            found.setdefault(ref.pid, ref)
    return list(found.values())


@dataclass
class Leftovers:
    """What was still there `settle_s` after the stop (empty: nothing)."""

    processes: list[ProcRef] = field(default_factory=list)
    port: int | None = None  # still bound
    gpu_mib: float | None = None  # GPU memory not returned

    def __bool__(self) -> bool:
        return bool(self.processes) or self.port is not None or bool(self.gpu_mib)

    def describe(self) -> str:
        parts = [f"{p.describe()} still running" for p in self.processes]
        if self.port is not None:
            parts.append(f"port {self.port} still bound")
        if self.gpu_mib:
            parts.append(f"{self.gpu_mib:g} MiB of GPU memory not returned")
        return "; ".join(parts) or "nothing left behind"

    def to_json(self) -> dict[str, Any]:
        return {
            "processes": [{"pid": p.pid, "cmdline": redact(" ".join(p.cmdline))}
                          for p in self.processes],
            "port": self.port, "gpu_mib": self.gpu_mib, "summary": self.describe(),
        }


def _alive(refs: Iterable[ProcRef]) -> list[ProcRef]:
    return [r for r in refs if r.process() is not None]


def find(refs: Iterable[ProcRef], *, port: int | None = None,
         gpu_not_returned: Callable[[], float | None] | None = None,
         late: Callable[[], Iterable[psutil.Process]] = tuple,
         settle_s: float = DEFAULT_SETTLE_S) -> Leftovers:
    """Wait up to `settle_s` for the worker's processes to end, its port to be free and
    its GPU memory to come back (`gpu_not_returned()` gives the MiB still missing); whatever
    is left then is the finding. `late()` names processes found after the stop that belong
    to the worker all the same (its marker's carriers)."""
    refs = list(refs)
    deadline = time.monotonic() + max(0.0, settle_s)
    while True:
        found = Leftovers()
        known = {(r.pid, r.create_time) for r in refs}
        more = [r for p in late()
                if (r := ProcRef.of(p)) is not None and (r.pid, r.create_time) not in known]
        found.processes = _alive([*refs, *more])
        if port is not None and not procs.port_is_free(port):
            found.port = port
        if gpu_not_returned is not None:
            missing = gpu_not_returned()
            found.gpu_mib = round(missing, 1) if missing and missing > 0 else None
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(_POLL_S)


def clean_up(found: Leftovers, *, term_wait: float = 2.0) -> list[ProcRef]:
    """Stop what was left (SIGTERM, then SIGKILL; whole process groups it leads) and wait
    for its port; returns the processes that survived even SIGKILL."""
    alive = [p for r in found.processes if (p := r.process()) is not None]
    survivors: list[psutil.Process] = []
    if alive:
        first, rest = alive[0], alive[1:]
        res = procs.stop_ladder(first, grace=0.0, term_wait=term_wait, extra=lambda: rest)
        survivors = res.survivors
    if found.port is not None:
        with contextlib.suppress(OSError):
            procs.wait_port_free(found.port, timeout=term_wait)
    return [r for r in found.processes if any(s.pid == r.pid for s in survivors)]


def sigint_and_wait(ref: ProcRef, grace: float) -> bool:
    """Stop the worker the way the contract does (SIGINT to its pid, nothing else) and wait
    up to `grace` seconds for it to exit; True once it is gone."""
    proc = ref.process()
    if proc is None:
        return True
    with contextlib.suppress(psutil.Error):
        proc.send_signal(signal.SIGINT)
    return not procs.wait_gone([proc], grace)


def device_memory_check(backend: str, index: int,
                        before_mib: float | None) -> Callable[[], float | None] | None:
    """For `find`: the MiB of the device's memory not back to `before_mib` (read before the
    spawn), with memwatch's tolerance; None where the device's memory cannot be read."""
    if before_mib is None:
        return None
    from llorch_harness.pool.memwatch import DEFAULT_RETURN_TOLERANCE_MIB, MemoryWatch

    def missing() -> float | None:
        after = MemoryWatch.device_used_mib(backend, index)
        if after is None or after <= before_mib + DEFAULT_RETURN_TOLERANCE_MIB:
            return None
        return after - before_mib

    return missing
