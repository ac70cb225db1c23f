"""Memory per worker life, measured on real processes (and a scripted nvidia-smi for cuda)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llorch_harness.pool import memwatch
from llorch_harness.pool.memwatch import MIB, MemoryWatch, judge_growth
from tests import fakesmi

# One "request" per stdin line: `keep` adds 8 MiB that stays (a leak), `temp` allocates 8 MiB
# and frees it, `big`/`small` hold or drop 64 MiB; "ok" answers each line.
SERVER = textwrap.dedent("""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(24 << 20); "
                              "b[::4096] = b'x' * len(b[::4096]); print(1, flush=True); "
                              "time.sleep(120)"], stdout=subprocess.PIPE)
    child.stdout.readline()  # its 24 MiB are resident now
    kept, big = [], None
    print("ready", child.pid, flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "keep":
            b = bytearray(8 << 20); b[::4096] = b"x" * len(b[::4096]); kept.append(b)
        elif cmd == "temp":
            b = bytearray(8 << 20); b[::4096] = b"x" * len(b[::4096]); del b
        elif cmd == "big":
            big = bytearray(64 << 20); big[::4096] = b"x" * len(big[::4096])
        elif cmd == "small":
            big = None
        print("ok", flush=True)
    child.kill()
""")


class Server:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        word, child = self.proc.stdout.readline().split()
        assert word == "ready"
        self.child = int(child)

    def ask(self, cmd: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with_child_gone(self.child)


def with_child_gone(pid: int) -> None:
    import psutil

    try:
        psutil.Process(pid).kill()
    except psutil.Error:
        pass


@pytest.fixture
def server():
    made: list[Server] = []

    def make(env: dict[str, str] | None = None) -> Server:
        s = Server(env)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_rss_covers_the_whole_tree(server) -> None:
    s = server()
    watch = MemoryWatch("cpu", s.proc.pid, vram_reported=0)
    ready = watch.sample("ready")
    assert set(ready.pids) == {s.proc.pid, s.child}
    assert ready.rss_bytes > 24 * MIB  # the child's 24 MiB count too
    assert ready.gpu_bytes is None
    data = watch.to_json()
    assert data["ready"]["rss_bytes"] == ready.rss_bytes and data["vram_bytes_reported"] == 0


def test_a_leak_over_identical_requests_fails(server) -> None:
    s = server()
    watch = MemoryWatch("cpu", s.proc.pid)
    readings = []
    for _ in range(9):
        s.ask("keep")
        readings.append(watch.sample("request").rss_bytes)
    growth = judge_growth(readings, what="rss")
    assert not growth.ok and growth.growth_bytes >= 24 * MIB
    assert "beyond the threshold of 16.0 MiB" in growth.describe()


def test_memory_freed_after_each_request_passes(server) -> None:
    s = server()
    watch = MemoryWatch("cpu", s.proc.pid)
    readings = []
    for _ in range(9):
        s.ask("temp")
        readings.append(watch.sample("request").rss_bytes)
    growth = judge_growth(readings, what="rss")
    assert growth.ok, growth.describe()


def test_peak_is_caught_between_readings(server) -> None:
    s = server()
    watch = MemoryWatch("cpu", s.proc.pid)
    base = watch.sample("ready").rss_bytes
    with watch.peak(interval=0.02):
        s.ask("big")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
                watch.peak_sample is None or watch.peak_sample.rss_bytes < base + 60 * MIB):
            time.sleep(0.02)
        s.ask("small")
    assert watch.peak_sample is not None and watch.peak_sample.rss_bytes >= base + 60 * MIB


def test_cuda_memory_per_pid_and_device_return(server, monkeypatch, tmp_path: Path) -> None:
    for k, v in fakesmi.install(tmp_path, {"gpus": [fakesmi.gpu(0)]}).items():
        monkeypatch.setenv(k, v)
    before = MemoryWatch.device_used_mib("cuda", 0)
    assert before == 300
    s = server(dict(os.environ, FAKE_GPU_MIB="1000", FAKE_GPU_UUID="GPU-fake-0000"))
    watch = MemoryWatch("cuda", s.proc.pid, uuid="GPU-fake-0000", vram_reported=12345,
                        device_before_mib=before)
    ready = watch.sample("ready")
    assert ready.gpu_bytes == 2000 * MIB  # the server and its child both "hold" 1000 MiB
    s.close()
    assert watch.after_stop(settle_s=5.0) == 300 and watch.returned() is True
    data = watch.to_json()
    assert data["peak"]["gpu_bytes"] == 2000 * MIB and data["device_memory_returned"] is True


def test_memory_not_returned_is_seen(monkeypatch, tmp_path: Path) -> None:
    watch = MemoryWatch("cuda", os.getpid(), device_before_mib=300)
    assert watch.after_stop(settle_s=0.3, reader=lambda _b, _i: 1324.0) == 1324.0
    assert watch.returned() is False
    assert MemoryWatch("cpu", os.getpid()).returned() is None


def test_growth_judgement_ignores_warmup_and_spikes() -> None:
    flat = [100 * MIB, 500 * MIB] + [400 * MIB] * 3 + [400 * MIB, 900 * MIB, 400 * MIB]
    assert judge_growth(flat, warmup=1).ok
    leak = [400 * MIB + i * 10 * MIB for i in range(9)]
    g = judge_growth(leak)
    assert not g.ok and g.growth_bytes == 40 * MIB and g.per_request_bytes == 10 * MIB
    big = [10_000 * MIB + i * MIB for i in range(9)]  # 4 MiB on 10 GB: within 5 %
    assert judge_growth(big).ok
    with pytest.raises(ValueError, match="at least 5 readings"):
        judge_growth([1, 2, 3, 4])
    assert memwatch.tree_pids(2**22 + 12345) == []
