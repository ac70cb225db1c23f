"""Device health before and after a session: NVML (else nvidia-smi) for NVIDIA, the Mac's own
tools for Apple Silicon; `judge` says why a device is unhealthy, `diff` what changed."""

from __future__ import annotations

from llorch_harness.pool.devicehealth.model import (
    DeviceHealth,
    GpuProcess,
    clock_reasons,
    diff,
    judge,
)
from llorch_harness.pool.devicehealth.probe import (
    collect,
    compute_apps,
    gpu_uuids,
    memory_used_mib,
    require_readable,
)

__all__ = ["DeviceHealth", "GpuProcess", "clock_reasons", "collect", "compute_apps", "diff",
           "gpu_uuids", "judge", "memory_used_mib",
           "require_readable"]
