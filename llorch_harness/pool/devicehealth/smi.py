"""Device health from `nvidia-smi` when NVML cannot be loaded.

Why several queries: a field an older (or newer) driver does not know makes nvidia-smi
refuse the whole query ("is not a valid field to query", exit 2), so the fields every
driver knows are asked together and the others one group at a time; a refused group is
noted in `errors`, never fatal. Values "[N/A]" / "[Not Supported]" become None.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Sequence

from llorch_harness.pool.devicehealth.model import DeviceHealth, GpuProcess, clock_reasons

SMI = "nvidia-smi"
TIMEOUT_S = 15.0
BASE_FIELDS = ("index", "uuid", "name", "driver_version", "memory.total", "memory.used",
               "persistence_mode", "temperature.gpu")
# Optional groups: the first spelling a driver accepts wins (clocks_event_reasons since 535).
OPTIONAL_FIELDS: tuple[tuple[str, ...], ...] = (
    ("ecc.errors.uncorrected.volatile.total",),
    ("retired_pages.pending",),
    ("clocks_event_reasons.active", "clocks_throttle_reasons.active"),
)
_CUDA_RE = re.compile(r"CUDA Version\s*:\s*([0-9][0-9.]*)")


class SmiError(RuntimeError):
    """nvidia-smi is missing, failed, or hung; the text says which."""


def run_smi(args: Sequence[str]) -> str:
    try:
        res = subprocess.run([SMI, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                             check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise SmiError("nvidia-smi not found") from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise SmiError(f"nvidia-smi failed: {exc}") from exc
    if res.returncode != 0:
        text = (res.stderr or res.stdout).strip().splitlines()
        raise SmiError(f"nvidia-smi {' '.join(args[:1])} exit {res.returncode}: "
                       f"{text[0] if text else ''}")
    return res.stdout


def _value(raw: str) -> str | None:
    v = raw.strip()
    return None if not v or v.startswith("[") or v in ("N/A", "Unknown Error") else v


def _number(raw: str | None) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _flag(raw: str | None) -> bool | None:
    if raw is None:
        return None
    v = raw.strip().lower()
    if v in ("yes", "enabled", "1", "true", "active"):
        return True
    if v in ("no", "disabled", "0", "false", "not active"):
        return False
    return None


def query(fields: Sequence[str]) -> list[dict[str, str | None]]:
    """One row per GPU: field -> value (None for N/A)."""
    out = run_smi([f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
    rows = []
    for line in out.splitlines():
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) > len(fields):  # a name with commas: join the surplus into it
            extra = len(parts) - len(fields)
            i = fields.index("name") if "name" in fields else 0
            parts[i:i + extra + 1] = [",".join(parts[i:i + extra + 1])]
        rows.append({f: _value(p) for f, p in zip(fields, parts, strict=False)})
    return rows


def gpu_uuids() -> dict[int, str]:
    """Physical index -> UUID of every GPU nvidia-smi lists."""
    out: dict[int, str] = {}
    for row in query(("index", "uuid")):
        idx = _number(row.get("index"))
        if idx is not None and row.get("uuid"):
            out[int(idx)] = str(row["uuid"])
    return out


def compute_apps() -> list[tuple[str, GpuProcess]]:
    """(GPU UUID, process) for every compute process on any GPU."""
    fields = "pid,gpu_uuid,used_memory,process_name"
    out = run_smi([f"--query-compute-apps={fields}", "--format=csv,noheader,nounits"])
    apps = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",", 3)]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        name = _value(parts[3]) if len(parts) > 3 else None
        apps.append((parts[1], GpuProcess(int(parts[0]), _number(_value(parts[2])), name)))
    return apps


def _cuda_version() -> str | None:
    m = _CUDA_RE.search(run_smi([]))
    return m.group(1) if m else None


def _base(row: dict[str, str | None]) -> DeviceHealth:
    return DeviceHealth(
        backend="cuda", index=int(_number(row.get("index")) or 0), source="nvidia-smi",
        name=row.get("name"), uuid=row.get("uuid"), driver_version=row.get("driver_version"),
        memory_total_mib=_number(row.get("memory.total")),
        memory_used_mib=_number(row.get("memory.used")),
        persistence_mode=_flag(row.get("persistence_mode")),
        temperature_c=_number(row.get("temperature.gpu")),
    )


def _apply_optional(devices: dict[int, DeviceHealth], group: Sequence[str]) -> None:
    last = ""
    for name in group:
        try:
            rows = query(("index", name))
        except SmiError as exc:
            last = str(exc)
            continue
        for row in rows:
            h = devices.get(int(_number(row.get("index")) or 0))
            if h is not None:
                _set_optional(h, name, row.get(name))
        return
    for h in devices.values():
        h.errors.append(f"{group[0]}: {last}")


def _set_optional(h: DeviceHealth, name: str, raw: str | None) -> None:
    if name.startswith("ecc."):
        n = _number(raw)
        h.ecc_uncorrected = int(n) if n is not None else None
    elif name == "retired_pages.pending":
        h.retired_pages_pending = _flag(raw)
    elif raw is not None:
        try:
            h.throttle_reasons = clock_reasons(int(raw, 16))
        except ValueError:
            h.errors.append(f"{name}: cannot read {raw!r}")


def _apply_remaps(devices: dict[int, DeviceHealth]) -> None:
    fields = "gpu_uuid,remapped_rows.pending,remapped_rows.failure"
    try:
        out = run_smi([f"--query-remapped-rows={fields}", "--format=csv,noheader"])
    except SmiError as exc:
        for h in devices.values():
            h.errors.append(f"remapped rows: {exc}")
        return
    by_uuid = {h.uuid: h for h in devices.values()}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        dev = by_uuid.get(parts[0]) if len(parts) >= 3 else None
        if dev is not None:
            dev.remapped_rows_pending = _flag(_value(parts[1]))
            dev.remapped_rows_failure = _flag(_value(parts[2]))


def collect(indices: Iterable[int] | None = None) -> list[DeviceHealth]:
    """Health of the GPUs at the given physical indices (all when None)."""
    wanted = None if indices is None else set(indices)
    devices = {h.index: h for h in map(_base, query(BASE_FIELDS))
               if wanted is None or h.index in wanted}
    if not devices:
        return []
    for group in OPTIONAL_FIELDS:
        _apply_optional(devices, group)
    _apply_remaps(devices)
    try:
        cuda = _cuda_version()
    except SmiError as exc:
        cuda = None
        for h in devices.values():
            h.errors.append(f"cuda version: {exc}")
    try:
        apps = compute_apps()
    except SmiError as exc:
        apps = []
        for h in devices.values():
            h.errors.append(f"compute apps: {exc}")
    for h in devices.values():
        h.cuda_version = cuda
        h.processes = [p for uuid, p in apps if uuid == h.uuid]
    return [devices[i] for i in sorted(devices)]


def memory_used_mib(index: int) -> float | None:
    """Used memory of one GPU in MiB (None when nvidia-smi does not list it)."""
    for row in query(("index", "memory.used")):
        if _number(row.get("index")) == index:
            return _number(row.get("memory.used"))
    return None
