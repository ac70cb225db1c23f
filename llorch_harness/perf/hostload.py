"""The host's conditions over a performance measurement, and whether they let it count.

Why: a figure measured while other jobs used the cores (a CI runner, a shared workstation)
says how busy the host was, not how fast the build is. Every measurement therefore runs
inside a `HostWindow`, which records CPU time used by *other* processes (the system's busy
CPU time minus the harness's and its workers' process trees), the load average and the CPU
frequency, and on a device its clocks, throttle reasons and other processes' use
(`devload.py`). `BusyPolicy` says when that was too much: other processes above a stated
share of the cores, or the GPU busy or throttled. A busy measurement is never judged: the
harness waits a bounded time for quiet and measures again (`perf/session.py`).

How the harness's own CPU time is counted without sampling: a snapshot of the own trees at
the start and at the end, each process's user + system time *plus its reaped children's*
(Linux `cutime`/`cstime`), so a worker that started and was stopped inside the window is
counted through the parent that waited for it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from llorch_harness.perf import devload

DEFAULT_CPU_SHARE = 0.25
DEFAULT_QUIET_WAIT_S = 30.0
QUIET_PROBE_S = 2.0  # the window a wait for quiet judges the host over
_NOT_BUSY = ("idle", "iowait", "guest", "guest_nice")  # guest time is inside user on Linux


@dataclass(frozen=True)
class BusyPolicy:
    """When a measurement's host was too busy for its figures to be judged."""

    cpu_share: float = DEFAULT_CPU_SHARE  # other processes' CPU / (cores x window)
    gpu_share: float = DEFAULT_CPU_SHARE  # GPU utilization without our workers
    quiet_wait_s: float = DEFAULT_QUIET_WAIT_S  # how long to wait for quiet, at most
    probe_s: float = QUIET_PROBE_S

    def describe(self) -> str:
        return (f"busy: other processes above {self.cpu_share:.0%} of the cores or "
                f"{self.gpu_share:.0%} of the GPU, or the GPU/CPU throttled; waits up to "
                f"{self.quiet_wait_s:g} s for quiet")


def harness_root() -> int:
    """The gate session's top process: the xdist controller for an xdist worker (its parent:
    execnet starts workers directly), else this process."""
    return os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()


def _busy_s(t: Any) -> float:
    fields = t._asdict()
    return sum(v for k, v in fields.items() if k not in _NOT_BUSY)


def _tree_cpu(roots: Iterable[int]) -> dict[int, tuple[float, float]]:
    """pid -> (create time, CPU seconds incl. reaped children) over the roots' trees."""
    out: dict[int, tuple[float, float]] = {}
    for root in set(roots):
        try:
            top = psutil.Process(root)
            procs = [top, *top.children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            with contextlib.suppress(psutil.Error):
                c = p.cpu_times()
                out[p.pid] = (p.create_time(),
                              c.user + c.system + c.children_user + c.children_system)
    return out


def _own_delta(start: Mapping[int, tuple[float, float]],
               end: Mapping[int, tuple[float, float]]) -> float:
    total = 0.0
    for pid, (created, cpu) in end.items():
        before = start.get(pid)
        total += cpu - (before[1] if before and before[0] == created else 0.0)
    for pid, (created, cpu) in start.items():  # gone: its parent's children time has it all
        if pid not in end or end[pid][0] != created:
            total -= cpu
    return max(0.0, total)


def _freq() -> tuple[float | None, float | None]:
    with contextlib.suppress(Exception):  # not readable on every platform / container
        f = psutil.cpu_freq()
        if f is not None:
            return (float(f.current) or None, float(f.max) or None)
    return None, None


@dataclass
class HostConditions:
    """What the host did over one measuring window."""

    window_s: float
    cores: int
    others_cpu_s: float  # CPU seconds of processes outside the harness's trees
    own_cpu_s: float
    load_avg: tuple[float, float, float] | None = None  # at the window's end
    cpu_mhz: float | None = None  # mean of the start and end readings
    cpu_max_mhz: float | None = None
    devices: list[devload.DeviceReading] = field(default_factory=list)  # start and end
    busy_reasons: list[str] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return bool(self.busy_reasons)

    @property
    def others_cores(self) -> float:
        """Cores other processes kept busy on average."""
        return self.others_cpu_s / self.window_s if self.window_s > 0 else 0.0

    @property
    def others_share(self) -> float:
        return self.others_cores / self.cores if self.cores else 0.0

    def describe(self) -> str:
        """One line a person can read beside the figures."""
        parts = [f"other processes used {self.others_cores:.2f} of {self.cores} cores "
                 f"({self.others_share:.0%}) over {self.window_s:.1f} s"]
        if self.load_avg is not None:
            parts.append(f"load average {self.load_avg[0]:.2f}")
        if self.cpu_mhz is not None:
            top = f" of {self.cpu_max_mhz:g}" if self.cpu_max_mhz else ""
            parts.append(f"CPU {self.cpu_mhz:.0f}{top} MHz")
        dev = devload.describe(self.devices)
        if dev:
            parts.append(dev)
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"window_s": round(self.window_s, 3), "cores": self.cores,
                "others_cpu_s": round(self.others_cpu_s, 3),
                "others_cores": round(self.others_cores, 3),
                "others_share": round(self.others_share, 4),
                "own_cpu_s": round(self.own_cpu_s, 3),
                "load_avg": list(self.load_avg) if self.load_avg else None,
                "cpu_mhz": self.cpu_mhz, "cpu_max_mhz": self.cpu_max_mhz,
                "devices": [d.to_json() for d in self.devices],
                "busy": self.busy, "busy_reasons": list(self.busy_reasons),
                "text": self.describe()}


class HostWindow:
    """Measures the host's conditions between `start()` and `stop()` (a context manager).

    `own_roots` returns the pids whose trees are the harness's own (default: the gate
    session's top process); `backend`/`gpu` name the device to read at the edges."""

    def __init__(self, policy: BusyPolicy, backend: str = "cpu", gpu: int = 0,
                 own_roots: Callable[[], Iterable[int]] | None = None) -> None:
        self.policy = policy
        self.backend = backend
        self.gpu = gpu
        self.own_roots = own_roots or (lambda: [harness_root()])
        self.conditions: HostConditions | None = None

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._sys0 = _busy_s(psutil.cpu_times())
        self._own0 = _tree_cpu(self.own_roots())
        self._f0 = _freq()
        self._dev = [d for d in (devload.read(self.backend, self.gpu),) if d is not None]

    def stop(self) -> HostConditions:
        own1 = _tree_cpu(self.own_roots())
        sys1 = _busy_s(psutil.cpu_times())
        window = max(1e-6, time.monotonic() - self._t0)
        own = _own_delta(self._own0, own1)
        f1 = _freq()
        dev_end = devload.read(self.backend, self.gpu)
        devices = self._dev + ([dev_end] if dev_end is not None else [])
        mhz = [f for f in (self._f0[0], f1[0]) if f]
        load = None
        with contextlib.suppress(OSError, AttributeError):
            load = tuple(round(x, 2) for x in os.getloadavg())
        cond = HostConditions(window, psutil.cpu_count() or 1,
                              max(0.0, sys1 - self._sys0 - own), own,
                              load,  # type: ignore[arg-type]
                              sum(mhz) / len(mhz) if mhz else None, f1[1] or self._f0[1],
                              devices)
        cond.busy_reasons = self._reasons(cond, set(own1))
        self.conditions = cond
        return cond

    def _reasons(self, cond: HostConditions, own_pids: set[int]) -> list[str]:
        reasons = []
        if cond.others_share > self.policy.cpu_share:
            reasons.append(f"other processes used {cond.others_cores:.2f} of {cond.cores} "
                           f"cores ({cond.others_share:.0%} > {self.policy.cpu_share:.0%})")
        return reasons + devload.busy_reasons(cond.devices, own_pids, self.policy.gpu_share)

    @contextlib.contextmanager
    def watching(self) -> Iterator[HostWindow]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


def wait_for_quiet(policy: BusyPolicy, backend: str = "cpu", gpu: int = 0,
                   own_roots: Callable[[], Iterable[int]] | None = None,
                   deadline_s: float | None = None) -> tuple[bool, HostConditions | None, float]:
    """Probe the host in windows of `policy.probe_s` until one is quiet or the wait bound
    passes; (quiet, the last probe's conditions, seconds waited)."""
    t0 = time.monotonic()
    bound = policy.quiet_wait_s if deadline_s is None else deadline_s
    last: HostConditions | None = None
    while True:
        left = bound - (time.monotonic() - t0)
        if left <= 0:
            return False, last, time.monotonic() - t0
        win = HostWindow(policy, backend, gpu, own_roots)
        win.start()
        time.sleep(min(policy.probe_s, max(0.2, left)))  # the probe's window itself
        last = win.stop()
        if not last.busy:
            return True, last, time.monotonic() - t0
