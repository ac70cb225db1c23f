"""Apple Silicon health from the tools every Mac has: sysctl, sw_vers, pmset, memory_pressure.

Why these and not an API: the harness runs as a plain Python process without Objective-C
bridges. macOS's thermal state (NSProcessInfo.thermalState) is not printed by any tool, so it
is derived from `pmset -g therm`: nominal (no warning, CPU speed limit 100), fair (limit 80 or
more, or warning level 1), serious (limit below 80, or level 2), critical (limit below 50, or
level 3 and up). Memory pressure is `kern.memorystatus_vm_pressure_level` (1 normal, 2 warn,
4 critical). A tool that is missing or fails leaves its fields None and a note in `errors`.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

from llorch_harness.pool.devicehealth.model import DeviceHealth

TIMEOUT_S = 10.0
_PRESSURE = {"1": "normal", "2": "warn", "4": "critical"}
_SPEED_RE = re.compile(r"CPU_Speed_Limit\s*=\s*(\d+)")
_LEVEL_RE = re.compile(r"thermal warning level\s*(?:set to|=|:)?\s*(\d+)", re.IGNORECASE)
_FREE_RE = re.compile(r"memory free percentage:\s*(\d+)%")


def _run(argv: Sequence[str], h: DeviceHealth) -> str | None:
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT_S,
                             check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        h.errors.append(f"{argv[0]}: {exc}")
        return None
    if res.returncode != 0:
        h.errors.append(f"{' '.join(argv)}: exit {res.returncode}")
        return None
    return res.stdout.strip()


def thermal_state(speed_limit: int | None, level: int | None) -> str:
    """pmset's figures as one of macOS's four thermal states (see the module docstring)."""
    limit = 100 if speed_limit is None else speed_limit
    lvl = level or 0
    if limit < 50 or lvl >= 3:
        return "critical"
    if limit < 80 or lvl == 2:
        return "serious"
    if limit < 100 or lvl == 1:
        return "fair"
    return "nominal"


def _thermal(h: DeviceHealth) -> None:
    out = _run(["pmset", "-g", "therm"], h)
    if out is None:
        return
    speed = _SPEED_RE.search(out)
    level = _LEVEL_RE.search(out)
    h.cpu_speed_limit = int(speed.group(1)) if speed else None
    h.thermal_state = thermal_state(h.cpu_speed_limit, int(level.group(1)) if level else None)


def _memory(h: DeviceHealth) -> None:
    size = _run(["sysctl", "-n", "hw.memsize"], h)
    if size and size.isdigit():
        h.unified_memory_bytes = int(size)
    level = _run(["sysctl", "-n", "kern.memorystatus_vm_pressure_level"], h)
    if level is not None:
        h.memory_pressure = _PRESSURE.get(level, f"level {level}")
    free = _run(["memory_pressure", "-Q"], h)
    m = _FREE_RE.search(free or "")
    h.memory_free_percent = int(m.group(1)) if m else None


def collect(index: int = 0) -> DeviceHealth:
    """The Mac's one GPU (Metal device `index`): chip, unified memory, macOS, thermal state,
    memory pressure."""
    h = DeviceHealth(backend="metal", index=index, source="apple")
    h.chip = _run(["sysctl", "-n", "machdep.cpu.brand_string"], h) or None
    h.name = h.chip
    h.macos_version = _run(["sw_vers", "-productVersion"], h) or None
    h.driver_version = f"macOS {h.macos_version}" if h.macos_version else None
    _memory(h)
    if h.unified_memory_bytes is not None:
        h.memory_total_mib = h.unified_memory_bytes / (1024 * 1024)
    _thermal(h)
    return h
