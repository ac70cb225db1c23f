"""The measuring protocol against a real HTTP server standing in for fresh workers: loads,
the warm-up excluded, every worker stopped (also on failure); memory readers against this
process and a stand-in `nvidia-smi` on PATH."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from llorch_harness.perf.fingerprint import Protocol
from llorch_harness.perf.measure import measure, memory_now, rss_bytes, rss_high_water, vram_bytes
from tests.sse_servers import SSEServer, b_good


@dataclass
class FakeHandle:
    uri: str
    pid: int
    ready_seconds: float
    log_path: Path | None = None
    stopped: bool = False


def test_protocol_loads_warms_up_measures_and_stops_everything():
    """Every load answers its warm-up (excluded) and its measured requests, and is stopped
    before the next one starts; one memory peak per worker life."""
    handles: list[FakeHandle] = []
    with SSEServer(b_good) as srv:
        def spawn(i: int) -> FakeHandle:
            assert all(h.stopped for h in handles)  # one worker at a time
            handles.append(FakeHandle(srv.url, os.getpid(), 1.0 + i))
            return handles[-1]

        def stop(h: FakeHandle) -> None:
            h.stopped = True

        m = measure(spawn, stop, "cpu", Protocol(requests=2, loads=3))
        bodies = [r["body"] for r in srv.requests]
    assert m.load_s == [1.0, 2.0, 3.0] and all(h.stopped for h in handles)
    kinds = [b["job_id"].split("-")[1] for b in bodies]
    assert kinds == ["warmup0", "m0", "m1", "l1warmup0", "m2", "m3", "l2warmup0", "m4", "m5"]
    assert all(b["temperature"] == 0.0 and b["max_tokens"] == 20 for b in bodies)
    assert len(m.timings) == 6  # the warm-ups are not among them
    # the stand-in writes no log, so no tokens_generated: nothing is timed as a number
    assert not any(t.ok for t in m.timings)
    assert m.figures(min_samples=3)["s_per_token"].value is None
    assert len(m.memory_ready) == 3 and len(m.memory_peak) == 3 and m.memory_kind == "RSS"
    assert m.overhead_s is not None and m.overhead_s >= 0


def test_the_default_protocol_gives_every_figure_five_samples():
    from llorch_harness.perf.figures import MIN_SAMPLES
    from llorch_harness.perf.fingerprint import DEFAULT_PROTOCOL

    assert MIN_SAMPLES >= 5 and DEFAULT_PROTOCOL.loads >= MIN_SAMPLES
    assert DEFAULT_PROTOCOL.loads * DEFAULT_PROTOCOL.requests >= MIN_SAMPLES


def test_a_failing_spawn_still_stops_the_worker_already_started():
    started: list[FakeHandle] = []

    def spawn(i: int) -> FakeHandle:
        if i == 1:
            raise RuntimeError("never ready")
        started.append(FakeHandle("http://127.0.0.1:9", os.getpid(), 1.0))
        return started[-1]

    def stop(h: FakeHandle) -> None:
        h.stopped = True

    with pytest.raises(RuntimeError, match="never ready"):
        measure(spawn, stop, "cpu", Protocol(loads=3))
    assert len(started) == 1 and started[0].stopped


def test_memory_of_this_process():
    rss = rss_bytes(os.getpid())
    assert rss is not None and rss > 1 << 20
    if sys.platform.startswith("linux"):
        hwm = rss_high_water(os.getpid())
        assert hwm is not None and hwm >= rss * 0.5
    assert memory_now(os.getpid(), "cpu") == pytest.approx(rss, rel=0.5)
    assert rss_bytes(2**22 + 12345) is None  # no such process


def test_vram_is_read_per_process_from_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\necho '{os.getpid()}, 1234'\necho '1, 999'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ.get('PATH', '')}")
    assert vram_bytes(os.getpid()) == 1234 * (1 << 20)
    assert memory_now(os.getpid(), "cuda") == 1234 * (1 << 20)
    fake.write_text("#!/bin/sh\necho 'No running processes found'\n")
    assert vram_bytes(os.getpid()) is None
