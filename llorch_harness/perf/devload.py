"""The device's side of the host conditions a performance figure was measured under: on CUDA
the SM clock, the clock-event (throttle) reasons and how busy other processes kept the GPU;
on a Mac the thermal state (pmset).

Why read at the edges of the measuring window: the harness's own workers run only inside
it, so the GPU's utilization just before and just after is other processes' use, and a
clock-event reason present at either edge (thermal or power slowdown) was there while the
figures were taken. Sources as the device-health item has them: NVML first (imported
lazily), then `nvidia-smi`, then the Mac's tools; a source that cannot answer leaves the
reading empty with the reason, never an exception.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

# Clock-event reasons that slow the SM clock down on their own (power and heat); the others
# (gpu_idle, applications_clocks_setting, sync_boost, display_clock_setting) do not.
THROTTLING = ("sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
              "hw_power_brake_slowdown")
MAC_THROTTLED = ("fair", "serious", "critical")  # pmset: the CPU speed is limited


@dataclass
class DeviceReading:
    """One device at one edge of the window (None: the source does not say)."""

    backend: str
    index: int
    source: str  # nvml | nvidia-smi | apple | none
    sm_clock_mhz: float | None = None
    sm_clock_max_mhz: float | None = None
    utilization_pct: float | None = None  # the whole GPU's, over the driver's last period
    throttle_reasons: list[str] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)  # pid, used_mib, name
    thermal_state: str | None = None  # Mac: nominal | fair | serious | critical
    cpu_speed_limit: int | None = None  # Mac: pmset's CPU_Speed_Limit, percent
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read(backend: str, index: int = 0) -> DeviceReading | None:
    """The device of `backend` now; None where there is nothing to read (cpu off a Mac)."""
    from llorch_harness.pool.devicehealth import apple, probe

    if backend == "cuda":
        (h,) = probe.collect("cuda", [index])
        r = DeviceReading("cuda", index, h.source, throttle_reasons=list(h.throttle_reasons),
                          processes=[{"pid": p.pid, "used_mib": p.used_mib, "name": p.name}
                                     for p in h.processes], errors=list(h.errors))
        _clocks(r)
        return r
    if backend == "metal" or sys.platform == "darwin":
        h = apple.collect(index)
        return DeviceReading(backend, index, h.source, thermal_state=h.thermal_state,
                             cpu_speed_limit=h.cpu_speed_limit, errors=list(h.errors))
    return None


def _clocks(r: DeviceReading) -> None:
    """SM clock, its maximum and utilization: NVML, else nvidia-smi."""
    from llorch_harness.pool.devicehealth import nvml, smi

    with nvml.session() as nv:
        if nv is not None:
            try:
                h = nv.nvmlDeviceGetHandleByIndex(r.index)
                r.sm_clock_mhz = float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
                r.sm_clock_max_mhz = float(nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM))
                r.utilization_pct = float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
            except Exception as exc:  # NVMLError_*: noted, the reading stays partial
                r.errors.append(f"NVML clocks: {exc}")
            return
    try:
        rows = smi.query(("index", "clocks.sm", "clocks.max.sm", "utilization.gpu"))
    except smi.SmiError as exc:
        r.errors.append(f"clocks: {exc}")
        return
    for row in rows:
        if _float(row.get("index")) == r.index:
            r.sm_clock_mhz = _float(row.get("clocks.sm"))
            r.sm_clock_max_mhz = _float(row.get("clocks.max.sm"))
            r.utilization_pct = _float(row.get("utilization.gpu"))


def _float(raw: Any) -> float | None:
    with contextlib.suppress(TypeError, ValueError):
        return float(str(raw).strip())
    return None


def busy_reasons(edges: list[DeviceReading], own_pids: set[int], gpu_share: float) -> list[str]:
    """Why the device was not quiet: throttled at an edge, or other processes on it while
    it was more than `gpu_share` busy at an edge (when our workers were not running)."""
    reasons: list[str] = []
    for r in edges:
        hot = [t for t in r.throttle_reasons if t in THROTTLING]
        if hot:
            clock = (f" (SM clock {r.sm_clock_mhz:g} of {r.sm_clock_max_mhz:g} MHz)"
                     if r.sm_clock_mhz and r.sm_clock_max_mhz else "")
            reasons.append(f"GPU {r.index} throttled: {', '.join(hot)}{clock}")
        others = [p for p in r.processes if p.get("pid") not in own_pids]
        # the utilization is the whole GPU's over the driver's last period, which may still
        # hold our last worker's work: it counts only with another process on the GPU
        if others and r.utilization_pct is not None and r.utilization_pct > 100.0 * gpu_share:
            who = "; ".join(f"pid {p.get('pid')} {p.get('name') or ''}".rstrip()
                            for p in others[:3])
            reasons.append(f"GPU {r.index} {r.utilization_pct:g}% busy with other processes "
                           f"on it ({who})")
        if r.thermal_state in MAC_THROTTLED:
            limit = (f", CPU speed limit {r.cpu_speed_limit}%"
                     if r.cpu_speed_limit is not None else "")
            reasons.append(f"thermal state {r.thermal_state}{limit}")
    return list(dict.fromkeys(reasons))


def describe(edges: list[DeviceReading]) -> str:
    """One short phrase for people (empty when there is no device reading)."""
    parts = []
    for r in edges[-1:]:
        if r.sm_clock_mhz is not None:
            top = f" of {r.sm_clock_max_mhz:g}" if r.sm_clock_max_mhz else ""
            parts.append(f"GPU {r.index} SM clock {r.sm_clock_mhz:g}{top} MHz")
        if r.utilization_pct is not None:
            parts.append(f"GPU use without our workers {r.utilization_pct:g}%")
        if r.thermal_state is not None:
            parts.append(f"thermal state {r.thermal_state}")
    return ", ".join(parts)
