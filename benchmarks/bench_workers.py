"""Worker lifecycle figures: ready-detection lag, crash-to-report time, stop time.

Not a test: figures go to benchmarks/RESULTS_workers.md, nothing is asserted.
Run:  .venv/bin/python benchmarks/bench_workers.py [--spawns 50] [--ref-spawns 20]

Ready-detection lag = when spawn_worker() returned minus when the worker's port first
accepted a TCP connection, seen by an independent probe thread connecting every 1 ms
(both on this process's monotonic clock).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
from benchstats import pct

from llorch_harness.pool import procs
from llorch_harness.pool.backends import device_info
from llorch_harness.pool.catalog import ModelEntry, update_catalog
from llorch_harness.pool.paths import PoolPaths
from llorch_harness.pool.workers import WorkerStartError, spawn_worker, stop_all

HERE = Path(__file__).resolve().parent
FAKEWORKER = HERE.parent / "tests" / "fakeworker.py"


class Probe(threading.Thread):
    """Connects to the port every 1 ms; records the first moment it is accepted."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.first_accept: float | None = None
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.05):
                    self.first_accept = time.monotonic()
                    return
            except OSError:
                time.sleep(0.001)




def summary(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"median {statistics.median(ms):.1f} ms, p95 {pct(ms, 0.95):.1f} ms, "
            f"min {min(ms):.1f} ms, max {max(ms):.1f} ms (n={len(ms)})")


def setup_pool(root: Path) -> tuple[PoolPaths, Path]:
    paths = PoolPaths.at(root)
    d = paths.models_dir / "fake"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\0")
    entry = ModelEntry(id="fake", name="Fake", path=".test-models/fake", downloaded=True,
                       backends=["cpu"])
    update_catalog(paths, lambda c: c.upsert(entry))
    bin_dir = root / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "llorch-cpu-candled"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKEWORKER}" "$@"\n')
    exe.chmod(0o755)
    return paths, bin_dir


def measure_spawns(
    paths: PoolPaths, n: int, model: str, **kw: object,
) -> tuple[list[float], list[float], list[float]]:
    """(ready lags, time to ready, graceful stop times) over n spawn/stop cycles."""
    lags, readies, stops = [], [], []
    for _ in range(n):
        port = procs.free_port()
        probe = Probe(port)
        probe.start()
        h = spawn_worker(paths, "cpu", model, port=port, ready_timeout=120, **kw)  # type: ignore[arg-type]
        returned = time.monotonic()
        probe.stop_flag.set()
        probe.join(2)
        if probe.first_accept is not None:
            lags.append(max(0.0, returned - probe.first_accept))
        readies.append(h.ready_seconds)
        res = h.stop(grace=10)
        if res.step == "sigint":
            stops.append(res.seconds)
    return lags, readies, stops


def measure_crash(paths: PoolPaths, bin_dir: Path, n: int) -> list[float]:
    lags = []
    for _ in range(n):
        try:
            spawn_worker(paths, "cpu", "fake", port=0, bin_dir=bin_dir,
                         extra_env={"FAKEWORKER_MODE": "crash_at_start"})
        except WorkerStartError as err:
            reported = time.time()
            m = re.search(r"fake crash at ([\d.]+)", err.log_tail)
            if m:
                lags.append(reported - float(m.group(1)))
    return lags


def measure_never_ready(paths: PoolPaths, bin_dir: Path, n: int, timeout: float) -> list[float]:
    """Seconds a never-ready worker costs beyond its ready timeout (stop ladder included)."""
    extra = []
    for _ in range(n):
        t0 = time.monotonic()
        try:
            spawn_worker(paths, "cpu", "fake", port=0, bin_dir=bin_dir, ready_timeout=timeout,
                         extra_env={"FAKEWORKER_MODE": "never_ready"})
        except WorkerStartError:
            extra.append(time.monotonic() - t0 - timeout)
    return extra


def measure_worst_stop(paths: PoolPaths, bin_dir: Path, n: int, grace: float) -> list[float]:
    """Stop time of a worker that ignores SIGINT and SIGTERM (ends by SIGKILL)."""
    times = []
    for _ in range(n):
        h = spawn_worker(paths, "cpu", "fake", port=0, bin_dir=bin_dir,
                         extra_env={"FAKEWORKER_MODE": "ignore_signals"})
        res = h.stop(grace=grace)
        if res.step == "sigkill":
            times.append(res.seconds)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spawns", type=int, default=50)
    ap.add_argument("--ref-spawns", type=int, default=20)
    ap.add_argument("--crashes", type=int, default=20)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS_workers.md")
    args = ap.parse_args()

    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        paths, bin_dir = setup_pool(Path(tmp))
        try:
            fl, fr, fs = measure_spawns(paths, args.spawns, "fake", bin_dir=bin_dir)
            crash = measure_crash(paths, bin_dir, args.crashes)
            never = measure_never_ready(paths, bin_dir, 5, timeout=2.0)
            worst = measure_worst_stop(paths, bin_dir, 5, grace=1.0)
            bound = 1.0 + procs.STOP_TERM_WAIT_S
            lines += [
                "## Fake worker (tests/fakeworker.py behind a sh wrapper)",
                f"- ready-detection lag after the port accepts: {summary(fl)}",
                f"- spawn to ready (ready_seconds): {summary(fr)}",
                f"- graceful stop (SIGINT) incl. port-free check: {summary(fs)}",
                f"- start-up crash (exit 3) to reported WorkerStartError: {summary(crash)}",
                f"- never-ready worker, ready timeout 2 s: cost beyond the timeout "
                f"(stop ladder included): {summary(never)}",
                f"- worker ignoring SIGINT and SIGTERM, grace 1 s: stop by SIGKILL took "
                f"{summary(worst)}; bound grace + SIGTERM wait = {bound * 1000:.0f} ms "
                "plus the kill",
            ]
            if all(importlib.util.find_spec(m) for m in (
                    "llorch_harness.lab.refworker.__main__", "llorch_harness.lab.tinymodel")):
                from llorch_harness.lab.tinymodel import build_tiny_model

                build_tiny_model(paths.models_dir / "tiny-qwen")
                entry = ModelEntry(id="tiny-qwen", name="Tiny Qwen2",
                                   path=".test-models/tiny-qwen", downloaded=True,
                                   backends=["cpu"], architecture="qwen")
                update_catalog(paths, lambda c: c.upsert(entry))
                rl, rr, rs = measure_spawns(paths, args.ref_spawns, "tiny-qwen",
                                            worker="reference")
                lines += [
                    "", "## Reference worker (tiny-qwen)",
                    f"- ready-detection lag after the port accepts: {summary(rl)}",
                    f"- spawn to ready (ready_seconds): {summary(rr)}",
                    f"- graceful stop (SIGINT) incl. port-free check: {summary(rs)}",
                ]
            else:
                lines += ["", "## Reference worker", "- not available in this tree: skipped"]
        finally:
            stop_all(paths, grace=2)
    info = device_info("cpu")
    head = [
        "# Worker lifecycle benchmark",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {info['name']}, {psutil.cpu_count()} logical cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`"
        f" (load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())})",
        "- lag = spawn_worker() return minus first accepted connect of a 1 ms probe thread;"
        " readiness polls every 10 ms and also needs a healthy GET /health",
        "",
    ]
    text = "\n".join(head + lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
