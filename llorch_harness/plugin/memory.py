"""Memory of every worker life the gate's factory spawns: the session's live workers and the
ones tests spawn through `worker_factory.spawn` (issue 15 item 3).

Why a ledger beside the factory: the inference items all run on the shared live worker, so
its memory at ready and at its peak over the whole run is what a user would run out of;
"No memory growth per request" measures only its own worker. Each life gets a
`pool.memwatch.MemoryWatch`: the device's used memory before the spawn, a reading at ready,
a background peak sampler until the stop, the device's memory after the stop, and
`/health`'s `vram_bytes`. Why files: xdist workers spawn their own workers, and only the
controller writes the gate JSON and the report, so each finished life is one JSON file in
a directory the controller made and handed to its workers (`pytest_configure_node`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from llorch_harness.fsutil import atomic_write_text
from llorch_harness.pool.memwatch import LIFE_INTERVAL_GPU_S, LIFE_INTERVAL_S, MIB, MemoryWatch
from llorch_harness.safetext import Markup, html, join

if TYPE_CHECKING:
    from llorch_harness.pool.workers import WorkerHandle

WORKERINPUT_KEY = "llorch_memory_dir"
AFTER_STOP_SETTLE_S = 3.0


def peak_interval(backend: str) -> float:
    """A GPU reading may run nvidia-smi; an RSS reading is a few /proc reads."""
    return LIFE_INTERVAL_GPU_S if backend == "cuda" else LIFE_INTERVAL_S


class MemoryLedger:
    """The worker lives of one process; finished ones are written to `directory`."""

    def __init__(self, directory: Path | None = None, *, owned: bool = False) -> None:
        self.directory = directory
        self.owned = owned  # made by this process: the controller reads and removes it
        self.records: list[dict[str, Any]] = []
        self._watches: dict[int, tuple[WorkerHandle, MemoryWatch, float, int | None]] = {}
        self._lock = threading.Lock()

    def before(self, backend: str, gpu: int) -> float | None:
        """The device's used memory before a spawn (None off cuda or without a driver)."""
        try:
            return MemoryWatch.device_used_mib(backend, gpu)
        except Exception:  # a reading must never stop a spawn
            return None

    def start(self, handle: WorkerHandle, device_before_mib: float | None) -> MemoryWatch:
        """The ready reading, then the peak sampler for the rest of the life."""
        watch = MemoryWatch(handle.backend, handle.pid, index=handle.gpu,
                            vram_reported=handle.vram_bytes,
                            device_before_mib=device_before_mib)
        watch.sample("ready")
        watch.start_peak(peak_interval(handle.backend))
        health = _health_vram(handle.uri)
        with self._lock:
            self._watches[id(handle)] = (handle, watch, time.time(), health)
        return watch

    def finish(self, handle: WorkerHandle) -> dict[str, Any] | None:
        """After the handle's stop: end the sampler, read the device, keep the record.
        Idempotent (None the second time); never raises into the stop."""
        with self._lock:
            entry = self._watches.pop(id(handle), None)
        if entry is None:
            return None
        _, watch, started, health = entry
        watch.stop_peak()
        error = None
        try:
            watch.after_stop(settle_s=AFTER_STOP_SETTLE_S)
        except Exception as exc:  # noted in the record, not raised into the teardown
            error = f"device memory after the stop unread: {exc}"
        record = {"worker_id": handle.worker_id, "xdist_worker":
                  os.environ.get("PYTEST_XDIST_WORKER") or "main", **watch.to_json(),
                  "health_vram_bytes": health,
                  "started_at": started, "stopped_at": time.time(), "error": error}
        self.records.append(record)
        self._write(record)
        return record

    def finish_all(self) -> None:
        with self._lock:
            handles = [entry[0] for entry in self._watches.values()]
        for handle in handles:
            self.finish(handle)

    def _write(self, record: dict[str, Any]) -> None:
        if self.directory is None:
            return
        name = f"{os.getpid()}-{len(self.records)}-{record['worker_id']}.json"
        with contextlib.suppress(OSError):  # the run's results matter more than one record
            atomic_write_text(self.directory / name, json.dumps(record) + "\n")


def _health_vram(uri: str) -> int | None:
    """What `/health` answers for `vram_bytes` at ready (None: no answer). The contract: the
    safetensors size on cuda builds, 0 on cpu and metal, unlike the ready callback's."""
    from llorch_harness.checks.workerclient import health

    try:
        answer = health(uri, timeout=2.0)
    except Exception:  # a reading must never stop a spawn
        return None
    value = answer.get("vram_bytes") if isinstance(answer, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_KEY = pytest.StashKey[MemoryLedger]()


def ledger(config: pytest.Config) -> MemoryLedger:
    """This process's ledger: on an xdist worker in the controller's directory, else in a
    fresh one this process owns."""
    found = config.stash.get(_KEY, None)
    if found is None:
        given = getattr(config, "workerinput", {}).get(WORKERINPUT_KEY)
        if given:
            found = MemoryLedger(Path(given))
        else:
            found = MemoryLedger(Path(tempfile.mkdtemp(prefix="llorch-memory-")), owned=True)
        config.stash[_KEY] = found
    return found


def collect(config: pytest.Config) -> list[dict[str, Any]]:
    """Every finished life of the run (controller), oldest first; the directory goes."""
    found = config.stash.get(_KEY, None)
    if found is None or found.directory is None or not found.owned:
        return []
    found.finish_all()
    records = []
    for path in sorted(found.directory.glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            records.append(json.loads(path.read_text(encoding="utf-8")))
    shutil.rmtree(found.directory, ignore_errors=True)
    found.directory = None
    return sorted(records, key=lambda r: (r.get("started_at") or 0, r.get("worker_id") or ""))


# --------------------------------------------------------------------------- report

# Each column says where its number comes from (issue 28 item 2).
_COLUMNS = ("worker", "pid", "at ready (harness: process RSS, GPU from the device tool)",
            "peak (harness: sampled until the stop)",
            "device used before spawn (device tool)", "device used after stop (device tool)",
            "memory returned (device tool: after ≤ before + tolerance)",
            "ready callback vram_bytes (worker: safetensors size)",
            "/health vram_bytes (worker's answer at ready)")


def _mib(value: float | int | None, unit: float = MIB) -> str:
    return "n/a" if value is None else f"{value / unit:.1f} MiB"


def _reported(value: Any, missing: str) -> str:
    """A worker's own vram_bytes figure as it said it (bytes), or why there is none."""
    if not isinstance(value, int) or isinstance(value, bool):
        return missing
    return f"{value} bytes" + (f" ({value / MIB:.1f} MiB)" if value else "")


def _reading(sample: dict[str, Any] | None) -> str:
    if not sample:
        return "n/a"
    text = f"RSS {_mib(sample.get('rss_bytes'))}"
    if sample.get("gpu_bytes") is not None:
        text += f", GPU {_mib(sample['gpu_bytes'])}"
    return text


def _row(r: dict[str, Any]) -> list[str]:
    returned = r.get("device_memory_returned")
    return [str(r.get("worker_id") or "unknown"), str(r.get("pid") or "unknown"),
            _reading(r.get("ready")),
            _reading(r.get("peak")), _mib(r.get("device_used_mib_before_spawn"), 1.0),
            _mib(r.get("device_used_mib_after_stop"), 1.0),
            "n/a" if returned is None else ("yes" if returned else "NO"),
            _reported(r.get("vram_bytes_reported"), "no callback"),
            _reported(r.get("health_vram_bytes"), "no answer")]


def report_html(records: list[dict[str, Any]]) -> str:
    """One table per backend: a row per worker life (values escaped by safetext)."""
    if not records:
        return ""
    parts = [Markup('<div id="llorch-memory">'), Markup("<h2>Memory per worker life</h2>")]
    for backend in sorted({str(r.get("backend")) for r in records}):
        parts.append(html("<h3>{0}</h3>", backend))
        parts.append(html('<table class="llorch-memory" data-backend="{0}" border="1" '
                          'cellpadding="4"><tr>{1}</tr>', backend,
                          join("", (html("<th>{}</th>", c) for c in _COLUMNS))))
        for r in records:
            if str(r.get("backend")) == backend:
                cells = join("", (html("<td>{}</td>", c) for c in _row(r)))
                parts.append(html('<tr class="llorch-memory-life">{}</tr>', cells))
        parts.append(Markup("</table>"))
    parts.append(Markup("</div>"))
    return str(join("\n", parts))
