"""Measure one worker build the same way every run: fresh workers, each with a warm-up and
measured requests.

Why a fixed protocol (`fingerprint.Protocol`): figures are comparable across runs only
when they come from the same requests. Each load spawns a fresh worker (spawn to ready is
the load time; memory is read once it is ready), which then answers a warm-up request
(excluded: first-request costs are not decoding speed) and `requests` measured greedy
requests of the same prompt; its peak memory is read before it stops. Every figure thus has
one sample per worker life at least (5 lives by default), the repetitions the regression
rule's rank test needs. Memory: VRAM on cuda (nvidia-smi, per process), RSS elsewhere; the
peak is the kernel's high-water mark where Linux has one (VmHWM), else the largest sample.
The harness's own overhead is the measuring time not spent waiting for the worker
(spawning, requests, stopping).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from llorch_harness.perf.figures import Measurement, request_timing
from llorch_harness.perf.fingerprint import DEFAULT_PROTOCOL, Protocol

NVIDIA_SMI_TIMEOUT_S = 10.0


def run_request(handle: Any, protocol: Protocol, tag: str) -> Any:
    """One greedy request of the protocol, with the log's facts of it attached."""
    from llorch_harness.checks.workerclient import ExecuteRequest, execute
    from llorch_harness.checks.workerlog import facts_for, log_size

    job_id = f"perf-{tag}-{uuid.uuid4().hex[:8]}"
    log_path = Path(handle.log_path) if getattr(handle, "log_path", None) else None
    offset = log_size(log_path)
    res = execute(handle.uri, ExecuteRequest(job_id=job_id, prompt=protocol.prompt,
                                             max_tokens=protocol.max_tokens,
                                             temperature=0.0, seed=42))
    if log_path is not None:
        res.log = facts_for(log_path, job_id, offset)
    return res


def memory_kind(backend: str) -> str:
    return "VRAM" if backend == "cuda" else "RSS"


def _tree(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def rss_bytes(pid: int) -> float | None:
    """Resident memory of the worker and its children."""
    try:
        return float(sum(p.memory_info().rss for p in _tree(pid)))
    except psutil.Error:
        return None


def rss_high_water(pid: int) -> float | None:
    """Linux's VmHWM of the worker process (peak resident set), None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        text = Path(f"/proc/{int(pid)}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            parts = line.split()
            with contextlib.suppress(ValueError, IndexError):
                return float(int(parts[1]) * 1024)
    return None


def vram_bytes(pid: int) -> float | None:
    """GPU memory used by the worker's processes per nvidia-smi, None when it cannot say."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        pids = {p.pid for p in _tree(pid)}
        out = subprocess.run([exe, "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=NVIDIA_SMI_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError, psutil.Error):
        return None
    total, seen = 0.0, False
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        with contextlib.suppress(ValueError, IndexError):
            if int(parts[0]) in pids:
                total += float(parts[1]) * (1 << 20)  # MiB
                seen = True
    return total if seen else None


def memory_now(pid: int, backend: str) -> float | None:
    return vram_bytes(pid) if backend == "cuda" else rss_bytes(pid)


class _Clock:
    """Time spent waiting for the worker, to subtract from the measuring time."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.waited = 0.0

    @contextlib.contextmanager
    def waiting(self) -> Any:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.waited += time.perf_counter() - t

    def overhead(self) -> float:
        return max(0.0, time.perf_counter() - self.started - self.waited)


def measure(spawn: Callable[[int], Any], stop: Callable[[Any], Any], backend: str,
            protocol: Protocol = DEFAULT_PROTOCOL) -> Measurement:
    """Run the protocol; `spawn(i)` returns a ready WorkerHandle, `stop(handle)` stops it.
    Every worker started here is stopped here, also on failure."""
    clock = _Clock()
    m = Measurement(memory_kind=memory_kind(backend))
    handle = None
    try:
        for i in range(protocol.loads):
            with clock.waiting():
                handle = spawn(i)
            if handle.ready_seconds:
                m.load_s.append(float(handle.ready_seconds))
            peak = _sample(m, handle.pid, backend, ready=True)
            peak = _requests(m, handle, protocol, clock, backend, i, peak)
            peak = _peak(handle.pid, backend, peak)
            if peak is not None:
                m.memory_peak.append(peak)
            with clock.waiting():
                stop(handle)
            handle = None
    finally:
        if handle is not None:
            with clock.waiting():
                stop(handle)
    m.overhead_s = clock.overhead()
    return m


def _requests(m: Measurement, handle: Any, protocol: Protocol, clock: _Clock,
              backend: str, load: int, peak: float | None) -> float | None:
    for w in range(protocol.warmups):
        with clock.waiting():
            run_request(handle, protocol, f"warmup{w}" if load == 0 else f"l{load}warmup{w}")
    for r in range(protocol.requests):
        n = load * protocol.requests + r
        with clock.waiting():
            res = run_request(handle, protocol, f"m{n}")
        m.timings.append(request_timing(res))
        value = _sample(m, handle.pid, backend, ready=False)
        if value is not None:
            peak = value if peak is None else max(peak, value)
    return peak


def _sample(m: Measurement, pid: int, backend: str, *, ready: bool) -> float | None:
    value = memory_now(pid, backend)
    if value is None:
        m.memory_why = (f"{memory_kind(backend)} of pid {pid} not readable"
                        + (" (nvidia-smi lists no compute process for it)"
                           if backend == "cuda" else ""))
        return None
    if ready:
        m.memory_ready.append(value)
    return value


def _peak(pid: int, backend: str, peak: float | None) -> float | None:
    """This worker life's peak: the largest sample, raised to Linux's VmHWM for RSS."""
    if backend == "cuda" or peak is None:
        return peak
    hwm = rss_high_water(pid)
    return peak if hwm is None else max(peak, hwm)
