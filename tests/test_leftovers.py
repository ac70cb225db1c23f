"""Leftovers after a stop: real processes, a real port, GPU memory via a scripted nvidia-smi."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from llorch_harness.pool import leftovers, procs
from llorch_harness.pool.memwatch import MemoryWatch
from tests import fakesmi

# A worker that listens on a port; with "leak" it hands the socket to a child in its own
# session that ignores SIGINT and SIGTERM, and exits on SIGINT without it.
# Its SIGINT handler exists before it prints the port: the test signals as soon as it reads
# the port, and a SIGINT that met Python's default handler there would end it with -2.
WORKER = textwrap.dedent("""
    import os, signal, socket, subprocess, sys, time
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0)); s.listen()
    if sys.argv[1] == "leak":
        code = ("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
                "time.sleep(120)")
        child = subprocess.Popen([sys.executable, "-c", code, "llorch-helper"],
                                 pass_fds=(s.fileno(),), start_new_session=True,
                                 stdout=subprocess.PIPE)
        child.stdout.readline()
    print(s.getsockname()[1], flush=True)
    time.sleep(120)
""")


@pytest.fixture
def workers():
    """Worker processes a test starts, and everything they leave: killed afterwards."""
    started: list[tuple[subprocess.Popen[str], list[leftovers.ProcRef]]] = []

    def start(mode: str, env: dict[str, str] | None = None):
        p = subprocess.Popen([sys.executable, "-c", WORKER, mode], stdout=subprocess.PIPE,
                             text=True, env=env)
        assert p.stdout is not None
        port = int(p.stdout.readline())
        refs = leftovers.snapshot(p.pid)
        started.append((p, refs))
        return p, port, refs

    yield start
    for p, refs in started:
        for r in refs:
            proc = r.process()
            if proc is not None:
                proc.kill()
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def _sigint_and_wait(p: subprocess.Popen[str]) -> None:
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=20) == 0


def test_a_clean_worker_leaves_nothing(workers) -> None:
    p, port, refs = workers("clean")
    assert [r.pid for r in refs] == [p.pid]
    _sigint_and_wait(p)
    found = leftovers.find(refs, port=port, settle_s=5.0)
    assert not found and found.describe() == "nothing left behind"


def test_a_leaky_worker_is_named_then_cleaned_up(workers) -> None:
    p, port, refs = workers("leak")
    child = next(r for r in refs if r.pid != p.pid)
    _sigint_and_wait(p)
    found = leftovers.find(refs, port=port, settle_s=0.5)
    assert [r.pid for r in found.processes] == [child.pid] and found.port == port
    text = found.describe()
    assert f"pid {child.pid} ({sys.executable} -c import signal" in text
    assert text.endswith(f"still running; port {port} still bound")
    listed = found.to_json()["processes"]
    assert listed[0]["pid"] == child.pid and listed[0]["cmdline"].endswith("llorch-helper")
    assert leftovers.clean_up(found) == []
    assert child.process() is None and procs.port_is_free(port)


def test_gpu_memory_held_by_a_leftover(workers, monkeypatch, tmp_path: Path) -> None:
    for k, v in fakesmi.install(tmp_path, {"gpus": [fakesmi.gpu(0)]}).items():
        monkeypatch.setenv(k, v)
    watch = MemoryWatch("cuda", 0, device_before_mib=MemoryWatch.device_used_mib("cuda", 0))
    env = dict(os.environ, FAKE_GPU_MIB="512", FAKE_GPU_UUID="GPU-fake-0000")
    p, port, refs = workers("leak", env)
    _sigint_and_wait(p)

    def missing() -> float | None:
        after = MemoryWatch.device_used_mib("cuda", 0)
        assert watch.device_before_mib is not None and after is not None
        return after - watch.device_before_mib

    found = leftovers.find(refs, port=port, gpu_not_returned=missing, settle_s=0.3)
    assert found.gpu_mib == 512 and "512 MiB of GPU memory not returned" in found.describe()
    leftovers.clean_up(found)
    assert not leftovers.find(refs, port=port, gpu_not_returned=missing, settle_s=5.0)


def test_late_marker_carriers_count_and_reused_pids_do_not(workers) -> None:
    p, port, refs = workers("clean")
    stranger = psutil.Process(os.getppid())
    fake = leftovers.ProcRef(stranger.pid, stranger.create_time() - 1000.0, ("old",))
    assert fake.process() is None  # same pid, another process: never blamed, never signalled
    _sigint_and_wait(p)
    found = leftovers.find([*refs, fake], port=port, settle_s=0.2, late=lambda: [stranger])
    assert [r.pid for r in found.processes] == [stranger.pid]  # found by late(): reported
