"""Memory of one worker's life: at ready, at the peak of the gate's requests, after the stop.

Why the harness measures instead of trusting `/health`: `vram_bytes` is what the worker
says (at CP3, the model's file size on cuda and 0 elsewhere); what its processes hold is
what a user runs out of. Per life we record the memory of the worker's process tree (RSS,
and on cuda the GPU memory NVML / nvidia-smi attribute to those pids), the device's used
memory before the spawn and after the stop, and `vram_bytes` beside them.

Growth (CP4 asks for no memory leaks): the tree's memory after each of N identical
requests; the first `warmup` readings are dropped (allocators and caches settle), then the
lowest reading of the later half is compared with the lowest of the earlier half, so one
transient spike does not count and a steady leak does.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from llorch_harness.pool import devicehealth

MIB = 1024 * 1024
DEFAULT_GROWTH_MIB = 16.0  # absolute floor of the growth that fails
DEFAULT_GROWTH_FRACTION = 0.05  # ... or this share of the memory at the first kept reading
DEFAULT_RETURN_TOLERANCE_MIB = 64.0  # device memory after the stop vs before the spawn
PEAK_INTERVAL_S = 0.2
LIFE_INTERVAL_S = 0.5  # a whole worker life sampled for its peak: RSS reads are cheap
LIFE_INTERVAL_GPU_S = 1.0  # ... and a GPU read may have to ask nvidia-smi


def tree_pids(pid: int) -> list[int]:
    """The process and its live descendants."""
    try:
        root = psutil.Process(pid)
        return [root.pid] + [c.pid for c in root.children(recursive=True)]
    except psutil.Error:
        return []


def rss_bytes(pids: Iterable[int]) -> int:
    """Summed resident set of the processes (shared pages counted per process)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


def gpu_bytes(pids: Iterable[int], uuid: str | None) -> int | None:
    """GPU memory the driver attributes to the processes (on `uuid` when given); None when
    no driver answers."""
    wanted = set(pids)
    apps = devicehealth.compute_apps()
    if apps is None:
        return None
    mib = sum(p.used_mib or 0.0 for u, p in apps
              if p.pid in wanted and (uuid is None or u == uuid))
    return int(mib * MIB)


@dataclass
class MemorySample:
    """One reading of a worker's memory."""

    at: str  # "ready" | "peak" | "request N" | ...
    rss_bytes: int
    gpu_bytes: int | None = None
    pids: list[int] = field(default_factory=list)


@dataclass
class Growth:
    """The judgement of memory over repeated identical requests."""

    what: str  # "gpu" | "rss"
    samples: list[int]
    warmup: int
    growth_bytes: int
    per_request_bytes: float
    threshold_bytes: int
    ok: bool

    def describe(self) -> str:
        verdict = "within" if self.ok else "beyond"
        return (f"{self.what} memory grew {self.growth_bytes / MIB:.1f} MiB over "
                f"{len(self.samples) - self.warmup} identical requests "
                f"({self.per_request_bytes / MIB:.2f} MiB per request), {verdict} the "
                f"threshold of {self.threshold_bytes / MIB:.1f} MiB")

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"summary": self.describe()}


def judge_growth(samples: Sequence[int], *, what: str = "rss", warmup: int = 1,
                 threshold_mib: float = DEFAULT_GROWTH_MIB,
                 fraction: float = DEFAULT_GROWTH_FRACTION) -> Growth:
    """Does memory keep growing over identical requests? Needs 4 readings after warm-up."""
    kept = list(samples[warmup:])
    if len(kept) < 4:
        raise ValueError(f"need at least {warmup + 4} readings, got {len(samples)}")
    half = len(kept) // 2
    early, late = kept[:half], kept[half:]
    growth = min(late) - min(early)
    steps = len(kept) - half  # readings between the two halves' starts, roughly
    threshold = int(max(threshold_mib * MIB, fraction * kept[0]))
    return Growth(what, list(samples), warmup, growth, growth / max(1, steps), threshold,
                  growth <= threshold)


class MemoryWatch:
    """One worker life: `before_spawn()` (static), then `sample()` at ready, `peak()`
    around the requests, `after_stop()` once it is gone."""

    def __init__(self, backend: str, pid: int, *, index: int = 0, uuid: str | None = None,
                 vram_reported: int | None = None,
                 device_before_mib: float | None = None) -> None:
        self.backend = backend
        self.pid = pid
        self.index = index
        self.uuid = uuid
        self.vram_reported = vram_reported
        self.device_before_mib = device_before_mib
        self.device_after_mib: float | None = None
        self.samples: list[MemorySample] = []
        self.peak_sample: MemorySample | None = None
        self._lock = threading.Lock()  # the sampler thread and the caller both note peaks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def device_used_mib(backend: str, index: int = 0) -> float | None:
        """The device's used memory now (call before the spawn for the baseline)."""
        return devicehealth.memory_used_mib(backend, index)

    def read(self, at: str) -> MemorySample:
        pids = tree_pids(self.pid)
        gpu = gpu_bytes(pids, self.uuid) if self.backend == "cuda" else None
        return MemorySample(at, rss_bytes(pids), gpu, pids)

    def sample(self, at: str) -> MemorySample:
        s = self.read(at)
        self.samples.append(s)
        self._note_peak(s)
        return s

    def _note_peak(self, s: MemorySample) -> None:
        with self._lock:
            if self.peak_sample is None or _size(s) > _size(self.peak_sample):
                self.peak_sample = MemorySample("peak", s.rss_bytes, s.gpu_bytes, s.pids)

    def start_peak(self, interval: float = PEAK_INTERVAL_S) -> None:
        """Sample in a background thread until `stop_peak()` or the process tree is gone
        (a worker stopped behind our back costs no more reads)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.is_set():
                s = self.read("peak")
                if not s.pids:
                    return
                self._note_peak(s)
                self._stop.wait(interval)

        self._thread = threading.Thread(target=run, name=f"memwatch-{self.pid}", daemon=True)
        self._thread.start()

    def stop_peak(self) -> None:
        """End the sampler (idempotent); the peak so far stays."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def sampling(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @contextlib.contextmanager
    def peak(self, interval: float = PEAK_INTERVAL_S) -> Iterator[None]:
        """Sample in the background while the body runs (the gate's requests); a sampler
        already running for the whole life is left running."""
        started = not self.sampling
        self.start_peak(interval)
        try:
            yield
        finally:
            if started:
                self.stop_peak()

    def after_stop(self, settle_s: float = 3.0,
                   reader: Callable[[str, int], float | None] | None = None) -> float | None:
        """The device's used memory once the worker is gone: read until it is back to the
        baseline (within the tolerance) or `settle_s` has passed."""
        read = reader or self.device_used_mib
        deadline = time.monotonic() + settle_s
        while True:
            self.device_after_mib = read(self.backend, self.index)
            if self.returned() is not False or time.monotonic() >= deadline:
                return self.device_after_mib
            time.sleep(0.2)

    def returned(self, tolerance_mib: float = DEFAULT_RETURN_TOLERANCE_MIB) -> bool | None:
        """Was the device's memory given back? None when either reading is missing."""
        if self.device_before_mib is None or self.device_after_mib is None:
            return None
        return self.device_after_mib <= self.device_before_mib + tolerance_mib

    def to_json(self) -> dict[str, Any]:
        ready = next((s for s in self.samples if s.at == "ready"), None)
        return {
            "backend": self.backend, "pid": self.pid, "device_index": self.index,
            "device_uuid": self.uuid, "vram_bytes_reported": self.vram_reported,
            "ready": asdict(ready) if ready else None,
            "peak": asdict(self.peak_sample) if self.peak_sample else None,
            "device_used_mib_before_spawn": self.device_before_mib,
            "device_used_mib_after_stop": self.device_after_mib,
            "device_memory_returned": self.returned(),
        }


def _size(s: MemorySample) -> int:
    return s.gpu_bytes if s.gpu_bytes is not None else s.rss_bytes
