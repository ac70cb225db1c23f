"""Which source answers for which backend: NVML first, nvidia-smi second, the Mac's tools.

Why the fallbacks never raise: health is evidence for the report, not a precondition; a
device that cannot be read gets a reading with `source="none"` and the reason in `errors`.
"""

from __future__ import annotations

from collections.abc import Iterable

from llorch_harness.errors import LabFailure
from llorch_harness.pool.devicehealth import apple, nvml, smi
from llorch_harness.pool.devicehealth.model import DeviceHealth, GpuProcess


def _cuda(indices: list[int]) -> list[DeviceHealth]:
    found = nvml.collect(indices)
    why = "NVML unavailable"
    if found is None:
        try:
            found = smi.collect(indices)
        except smi.SmiError as exc:
            why = f"NVML unavailable; {exc}"
            found = []
    got = {h.index for h in found}
    missing = [DeviceHealth(backend="cuda", index=i, source="none",
                            errors=[f"GPU {i} not found ({why})" if found else why])
               for i in indices if i not in got]
    return sorted(found + missing, key=lambda h: h.index)


def collect(backend: str, indices: Iterable[int] = (0,)) -> list[DeviceHealth]:
    """One reading per device the run uses (cpu: none; it is no leased device)."""
    wanted = sorted(set(indices))
    if backend == "cuda":
        return _cuda(wanted)
    if backend == "metal":
        return [apple.collect(i) for i in wanted]
    return []


DEVICE_UNREADABLE = "device health unreadable"


def require_readable(backend: str, readings: Iterable[DeviceHealth]) -> None:
    """Raise LabFailure when a device's health could not be read at all (no NVML, no
    nvidia-smi, a tool that failed or hung): nothing is known about the device, so the
    item could not be checked; it is no evidence against the device or the worker."""
    unread = [f"{backend}:{h.index}: {'; '.join(h.errors) or 'no source answered'}"
              for h in readings if h.source == "none"]
    if unread:
        raise LabFailure(DEVICE_UNREADABLE, "; ".join(unread),
                         "install nvidia-ml-py or nvidia-smi (a Mac: pmset, sysctl)")


def gpu_uuids() -> dict[int, str]:
    """Physical CUDA index -> UUID ({} when neither NVML nor nvidia-smi answers)."""
    found = nvml.gpu_uuids()
    if found is not None:
        return found
    try:
        return smi.gpu_uuids()
    except smi.SmiError:
        return {}


def compute_apps() -> list[tuple[str, GpuProcess]] | None:
    """(GPU UUID, process) of every compute process (None when no driver answers)."""
    found = nvml.compute_apps()
    if found is not None:
        return found
    try:
        return smi.compute_apps()
    except smi.SmiError:
        return None


def memory_used_mib(backend: str, index: int) -> float | None:
    """The whole device's used memory in MiB (cuda only; None when nobody can say)."""
    if backend != "cuda":
        return None
    found = nvml.memory_used_mib(index)
    if found is not None:
        return found
    try:
        return smi.memory_used_mib(index)
    except smi.SmiError:
        return None
