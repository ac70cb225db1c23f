"""CP3 gate, Worker Management: list, stop, accurate status and cleanup, through the CLI."""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest
from gatehelpers import expect, llorch_pool, pool_level

from llorch_harness.plugin.fixtures import note_log, wait_gone
from llorch_harness.pool import leftovers, procs, workers
from llorch_harness.pool.backends import BACKEND_NAMES
from llorch_harness.pool.memwatch import MemoryWatch

SECTION = "Worker Management"


def _spawn(worker_factory, lab, tag):
    backend = lab.primary_backend(BACKEND_NAMES)
    return worker_factory.spawn(backend, worker_id=worker_factory.default_id(backend, 0, tag))


def _listed(pool_paths) -> dict:
    res = llorch_pool(pool_paths, "worker", "list", "--json")
    expect(res.returncode == 0, "`llorch-pool worker list --json` exit 0", res.describe(),
           str(pool_paths.workers_dir))
    data = res.json()
    return {w["worker_id"]: w for w in data["workers"]}


@pytest.mark.gate(SECTION, "`llorch-pool worker list` shows workers")
@pool_level
def test_worker_list_shows_workers(lab, pool_paths, worker_factory, gate_record):
    handle = _spawn(worker_factory, lab, "list")
    note_log(gate_record, handle.log_path)
    try:
        rows = _listed(pool_paths)
        row = rows.get(handle.worker_id)
        expect(row is not None, f"{handle.worker_id} listed", ", ".join(rows) or "nothing",
               str(pool_paths.workers_dir))
        expect(row["status"] == "running" and row["pid"] == handle.pid
               and row["port"] == handle.port,
               f"running, pid {handle.pid}, port {handle.port}", json.dumps(row)[:400],
               str(handle.log_path))
        table = llorch_pool(pool_paths, "worker", "list")
        expect(table.returncode == 0 and handle.worker_id in table.stdout,
               "the table names the worker", table.describe(), str(pool_paths.workers_dir))
        gate_record["list row"] = row
    finally:
        worker_factory.stop(handle)


@pytest.mark.gate(SECTION, "`llorch-pool worker stop` stops workers")
@pool_level
def test_worker_stop_stops(lab, pool_paths, worker_factory, gate_record):
    handle = _spawn(worker_factory, lab, "stop")
    note_log(gate_record, handle.log_path)
    try:
        res = llorch_pool(pool_paths, "worker", "stop", handle.worker_id, "--json")
        expect(res.returncode == 0, "exit 0", res.describe(), str(handle.log_path))
        step = res.json()[0]
        gate_record["stop"] = step
        expect(step["step"] in ("sigint", "sigterm"), "graceful stop (SIGINT or SIGTERM)",
               step["step"], str(handle.log_path))
        expect(wait_gone(handle.pid), f"pid {handle.pid} gone", "still running",
               str(handle.log_path))
        expect(step["port_free"] and procs.port_is_free(handle.port), f"port {handle.port} free",
               "in use", str(handle.log_path))
    finally:
        worker_factory.stop(handle)


@pytest.mark.gate(SECTION, "Process status is accurate")
@pool_level
def test_process_status_accurate(lab, pool_paths, worker_factory, gate_record, tmp_path):
    """A killed worker shows dead; a record whose pid now names another process is not
    shown running, and stopping it signals nothing."""
    handle = _spawn(worker_factory, lab, "status")
    note_log(gate_record, handle.log_path)
    try:
        expect(_listed(pool_paths)[handle.worker_id]["status"] == "running", "running", "not",
               str(handle.log_path))
        os.kill(handle.pid, signal.SIGKILL)
        expect(wait_gone(handle.pid), "killed worker gone", "still running", str(handle.log_path))
        row = _listed(pool_paths)[handle.worker_id]
        expect(row["status"] in ("dead", "stale"), "dead after SIGKILL", row["status"],
               str(pool_paths.workers_dir))
    finally:
        worker_factory.stop(handle)
    # a stale record: the pid belongs to an unrelated process (this one's parent is safe to name)
    victim = psutil.Process(os.getppid())
    stale_id = f"{handle.worker_id}-stale"
    workers.write_record(workers.record_path(pool_paths, stale_id), {
        "worker_id": stale_id, "pid": victim.pid, "backend": handle.backend,
        "model_id": handle.model_id, "port": handle.port, "started_at": "2000-01-01T00:00:00Z",
    })
    row = _listed(pool_paths)[stale_id]
    expect(row["status"] != "running", "a reused pid is not shown running", row["status"],
           str(workers.record_path(pool_paths, stale_id)))
    llorch_pool(pool_paths, "worker", "stop", stale_id)
    expect(victim.is_running(), f"unrelated pid {victim.pid} untouched", "signalled",
           str(pool_paths.workers_dir))
    gate_record["stale row"] = row


@pytest.mark.gate(SECTION, "Cleanup works correctly")
@pool_level
def test_cleanup(lab, pool_paths, worker_factory, gate_record):
    """A worker leaves nothing behind: after its stop (SIGINT, as the contract stops it) no
    descendant runs, its port is free and its GPU memory is back, within a few seconds;
    whatever is left is named, then cleaned up. `worker stop` removes the record; an orphan
    is reaped."""
    backend = lab.primary_backend(BACKEND_NAMES)
    before_mib = MemoryWatch.device_used_mib(backend, 0)
    handle = _spawn(worker_factory, lab, "cleanup")
    note_log(gate_record, handle.log_path)
    pool = procs.pool_key(pool_paths.root)
    refs = leftovers.snapshot(handle.pid, [m.proc for m in procs.marked_processes(
        pool, handle.worker_id)])
    try:
        root = next(r for r in refs if r.pid == handle.pid)
        leftovers.sigint_and_wait(root, workers.STOP_GRACE_S)
        found = leftovers.find(refs, port=handle.port, late=lambda: [
            m.proc for m in procs.marked_processes(pool, handle.worker_id)],
            gpu_not_returned=leftovers.device_memory_check(backend, 0, before_mib))
        gate_record["left behind"] = found.to_json()
        survivors = leftovers.clean_up(found)
        expect(not found, "nothing left behind within a few seconds of SIGINT (descendants, "
               "port, GPU memory)", found.describe() + (
                   f"; survived cleanup: {', '.join(r.describe() for r in survivors)}"
                   if survivors else " (cleaned up by the harness)"), str(handle.log_path))
        res = llorch_pool(pool_paths, "worker", "stop", handle.worker_id)
        expect(res.returncode == 0, "stop exit 0", res.describe(), str(handle.log_path))
        left = procs.marked_processes(pool, handle.worker_id)
        expect(not left, "no process left with the worker's marker",
               ", ".join(str(m.proc.pid) for m in left), str(handle.log_path))
        expect(not handle.record_path.exists(), "record removed", str(handle.record_path),
               str(pool_paths.workers_dir))
        expect(procs.port_is_free(handle.port), f"port {handle.port} free", "in use",
               str(handle.log_path))
    finally:
        worker_factory.stop(handle)
    orphan = _spawn(worker_factory, lab, "orphan")
    note_log(gate_record, orphan.log_path)
    try:
        orphan.record_path.unlink()
        reaped = llorch_pool(pool_paths, "worker", "reap")
        expect(reaped.returncode == 0 and wait_gone(orphan.pid),
               "`llorch-pool worker reap` stops a worker whose record is gone",
               reaped.describe(), str(orphan.log_path))
    finally:
        worker_factory.stop(orphan)
