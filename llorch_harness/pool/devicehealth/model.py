"""What a device's health is, when it is bad enough to blame the device, and what changed.

Why a judgement of its own: a worker that fails on a card with uncorrected ECC errors, pages
waiting for retirement, another process holding most of its memory or thermal throttling
is not the worker's defect. The gate reports such a device in an item of its own ("Device
healthy"), so a bad card is never blamed on the worker, nor a bad worker on the card.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

# Another process holding more than this share of a device's memory makes it unhealthy.
OTHERS_MEMORY_FRACTION = 0.5
# NVML clock event reasons (nvml.h, nvmlClocksEventReason*): bit -> name.
CLOCK_REASONS: dict[int, str] = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap",
    0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# The reasons that mean the card protects itself from heat (hw_slowdown: heat or power brake).
THERMAL_REASONS = ("sw_thermal_slowdown", "hw_thermal_slowdown", "hw_slowdown")
APPLE_BAD_THERMAL = ("serious", "critical")


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def clock_reasons(mask: int) -> list[str]:
    """The names of the set bits of a clocks-event-reasons mask (unknown bits as hex)."""
    names = [name for bit, name in CLOCK_REASONS.items() if mask & bit]
    rest = mask & ~sum(CLOCK_REASONS)
    return names + ([hex(rest)] if rest else [])


@dataclass
class GpuProcess:
    """One process with memory on a GPU (NVML / `--query-compute-apps`)."""

    pid: int
    used_mib: float | None
    name: str | None = None


@dataclass
class DeviceHealth:
    """One device at one moment. None: the driver does not say (or could not be asked)."""

    backend: str  # cuda | metal
    index: int
    source: str  # nvml | nvidia-smi | apple | none
    taken_at: str = field(default_factory=now_text)
    name: str | None = None
    uuid: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    memory_total_mib: float | None = None
    memory_used_mib: float | None = None
    processes: list[GpuProcess] = field(default_factory=list)
    persistence_mode: bool | None = None
    ecc_uncorrected: int | None = None  # volatile: since the driver was loaded
    retired_pages_pending: bool | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    temperature_c: float | None = None
    throttle_reasons: list[str] = field(default_factory=list)
    chip: str | None = None  # Apple Silicon from here on
    unified_memory_bytes: int | None = None
    macos_version: str | None = None
    thermal_state: str | None = None  # nominal | fair | serious | critical
    cpu_speed_limit: int | None = None  # pmset's CPU_Speed_Limit, percent
    memory_pressure: str | None = None  # normal | warn | critical
    memory_free_percent: int | None = None
    errors: list[str] = field(default_factory=list)  # what could not be read, and why

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DeviceHealth:
        data = dict(raw)
        data["processes"] = [GpuProcess(**p) for p in raw.get("processes", [])]
        return cls(**data)

    def used_by(self, pids: Iterable[int]) -> float:
        """MiB held by the given processes (those the driver lists)."""
        wanted = set(pids)
        return sum(p.used_mib or 0.0 for p in self.processes if p.pid in wanted)

    def others_mib(self, own_pids: Iterable[int] = ()) -> float | None:
        """MiB held by processes that are not ours: the listed ones, or (when the driver
        lists none, e.g. from inside a container) the device's used memory minus ours."""
        own = set(own_pids)
        listed = sum(p.used_mib or 0.0 for p in self.processes if p.pid not in own)
        if self.processes or self.memory_used_mib is None:
            return listed if self.processes else None
        return max(0.0, self.memory_used_mib - self.used_by(own))


def judge(h: DeviceHealth, own_pids: Iterable[int] = ()) -> list[str]:
    """Why the device is unhealthy (empty: nothing known against it)."""
    reasons: list[str] = []
    if h.ecc_uncorrected:
        reasons.append(f"{h.ecc_uncorrected} uncorrected ECC error(s) since the driver loaded")
    if h.retired_pages_pending:
        reasons.append("page retirement pending (reset the GPU or reboot)")
    if h.remapped_rows_pending:
        reasons.append("row remapping pending (reset the GPU or reboot)")
    if h.remapped_rows_failure:
        reasons.append("row remapping failed (the card needs service)")
    reasons += _memory_reasons(h, own_pids)
    hot = [r for r in h.throttle_reasons if r in THERMAL_REASONS]
    if hot:
        temp = f" at {h.temperature_c:g} C" if h.temperature_c is not None else ""
        reasons.append(f"thermal throttling{temp} ({', '.join(hot)})")
    if h.thermal_state in APPLE_BAD_THERMAL:
        limit = f", CPU speed limit {h.cpu_speed_limit}%" if h.cpu_speed_limit is not None else ""
        reasons.append(f"thermal state {h.thermal_state}{limit}")
    if h.memory_pressure == "critical":
        reasons.append("memory pressure critical")
    return reasons


def _memory_reasons(h: DeviceHealth, own_pids: Iterable[int]) -> list[str]:
    own = set(own_pids)
    others = h.others_mib(own)
    if others is None or not h.memory_total_mib:
        return []
    if others <= OTHERS_MEMORY_FRACTION * h.memory_total_mib:
        return []
    who = [f"pid {p.pid}" + (f" {p.name}" if p.name else "") + f" {p.used_mib or 0:g} MiB"
           for p in h.processes if p.pid not in own]
    listed = f" ({'; '.join(who)})" if who else ""
    return [f"other processes hold {others:g} of {h.memory_total_mib:g} MiB{listed}"]


# Fields compared between before and after (the ones that say something about the session).
DIFF_FIELDS = (
    "memory_used_mib", "persistence_mode", "ecc_uncorrected", "retired_pages_pending",
    "remapped_rows_pending", "remapped_rows_failure", "temperature_c", "throttle_reasons",
    "driver_version", "thermal_state", "cpu_speed_limit", "memory_pressure",
    "memory_free_percent",
)


def diff(before: DeviceHealth, after: DeviceHealth) -> dict[str, dict[str, Any]]:
    """What changed between two readings of one device: field -> {before, after}."""
    out: dict[str, dict[str, Any]] = {}
    for name in DIFF_FIELDS:
        a, b = getattr(before, name), getattr(after, name)
        if a != b:
            out[name] = {"before": a, "after": b}
    pids_a = {p.pid for p in before.processes}
    pids_b = {p.pid for p in after.processes}
    if pids_a != pids_b:
        out["processes"] = {"before": sorted(pids_a), "after": sorted(pids_b)}
    return out
