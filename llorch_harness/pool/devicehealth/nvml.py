"""Device health through NVML (nvidia-ml-py, NVIDIA's own bindings), imported lazily.

Why first choice: NVML is what nvidia-smi itself calls, with no process to start per
reading and no text to parse. Missing bindings or a machine without the driver library
make `available()` false and the caller falls back to nvidia-smi. A reading the device does
not support is None; any other NVML error is noted in `errors`, never raised.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

from llorch_harness.pool.devicehealth.model import DeviceHealth, GpuProcess, clock_reasons

DISABLE_ENV = "LLORCH_NVML"  # "0": never use NVML (tests with a scripted nvidia-smi)
_MIB = 1024 * 1024
_LOCK = threading.Lock()  # nvmlInit/nvmlShutdown are reference counted; keep pairs together


def _module() -> ModuleType | None:
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("0", "off", "no", "false"):
        return None
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    return pynvml


@contextlib.contextmanager
def session() -> Iterator[ModuleType | None]:
    """pynvml, initialised, or None when NVML cannot be used here."""
    nv = _module()
    if nv is None:
        yield None
        return
    with _LOCK:
        try:
            nv.nvmlInit()
        except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            yield None
            return
        try:
            yield nv
        finally:
            with contextlib.suppress(Exception):
                nv.nvmlShutdown()


def available() -> bool:
    with session() as nv:
        return nv is not None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Reader:
    """Calls into NVML for one device, turning errors into None (+ a note)."""

    def __init__(self, nv: ModuleType, h: DeviceHealth) -> None:
        self.nv = nv
        self.h = h

    def get(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self.nv.NVMLError as exc:
            if not isinstance(exc, self.nv.NVMLError_NotSupported):
                self.h.errors.append(f"{what}: {exc}")
            return None
        except AttributeError:  # an older nvidia-ml-py without this call
            return None


def _cuda_version(nv: ModuleType) -> str | None:
    fn = getattr(nv, "nvmlSystemGetCudaDriverVersion_v2", None) or getattr(
        nv, "nvmlSystemGetCudaDriverVersion", None)
    try:
        v = int(fn()) if fn else 0
    except Exception:
        return None
    return f"{v // 1000}.{(v % 1000) // 10}" if v else None


def _processes(r: _Reader, handle: Any) -> list[GpuProcess]:
    procs = r.get("processes", r.nv.nvmlDeviceGetComputeRunningProcesses, handle) or []
    out = []
    for p in procs:
        used = getattr(p, "usedGpuMemory", None)
        out.append(GpuProcess(int(p.pid), used / _MIB if isinstance(used, int) else None))
    return out


def _read_device(nv: ModuleType, index: int, driver: str | None,
                 cuda: str | None) -> DeviceHealth:
    h = DeviceHealth(backend="cuda", index=index, source="nvml", driver_version=driver,
                     cuda_version=cuda)
    r = _Reader(nv, h)
    handle = r.get("handle", nv.nvmlDeviceGetHandleByIndex, index)
    if handle is None:
        return h
    name, uuid = r.get("name", nv.nvmlDeviceGetName, handle), r.get(
        "uuid", nv.nvmlDeviceGetUUID, handle)
    h.name, h.uuid = (_text(name) if name is not None else None,
                      _text(uuid) if uuid is not None else None)
    mem = r.get("memory", nv.nvmlDeviceGetMemoryInfo, handle)
    if mem is not None:
        h.memory_total_mib, h.memory_used_mib = mem.total / _MIB, mem.used / _MIB
    pm = r.get("persistence mode", nv.nvmlDeviceGetPersistenceMode, handle)
    h.persistence_mode = None if pm is None else bool(pm)
    h.ecc_uncorrected = r.get("ecc", nv.nvmlDeviceGetTotalEccErrors, handle,
                              nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC)
    pending = r.get("retired pages", nv.nvmlDeviceGetRetiredPagesPendingStatus, handle)
    h.retired_pages_pending = None if pending is None else bool(pending)
    remap = r.get("remapped rows", nv.nvmlDeviceGetRemappedRows, handle)
    if remap is not None:
        h.remapped_rows_pending, h.remapped_rows_failure = bool(remap[2]), bool(remap[3])
    h.temperature_c = r.get("temperature", nv.nvmlDeviceGetTemperature, handle,
                            nv.NVML_TEMPERATURE_GPU)
    reasons_fn = (getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
                  or nv.nvmlDeviceGetCurrentClocksThrottleReasons)
    mask = r.get("clock reasons", reasons_fn, handle)
    h.throttle_reasons = clock_reasons(int(mask)) if mask is not None else []
    h.processes = _processes(r, handle)
    return h


def collect(indices: Iterable[int] | None = None) -> list[DeviceHealth] | None:
    """Health of the GPUs at the given indices (all when None); None without NVML."""
    with session() as nv:
        if nv is None:
            return None
        try:
            count = int(nv.nvmlDeviceGetCount())
            driver = _text(nv.nvmlSystemGetDriverVersion())
        except nv.NVMLError:
            return None
        cuda = _cuda_version(nv)
        wanted = range(count) if indices is None else [i for i in indices if 0 <= i < count]
        return [_read_device(nv, i, driver, cuda) for i in wanted]


def gpu_uuids() -> dict[int, str] | None:
    """Index -> UUID of every GPU; None without NVML."""
    with session() as nv:
        if nv is None:
            return None
        try:
            return {i: _text(nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetHandleByIndex(i)))
                    for i in range(int(nv.nvmlDeviceGetCount()))}
        except nv.NVMLError:
            return None


def compute_apps() -> list[tuple[str, GpuProcess]] | None:
    """(GPU UUID, process) for every compute process; None without NVML."""
    with session() as nv:
        if nv is None:
            return None
        out: list[tuple[str, GpuProcess]] = []
        try:
            for i in range(int(nv.nvmlDeviceGetCount())):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(nv.nvmlDeviceGetUUID(handle))
                h = DeviceHealth(backend="cuda", index=i, source="nvml")
                out += [(uuid, p) for p in _processes(_Reader(nv, h), handle)]
        except nv.NVMLError:
            return None
        return out


def memory_used_mib(index: int) -> float | None:
    """Used memory of one GPU in MiB; None without NVML or for an unknown index."""
    with session() as nv:
        if nv is None:
            return None
        try:
            return float(nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(index)).used
                         / _MIB)
        except nv.NVMLError:
            return None
