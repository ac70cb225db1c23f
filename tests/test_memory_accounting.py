"""Memory per worker life for every worker the gate's factory spawns (issue 15 item 3): a real
worker's life through the ledger, and a real embedded gate run whose --gate-json and HTML
report carry the records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llorch_harness.plugin import memory
from llorch_harness.pool import workers
from llorch_harness.pool.memwatch import MIB
from llorch_harness.pool.paths import PoolPaths
from tests.test_workers import FAKEWORKER, pool  # noqa: F401  (the pool fixture)

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 900
HOG_MIB = 64

# A child of the worker that, once told to, holds 64 MiB until told to let go, then exits:
# memory that exists only between the ready reading and the stop.
HOG = (
    "import os, sys, time\n"
    "d = sys.argv[1]\n"
    "while not os.path.exists(d + '/go'): time.sleep(0.05)\n"
    f"b = bytearray({HOG_MIB} << 20); b[::4096] = b'x' * len(b[::4096])\n"
    "open(d + '/held', 'w').close()\n"
    "while not os.path.exists(d + '/release'): time.sleep(0.05)\n"
)


def wait_for(what: str, cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def hog_bin(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    (tmp_path / "hog.py").write_text(HOG)
    exe = d / "llorch-cpu-candled"
    exe.write_text(f'#!/bin/sh\n"{sys.executable}" "{tmp_path / "hog.py"}" "{tmp_path}" &\n'
                   f'exec "{sys.executable}" "{FAKEWORKER}" "$@"\n')
    exe.chmod(0o755)
    return d


def test_a_worker_life_records_ready_peak_and_stop(pool: PoolPaths, hog_bin: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    ledger = memory.MemoryLedger(tmp_path / "ledger")
    ledger.directory.mkdir()  # type: ignore[union-attr]
    before = ledger.before("cpu", 0)
    handle = workers.spawn_worker(pool, "cpu", "fake", port=0, bin_dir=hog_bin,
                                  ready_timeout=30.0, worker_id="mem-life")
    try:
        watch = ledger.start(handle, before)
        ready = watch.samples[0]
        assert ready.at == "ready" and ready.rss_bytes > 0 and handle.pid in ready.pids
        assert watch.sampling
        (tmp_path / "go").touch()
        wait_for("the hog's memory", (tmp_path / "held").exists)
        # nobody reads: the life's sampler alone must see the 64 MiB
        wait_for("the sampler to catch the peak", lambda: watch.peak_sample is not None
                 and watch.peak_sample.rss_bytes >= ready.rss_bytes + (HOG_MIB - 8) * MIB)
        (tmp_path / "release").touch()
    finally:
        handle.stop(grace=5.0)
    rec = ledger.finish(handle)
    assert rec is not None and not watch.sampling
    assert ledger.finish(handle) is None  # once per life
    assert rec["worker_id"] == "mem-life" and rec["backend"] == "cpu"
    assert rec["pid"] == handle.pid and rec["error"] is None
    assert rec["ready"]["rss_bytes"] == ready.rss_bytes
    assert rec["peak"]["rss_bytes"] >= ready.rss_bytes + (HOG_MIB - 8) * MIB
    # cpu: no device memory to compare; the worker's own /health figure is beside the rest
    assert rec["device_used_mib_before_spawn"] is None
    assert rec["device_memory_returned"] is None
    assert rec["vram_bytes_reported"] == handle.vram_bytes
    (written,) = (tmp_path / "ledger").glob("*.json")
    assert json.loads(written.read_text())["peak"] == rec["peak"]


def test_a_worker_stopped_behind_the_ledgers_back_ends_its_sampler(
        pool: PoolPaths, hog_bin: Path, tmp_path: Path) -> None:  # noqa: F811
    ledger = memory.MemoryLedger()
    handle = workers.spawn_worker(pool, "cpu", "fake", port=0, bin_dir=hog_bin,
                                  ready_timeout=30.0, worker_id="mem-back")
    try:
        watch = ledger.start(handle, None)
    finally:
        handle.stop(grace=5.0)
    wait_for("the sampler to notice the worker is gone", lambda: not watch.sampling)
    ledger.finish_all()  # the factory's teardown
    (rec,) = ledger.records
    assert rec["worker_id"] == "mem-back" and rec["ready"]["rss_bytes"] > 0


def test_the_report_has_one_table_per_backend() -> None:
    def life(wid: str, backend: str, returned: bool | None) -> dict:
        return {"worker_id": wid, "backend": backend, "pid": 7,
                "ready": {"rss_bytes": 100 * MIB, "gpu_bytes": None},
                "peak": {"rss_bytes": 150 * MIB, "gpu_bytes": 900 * MIB if returned else None},
                "device_used_mib_before_spawn": 10.0 if returned is not None else None,
                "device_used_mib_after_stop": 500.0 if returned is False else None,
                "device_memory_returned": returned, "vram_bytes_reported": 123}

    page = memory.report_html([life("gate-cpu-0-main", "cpu", None),
                               life("gate-cuda-0-main", "cuda", True),
                               life("spawn-cuda-0-main", "cuda", False)])
    assert page.count('<table class="llorch-memory"') == 2
    cuda = page.split('data-backend="cuda"')[1]
    assert "gate-cuda-0-main" in cuda and "spawn-cuda-0-main" in cuda
    assert "gate-cpu-0-main" not in cuda
    assert "GPU 900.0 MiB" in cuda and ">NO<" in cuda and "RSS 150.0 MiB" in page
    assert memory.report_html([]) == ""


@pytest.mark.slow
def test_a_gate_run_accounts_every_worker_life(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "PYTEST_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # embedded: no llorch binaries
    env["LLORCH_LEASE_DIR"] = str(tmp_path / "leases")
    (tmp_path / "pool").mkdir()
    argv = [sys.executable, "-m", "pytest", str(REPO / "tests_hw"), "-m", "cpu",
            "-k", "qwen_works or test_worker_list_shows_workers", "-p", "no:cacheprovider",
            "--pool-root", str(tmp_path / "pool"), "--basetemp", str(tmp_path / "bt"), "-rA",
            "--reference", "off", "--gate-json", str(tmp_path / "g.json"),
            "--html", str(tmp_path / "r.html"), "--self-contained-html"]
    res = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=RUN_TIMEOUT_S, check=False)
    out = res.stdout[-6000:] + res.stderr[-3000:]
    assert res.returncode == 0, out
    lives = json.loads((tmp_path / "g.json").read_text())["memory"]
    by_id = {r["worker_id"]: r for r in lives}
    session = by_id["gate-cpu-0-main"]  # the live worker every inference item used
    assert session["backend"] == "cpu" and session["pid"] > 0
    assert session["ready"]["rss_bytes"] > 0 and session["peak"]["rss_bytes"] > 0
    assert session["peak"]["rss_bytes"] >= session["ready"]["rss_bytes"]
    spawned = by_id["list-cpu-0-main"]  # the test's own worker, stopped by the test
    assert spawned["ready"]["rss_bytes"] > 0 and spawned["pid"] != session["pid"]
    assert all(r["stopped_at"] >= r["started_at"] for r in lives)
    page = (tmp_path / "r.html").read_text()
    assert "Memory per worker life" in page and 'data-backend="cpu"' in page
    assert "gate-cpu-0-main" in page.split('id="llorch-memory"')[1]
