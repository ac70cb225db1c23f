"""Item 1: no worker outlives its pytest session, however the session ends.

A small gate-like test file (written to tmp) spawns a reference worker through the
plugin's `worker_factory` fixture, reports the worker's pid and port in a file, then
either fails half-way or sleeps until the parent interrupts it: SIGINT to pytest,
SIGKILL to pytest, or SIGKILL to the xdist worker running it. After each end, 0
processes carrying the spawn marker of that pool may remain and the worker's port must
be free. For SIGKILL a second worker is spawned without the parent-death signal (as on
systems without one): it survives the kill, and the next session's start-up sweep
must reap it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from llorch_harness.pool import procs

from .common import ANTI_HANG_S, PYTHON, clean_env, count, figure, marked_under, wait_for

GATE_LIKE = '''
import json, os, time
from pathlib import Path

import pytest

from llorch_harness.pool import workers

pytestmark = pytest.mark.cpu


def test_worker_then_trouble(worker_factory, pool_paths):
    ready = Path(os.environ["ORPHAN_READY"])
    if ready.exists():  # xdist re-ran this test on a replacement worker: note it, end quickly
        ready.with_name("rerun").write_text(str(os.getpid()))
        return
    w = worker_factory.spawn("cpu")
    info = {"pid": w.pid, "port": w.port, "pytest_pid": os.getpid(), "unguarded": None}
    if os.environ["ORPHAN_MODE"] == "sigkill":
        u = workers.spawn_worker(pool_paths, "cpu", w.model_id, port=0, worker="reference",
                                 worker_id="unguarded-cpu-0", ready_timeout=60,
                                 die_with_parent=False)
        info["unguarded"] = {"pid": u.pid, "port": u.port}
    Path(os.environ["ORPHAN_READY"]).write_text(json.dumps(info))
    if os.environ["ORPHAN_MODE"] == "fail":
        assert False, "failing half-way on purpose, with a worker running"
    for _ in range(1200):  # bounded: 60 s at most
        time.sleep(0.05)


def test_other():
    pass
'''

TRIVIAL = '''
def test_nothing():
    pass
'''

MODES = ("fail", "sigint", "sigkill", "xdist-kill")


def start_session(tmp: Path, mode: str, pool: Path, ready: Path) -> subprocess.Popen[bytes]:
    test_file = tmp / "test_gate_like.py"
    test_file.write_text(GATE_LIKE)
    argv = [PYTHON, "-m", "pytest", str(test_file), "--lab", "embedded", "--pool-root",
            str(pool), "-p", "no:cacheprovider", "--rootdir", str(tmp), "-q",
            "--basetemp", str(tmp / f"bt-{mode}"), "--ready-timeout", "60"]
    if mode == "xdist-kill":
        argv += ["-n", "2"]
    env = clean_env(ORPHAN_MODE=mode, ORPHAN_READY=str(ready))
    return subprocess.Popen(argv, cwd=tmp, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def one_cycle(tmp: Path, mode: str, cycle: int) -> dict[str, object]:
    work = tmp / f"{mode}-{cycle}"
    work.mkdir()
    pool, ready = work / "pool", work / "ready.json"
    p = start_session(work, mode, pool, ready)
    survived_kill = None
    try:
        wait_for(lambda: ready.exists() and ready.stat().st_size or p.poll() is not None,
                 ANTI_HANG_S, f"{mode}: the test to spawn its worker", poll=0.05)
        assert p.poll() is None or mode == "fail", p.communicate()[0].decode()[-3000:]
        info = json.loads(ready.read_text())
        assert procs.process_alive(info["pid"]), "the worker was not running"
        if mode == "sigint":
            os.kill(p.pid, signal.SIGINT)
        elif mode == "sigkill":
            os.kill(p.pid, signal.SIGKILL)
        elif mode == "xdist-kill":
            assert info["pytest_pid"] != p.pid  # the xdist worker, not the controller
            os.kill(info["pytest_pid"], signal.SIGKILL)
        out = p.communicate(timeout=ANTI_HANG_S)[0].decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    expected_rc = {"fail": 1, "sigint": 2, "sigkill": -signal.SIGKILL, "xdist-kill": 1}[mode]
    assert p.returncode == expected_rc, out[-3000:]
    if mode == "sigkill":
        u = info["unguarded"]
        survived_kill = procs.process_alive(u["pid"])
        assert survived_kill, "the unguarded worker died with pytest: the sweep is untested"
        # the pdeathsig-guarded worker died with its parent, without any sweep
        wait_for(lambda: not procs.process_alive(info["pid"]), 30, "parent-death signal")
        nxt = subprocess.run(
            [PYTHON, "-m", "pytest", str(_trivial(work)), "--lab", "embedded", "--pool-root",
             str(pool), "-p", "no:cacheprovider", "--rootdir", str(work), "-q", "--basetemp",
             str(work / "bt-next")], cwd=work, env=clean_env(), capture_output=True,
            text=True, timeout=ANTI_HANG_S, stdin=subprocess.DEVNULL, check=False)
        assert nxt.returncode == 0, nxt.stdout[-2000:]
    left: list[int] = []

    def gone() -> bool:
        left[:] = [q.pid for q in marked_under(pool)]
        return not left

    wait_for(gone, 30, f"{mode}: marked processes to go (left: {left})")
    ports = [info["port"]] + ([info["unguarded"]["port"]] if info.get("unguarded") else [])
    held = [port for port in ports if not procs.wait_port_free(port, timeout=10)]
    assert held == [], f"ports still held: {held}"
    return {"survived_kill": survived_kill, "rerun": (work / "rerun").exists()}


def _trivial(work: Path) -> Path:
    f = work / "test_next_session.py"
    f.write_text(TRIVIAL)
    return f


@pytest.mark.parametrize("mode", MODES)
def test_no_orphans(mode: str, tmp_path: Path) -> None:
    cycles = count("orphan_cycles")
    swept = reruns = 0
    t0 = time.monotonic()
    for cycle in range(cycles):
        res = one_cycle(tmp_path, mode, cycle)
        swept += bool(res["survived_kill"])
        reruns += bool(res["rerun"])
    assert marked_under(tmp_path) == []
    figure("orphans", mode=mode, cycles=cycles, marked_processes_left=0, ports_held=0,
           reaped_by_next_session_sweep=swept, crashed_test_rerun_by_xdist=reruns,
           seconds=round(time.monotonic() - t0, 1))
