"""A gate session's devices: health before the first test and after the last, and the change.

Why per session: a card that degrades during a run (ECC errors appear, it throttles,
another process fills it) explains failures that would otherwise be blamed on the worker.
The readings go to the report's environment (one line per device and moment) and to the
gate JSON (`device_health`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from llorch_harness.pool.devicehealth.model import DeviceHealth, diff, judge
from llorch_harness.pool.devicehealth.probe import collect

GPU_BACKENDS = ("cuda", "metal")


def summary(h: DeviceHealth) -> str:
    """One line for the environment table."""
    if h.source == "none":
        return f"unreadable: {'; '.join(h.errors)}"
    parts = [h.name or h.chip or "?"]
    if h.uuid:
        parts.append(h.uuid)
    if h.backend == "cuda":
        parts.append(f"driver {h.driver_version or '?'}, CUDA {h.cuda_version or '?'}")
    elif h.macos_version:
        parts.append(f"macOS {h.macos_version}")
    if h.memory_total_mib:
        used = f"{h.memory_used_mib:g} of " if h.memory_used_mib is not None else ""
        parts.append(f"{used}{h.memory_total_mib:g} MiB used")
    if h.temperature_c is not None:
        parts.append(f"{h.temperature_c:g} C")
    if h.thermal_state:
        parts.append(f"thermal {h.thermal_state}, memory pressure {h.memory_pressure or '?'}")
    reasons = judge(h)
    parts.append("UNHEALTHY: " + "; ".join(reasons) if reasons else "healthy")
    return ", ".join(parts)


@dataclass
class SessionHealth:
    """Readings of the devices a run uses (index 0 of each usable GPU backend)."""

    backends: list[str]
    before: dict[str, DeviceHealth] = field(default_factory=dict)
    after: dict[str, DeviceHealth] = field(default_factory=dict)

    @classmethod
    def start(cls, backends: Iterable[str]) -> SessionHealth:
        s = cls([b for b in backends if b in GPU_BACKENDS])
        s.before = s._read()
        return s

    def _read(self) -> dict[str, DeviceHealth]:
        return {f"{h.backend}:{h.index}": h for b in self.backends for h in collect(b, [0])}

    def finish(self) -> None:
        self.after = self._read()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, before in self.before.items():
            after = self.after.get(key)
            out[key] = {"before": before.to_json(), "unhealthy_before": judge(before),
                        "after": after.to_json() if after else None,
                        "unhealthy_after": judge(after) if after else None,
                        "changed": diff(before, after) if after else None}
        return out

    def metadata_rows(self, prefix: str) -> dict[str, str]:
        rows = {f"{prefix}device {k} before": summary(h) for k, h in self.before.items()}
        for key, after in self.after.items():
            before = self.before.get(key)
            changed = diff(before, after) if before else {}
            what = "; ".join(f"{name} {c['before']} -> {c['after']}"
                             for name, c in changed.items()) or "nothing changed"
            rows[f"{prefix}device {key} after"] = f"{summary(after)} ({what})"
        return rows
