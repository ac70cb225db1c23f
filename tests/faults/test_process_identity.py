"""Item 2: stale worker records whose pid now names another, unrelated process.

Each unrelated process is a shell "canary" in its own session (like a real worker)
that traps INT, TERM, HUP, QUIT, USR1 and USR2 into a log; SIGKILL would show as
death. Records point at the canaries in every way a stale record can look: our format
with a wrong create time, our format with the right create time but another worker's
marker (or none), the Rust pool's format (no create time, started long ago), and a
pid whose process has exited. `worker list` must call them stale/dead, `worker stop`
and `worker reap` must signal none of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from llorch_harness.pool import procs
from llorch_harness.pool.paths import PoolPaths

from .common import ANTI_HANG_S, LLORCH_POOL, clean_env, count, figure, wait_for

# Each round of its loop appends a byte to $LOG.beat: a trapped signal is logged when the
# current `sleep` ends, so two more rounds after an action mean that anything it signalled
# is in the log (settle), however slow the host (a fixed pause was a guess).
CANARY = (
    'for s in INT TERM HUP QUIT USR1 USR2; do trap "echo $s >> \\"$LOG\\"" $s; done; '
    'i=0; while [ $i -lt 1200 ]; do sleep 0.5; i=$((i+1)); echo >> "$LOG.beat"; done'
)
KINDS = ("ctime", "marker", "nomarker", "rust", "dead")


@dataclass
class Canary:
    proc: subprocess.Popen[bytes]
    log: Path

    def signals(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    def rounds(self) -> int:
        """Rounds of its loop done so far."""
        beat = self.log.with_name(self.log.name + ".beat")
        return beat.stat().st_size if beat.exists() else 0


def settle(cs: list[Canary]) -> None:
    """Return once every live canary has done two more rounds: whatever signalled one
    before now is in its log by then."""
    start = [c.rounds() for c in cs]
    wait_for(lambda: all(c.proc.poll() is not None or c.rounds() >= n + 2
                         for c, n in zip(cs, start, strict=True)),
             ANTI_HANG_S, "every canary to finish two more rounds")


def start_canary(tmp: Path, i: int, env_extra: dict[str, str] | None = None) -> Canary:
    log = tmp / f"canary{i}.log"
    env = clean_env(LOG=str(log), **(env_extra or {}))
    p = subprocess.Popen(["/bin/sh", "-c", CANARY], env=env, start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    return Canary(p, log)


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


@pytest.fixture
def canaries() -> Iterator[list[Canary]]:
    made: list[Canary] = []
    yield made
    for c in made:  # each canary leads its own group: its `sleep` child goes with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.proc.pid, signal.SIGKILL)
        c.proc.wait(timeout=10)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LLORCH_POOL), *args], capture_output=True, text=True,
                          timeout=ANTI_HANG_S, env=clean_env(), stdin=subprocess.DEVNULL,
                          check=False)


def test_stale_records_signal_nothing(tmp_path: Path, canaries: list[Canary]) -> None:
    n = count("stale_records")
    paths = PoolPaths.at(tmp_path / "pool")
    paths.workers_dir.mkdir(parents=True)
    pool = procs.pool_key(paths.root)
    other_pool = str((tmp_path / "other-pool").resolve())
    long_ago = iso(datetime.now(UTC) - timedelta(hours=2))
    expected: dict[str, str] = {}
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        wid = f"worker-{kind}-{i}"
        env = {}
        if kind == "marker":  # a live harness worker of another pool, right create time
            env = {procs.MARKER_WORKER_ENV: f"other-{i}", procs.MARKER_POOL_ENV: other_pool}
        if kind == "dead":
            gone = subprocess.Popen(["/bin/true"])
            gone.wait()
            pid, ctime = gone.pid, time.time() - 5
        else:
            c = start_canary(tmp_path, i, env)
            canaries.append(c)
            pid = c.proc.pid
            ctime = psutil.Process(pid).create_time()
        port = procs.free_port()
        rec: dict[str, object] = {"worker_id": wid, "pid": pid, "backend": "cpu",
                                  "model_id": "tiny-qwen", "port": port}
        if kind == "rust":
            rec["started_at"] = long_ago
        else:
            rec.update({"started_at": long_ago, "pool_root": pool, "gpu": 0,
                        "uri": f"http://127.0.0.1:{port}",
                        "create_time": ctime - 3600 if kind == "ctime" else ctime})
        (paths.workers_dir / f"{wid}.json").write_text(json.dumps(rec))
        expected[wid] = "dead" if kind == "dead" else "stale"

    listed = cli("worker", "list", "--json", "--pool-root", str(paths.root))
    assert listed.returncode == 0, listed.stderr
    rows = {r["worker_id"]: r["status"] for r in json.loads(listed.stdout)["workers"]}
    assert rows == expected
    assert json.loads(listed.stdout)["orphans"] == []
    table = cli("worker", "list", "--pool-root", str(paths.root))
    assert table.returncode == 0 and "running" not in table.stdout

    ids = sorted(expected)
    one_by_one, rest = ids[: max(1, len(ids) // 5)], ids[max(1, len(ids) // 5):]
    steps: dict[str, str] = {}
    for wid in one_by_one:
        r = cli("worker", "stop", wid, "--json", "--grace", "0.5", "--pool-root", str(paths.root))
        assert r.returncode == 0, r.stderr
        steps.update({x["worker_id"]: x["step"] for x in json.loads(r.stdout)})
    r = cli("worker", "stop", "--all", "--json", "--grace", "0.5", "--pool-root", str(paths.root))
    assert r.returncode == 0, r.stderr
    steps.update({x["worker_id"]: x["step"] for x in json.loads(r.stdout)})
    assert set(steps) == set(ids)
    for wid, step in steps.items():
        assert step == ("already_dead" if expected[wid] == "dead" else "stale_record"), wid
    reap = cli("worker", "reap", "--grace", "0.5", "--pool-root", str(paths.root))
    assert reap.returncode == 0 and "No orphans" in reap.stdout, reap.stdout + reap.stderr
    assert list(paths.workers_dir.glob("*.json")) == []  # stale records are removed

    settle(canaries)
    signalled = {c.proc.pid: c.signals() for c in canaries if c.signals()}
    dead = [c.proc.pid for c in canaries if c.proc.poll() is not None]
    assert signalled == {} and dead == [], (signalled, dead)
    figure("stale_records", records=n, unrelated_processes=len(canaries),
           listed_stale=sum(1 for s in rows.values() if s == "stale"),
           listed_dead=sum(1 for s in rows.values() if s == "dead"),
           stopped_individually=len(one_by_one), stopped_with_all=len(rest),
           processes_signalled=len(signalled), processes_killed=len(dead))


@pytest.mark.parametrize("record", [
    pytest.param({}, id="pid-only"),
    pytest.param({"started_at": "yesterday"}, id="unparseable-started_at"),
])
def test_record_without_identity_signals_nothing(tmp_path: Path, canaries: list[Canary],
                                                  record: dict[str, str]) -> None:
    """Nothing in the record proves the process is the worker: it must count as stale."""
    paths = PoolPaths.at(tmp_path / "pool")
    paths.workers_dir.mkdir(parents=True)
    c = start_canary(tmp_path, 0)
    canaries.append(c)
    rec = {"worker_id": "worker-cpu-0", "pid": c.proc.pid, "backend": "cpu",
           "model_id": "tiny-qwen", "port": procs.free_port(), **record}
    (paths.workers_dir / "worker-cpu-0.json").write_text(json.dumps(rec))
    listed = cli("worker", "list", "--json", "--pool-root", str(paths.root))
    status = json.loads(listed.stdout)["workers"][0]["status"]
    r = cli("worker", "stop", "worker-cpu-0", "--grace", "0.5", "--pool-root", str(paths.root))
    settle([c])
    assert (c.signals(), c.proc.poll()) == ([], None), r.stdout + r.stderr
    assert status in ("stale", "dead")
    assert r.returncode == 0 and "nothing signalled" in r.stdout, r.stdout + r.stderr
