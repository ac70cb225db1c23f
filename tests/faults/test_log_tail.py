"""Issue 20 #13: a log tail is linear (bounded) whatever the log looks like.

The old tail read backwards 8 KiB at a time until it had seen n newlines, prepending each
block to what it had: a log without newlines (`\\r`-redrawn progress bars make such
logs) was read whole, quadratically (5 MB 3.2 s, 10 MB 12 s, 20 MB 41 s), on every
failed spawn. Now every tail (`fsutil.tail_text`, used by `workers.tail_lines`, `worker
logs`, the report's log extras) reads one window from the end and splits on `\\n`, `\\r\\n`
and a bare `\\r`.

Benchmark-free: the time for a 20 MB log is compared with the time for a 1 MB log of the
same shape within the same run (the minimum of several runs each); linear-in-the-window
means about equal, the old code's ratio was about 400. No absolute wall-clock limit.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from llorch_harness import fsutil
from llorch_harness.plugin import report
from llorch_harness.pool import workers
from llorch_harness.pool.paths import PoolPaths

from .common import FULL, LLORCH_POOL, clean_env, figure

MB = 1 << 20
REPEATS = 15 if FULL else 7
RATIO_LIMIT = 5.0


def no_breaks(size: int) -> bytes:
    return b"x" * size


def progress_cr(size: int) -> bytes:
    """A progress bar redrawn with `\\r` and never a newline, as a crash leaves it."""
    line = b"Downloading weights:  42%|####      | 420M/1.00G [00:10<00:14, 41.2MB/s]\r"
    return (line * (size // len(line) + 1))[:size - 8] + b"\rdone 99"


def long_last_line(size: int) -> bytes:
    head = b"".join(b"INFO line %d\n" % i for i in range(1000))
    return head + b"y" * (size - len(head))


def crlf(size: int) -> bytes:
    line = b"WARN something happened, again and again\r\n"
    return (line * (size // len(line) + 1))[:size]


SHAPES: dict[str, Callable[[int], bytes]] = {
    "no-line-breaks": no_breaks,
    "cr-progress": progress_cr,
    "long-last-line": long_last_line,
    "crlf-lines": crlf,
}


def best_of(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    fn()  # warm the page cache and imports
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_tail_time_does_not_grow_with_the_log(tmp_path: Path, shape: str) -> None:
    make = SHAPES[shape]
    small, big = tmp_path / "1mb.log", tmp_path / "20mb.log"
    small.write_bytes(make(1 * MB))
    big.write_bytes(make(20 * MB))
    t_small = best_of(lambda: workers.tail_lines(small, 40))
    t_big = best_of(lambda: workers.tail_lines(big, 40))
    ratio = t_big / t_small
    figure("log_tail", shape=shape, t_1mb_ms=round(t_small * 1000, 3),
           t_20mb_ms=round(t_big * 1000, 3), ratio=round(ratio, 2), limit=RATIO_LIMIT)
    assert ratio < RATIO_LIMIT, f"20 MB took {ratio:.1f}x the 1 MB tail: not linear"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_tail_reads_one_bounded_window(tmp_path: Path, shape: str) -> None:
    """The tail comes from the last window only, and every consumer gives the same lines."""
    log = tmp_path / "w.log"
    data = SHAPES[shape](3 * fsutil.TAIL_WINDOW)
    log.write_bytes(data)
    window = data[-fsutil.TAIL_WINDOW:].decode("utf-8", "replace").splitlines()
    expected = window[1:][-40:] if len(window) > 1 else window[-40:]
    got = workers.tail_lines(log, 40).split("\n")
    assert got == expected
    assert len("\n".join(got)) <= fsutil.TAIL_WINDOW
    assert fsutil.tail_text(log, 40) == "\n".join(expected)
    rep = report.log_tail(log, 40)  # a smaller window of its own (64 KiB)
    assert rep is not None and expected[-1].endswith(rep.split("\n")[-1])


def test_carriage_returns_end_lines(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_bytes(b"start\n 10%\r 50%\r100%\rINFO ready\r\nERROR boom\n")
    assert workers.tail_lines(log, 3) == "100%\nINFO ready\nERROR boom"
    assert workers.tail_lines(log, 0) == ""
    assert workers.tail_lines(tmp_path / "missing.log", 5) == ""


def test_invalid_utf8_and_a_cut_character_are_replaced(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_bytes("é".encode() * (fsutil.TAIL_WINDOW) + b"\xff\xfe end\n")
    text = workers.tail_lines(log, 2)
    assert text.endswith("\ufffd\ufffd end")


def test_worker_logs_cli_on_a_20mb_log_without_newlines(tmp_path: Path) -> None:
    paths = PoolPaths.at(tmp_path / "pool")
    paths.workers_dir.mkdir(parents=True)
    (paths.workers_dir / "worker-cpu-0.log").write_bytes(progress_cr(20 * MB))
    t0 = time.monotonic()
    r = subprocess.run([str(LLORCH_POOL), "worker", "logs", "worker-cpu-0", "-n", "3",
                        "--pool-root", str(paths.root)], capture_output=True, text=True,
                       timeout=120, check=False, env=clean_env(), stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "done 99"
    figure("log_tail_cli", log_mb=20, shape="cr-progress", cli_s=round(took, 2))
