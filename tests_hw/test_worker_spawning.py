"""CP3 gate, Worker Spawning: `llorch-pool worker spawn` starts a detached, logged, recorded
worker. One worker is spawned through the CLI per module and stopped afterwards."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from gatehelpers import expect, llorch_pool, pool_level, spawn_args

from llorch_harness.checks.workerclient import health
from llorch_harness.plugin.fixtures import note_log, xdist_worker_name
from llorch_harness.pool import workers
from llorch_harness.pool.backends import BACKEND_NAMES

SECTION = "Worker Spawning"


@pytest.fixture(scope="module")
def cli_worker(lab, pool_paths, worker_factory) -> Iterator[dict[str, Any]]:
    """`llorch-pool worker spawn` on the first usable backend; stopped at module end."""
    backend = lab.primary_backend(BACKEND_NAMES)
    if backend is None:
        pytest.skip("no usable backend")
    wid = f"gate-cli-{backend}-{xdist_worker_name() or 'main'}"
    res = llorch_pool(pool_paths, *spawn_args(lab, backend, worker_factory.model_id, wid))
    try:
        yield {"result": res, "worker_id": wid, "backend": backend,
               "record": res.json() if res.returncode == 0 else None}
    finally:
        try:
            workers.stop_worker(pool_paths, wid, grace=10.0)
        except Exception:  # never spawned, or already stopped by a test
            pass


def _record(cli_worker: dict[str, Any]) -> dict[str, Any]:
    res = cli_worker["result"]
    expect(res.returncode == 0, "`llorch-pool worker spawn` exit status 0", res.describe(),
           "the worker log named in stderr")
    return cli_worker["record"]


@pytest.mark.gate(SECTION, "`llorch-pool worker spawn` works")
@pool_level
def test_worker_spawn_command(cli_worker, gate_record):
    rec = _record(cli_worker)
    gate_record.update({k: rec.get(k) for k in ("cmdline", "binary_path", "binary_sha256",
                                                "ready_seconds", "uri", "log_path")})
    note_log(gate_record, rec["log_path"])
    answer = health(rec["uri"], timeout=10.0)
    expect(answer is not None and answer.get("status") == "healthy",
           "GET /health: 200 healthy", repr(answer) if answer is not None
           else "no 200 JSON answer", rec["log_path"])


@pytest.mark.gate(SECTION, "Workers spawn as background processes")
@pool_level
def test_workers_are_background_processes(cli_worker, gate_record):
    """The CLI has exited; the worker lives on in its own session, detached from ours."""
    rec = _record(cli_worker)
    note_log(gate_record, rec["log_path"])
    pid = rec["pid"]
    expect(psutil.pid_exists(pid), f"worker pid {pid} alive after the CLI exited", "gone",
           rec["log_path"])
    proc = psutil.Process(pid)
    expect(os.getsid(pid) != os.getsid(0), "worker in its own session (setsid)",
           f"same session {os.getsid(0)} as pytest", rec["log_path"])
    expect(proc.ppid() != os.getpid(), "worker not a child of pytest", f"ppid {proc.ppid()}",
           rec["log_path"])
    gate_record["process"] = {"pid": pid, "sid": os.getsid(pid), "ppid": proc.ppid()}


@pytest.mark.gate(SECTION, "Logs are written to files")
@pool_level
def test_logs_written_to_files(cli_worker, pool_paths, gate_record):
    rec = _record(cli_worker)
    log = pool_paths.workers_dir / f"{cli_worker['worker_id']}.log"
    note_log(gate_record, log)
    expect(log.is_file() and log.stat().st_size > 0, f"non-empty log {log}",
           "missing or empty", str(pool_paths.workers_dir))
    objects = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            objects.append(obj)
    expect(any("level" in o for o in objects), "tracing JSON lines with a level",
           f"{len(objects)} JSON objects", str(log))
    shown = llorch_pool(pool_paths, "worker", "logs", cli_worker["worker_id"], "-n", "5")
    expect(shown.returncode == 0 and shown.stdout.strip(), "`llorch-pool worker logs` prints it",
           shown.describe(), str(log))
    assert rec["log_path"] == str(log)


@pytest.mark.gate(SECTION, "Worker info is saved")
@pool_level
def test_worker_info_saved(cli_worker, pool_paths, worker_factory, gate_record):
    rec = _record(cli_worker)
    path = pool_paths.workers_dir / f"{cli_worker['worker_id']}.json"
    expect(path.is_file(), f"record {path}", "missing", str(pool_paths.workers_dir))
    saved = json.loads(path.read_text(encoding="utf-8"))
    want = {"worker_id": cli_worker["worker_id"], "pid": rec["pid"],
            "backend": cli_worker["backend"], "model_id": worker_factory.model_id,
            "port": rec["port"]}
    for key, value in want.items():
        expect(saved.get(key) == value, f"{key} = {value!r}", repr(saved.get(key)), str(path))
    expect(isinstance(saved.get("started_at"), str) and workers.parse_time(saved["started_at"]),
           "started_at as RFC 3339", repr(saved.get("started_at")), str(path))
    gate_record["record"] = saved
