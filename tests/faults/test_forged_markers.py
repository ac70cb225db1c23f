"""Issue 20 #3, #4, #5: only processes proven to be ours are ever signalled.

#3 The start-up sweep of a pytest session trusted any process's `LLORCH_HARNESS_*`
markers: a process claiming a dead session and naming another pool's live worker made a
gate run elsewhere stop that worker. Here a real pytest session (`--pool-root A`) starts
beside forgers of every kind (other pool, a live worker's id in the pool in use, no
record, a bad id or pool root, a process older than the worker it claims to be, a live
session) and one genuine leftover of a dead session of pool A. The genuine leftover must
be reaped; no forger and no live worker may receive any signal.

#4 A record pointing at a process with an empty (`env -i`) or unrelated environment,
in our format (create time), marker-only, or the Rust pool's format (started_at only):
`worker list` calls it stale, `worker stop`, `stop --all` and `reap` signal nothing.

#5 `worker stop --all` with unreadable, oddly named and id-less records sorted *before*
live workers: every live worker is stopped, every bad record is named, exit 1.

The processes are signal-trapping shell canaries (tests/faults/test_process_identity.py):
a trapped signal is logged, so "not signalled" is observed, not assumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llorch_harness.pool import procs

from .common import ANTI_HANG_S, LLORCH_POOL, PYTHON, clean_env, count, figure, wait_for
from .test_process_identity import CANARY, Canary, settle, start_canary

TRIVIAL = "def test_nothing():\n    pass\n"


@pytest.fixture
def canaries() -> Iterator[list[Canary]]:
    made: list[Canary] = []
    yield made
    for c in made:  # each canary leads its own group: its `sleep` child goes with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.proc.pid, signal.SIGKILL)
        c.proc.wait(timeout=10)


def dead_session() -> str:
    """A `pytest:PID:CTIME` session marker of a process that has exited."""
    p = subprocess.Popen(["/bin/true"])
    ctime = psutil.Process(p.pid).create_time()
    p.wait()
    return f"pytest:{p.pid}:{ctime:.2f}"


def marker_env(wid: str, pool: str, session: str | None = None) -> dict[str, str]:
    env = {procs.MARKER_WORKER_ENV: wid, procs.MARKER_POOL_ENV: pool}
    if session:
        env[procs.SESSION_ENV] = session
    return env


def wait_exec(pid: int) -> float:
    """The canary's create time, once it runs the canary script (not the forked parent)."""
    proc = psutil.Process(pid)
    wait_for(lambda: proc.cmdline()[:1] == ["/bin/sh"], 10, "the canary to exec")
    return proc.create_time()


def write_record(pool: Path, wid: str, **fields: object) -> None:
    d = pool / ".runtime" / "workers"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{wid}.json").write_text(json.dumps({"worker_id": wid, "backend": "cpu",
                                               "model_id": "tiny-qwen", "port": None,
                                               **fields}))


def settle_and_read(cs: list[Canary]) -> tuple[dict[int, list[str]], list[int]]:
    settle(cs)
    return ({c.proc.pid: c.signals() for c in cs if c.signals()},
            [c.proc.pid for c in cs if c.proc.poll() is not None])


# --------------------------------------------------------------------------- #3


FORGERIES = ("other-pool-live-worker", "in-use-pool-live-worker", "no-record",
             "invalid-worker-id", "unnormalised-pool-root", "relative-pool-root",
             "born-before-worker", "record-session-differs", "live-session")


def test_startup_sweep_signals_only_proven_leftovers(tmp_path: Path,
                                                     canaries: list[Canary]) -> None:
    pool_a, pool_b = (tmp_path / "pool-a").resolve(), (tmp_path / "pool-b").resolve()
    a, b = procs.pool_key(pool_a), procs.pool_key(pool_b)
    for p in (pool_a, pool_b):
        (p / ".runtime" / "workers").mkdir(parents=True)
    dead = dead_session()
    innocent: list[Canary] = []  # nothing may signal these

    def canary(env: dict[str, str]) -> tuple[Canary, float]:
        c = start_canary(tmp_path, len(canaries), env)
        canaries.append(c)
        return c, wait_exec(c.proc.pid)

    # live workers (no session: started by `llorch-pool worker spawn`) in both pools
    for pool, key, wid in ((pool_b, b, "worker-cpu-0"), (pool_a, a, "worker-cpu-1")):
        c, ct = canary(marker_env(wid, key))
        innocent.append(c)
        write_record(pool, wid, pid=c.proc.pid, create_time=ct, pool_root=key,
                     started_at="2020-01-01T00:00:00Z")
    # a genuine leftover of a dead session in pool A: the positive control
    genuine, gct = canary(marker_env("leftover-cpu-0", a, dead))
    write_record(pool_a, "leftover-cpu-0", pid=genuine.proc.pid, create_time=gct,
                 pool_root=a, session=dead)
    # a worker whose record names a dead session, but whose process is long gone
    write_record(pool_a, "gone-cpu-0", pid=dead_pid(), create_time=time.time() + 3600,
                 pool_root=a, session=dead)
    forged = {
        "other-pool-live-worker": marker_env("worker-cpu-0", b, dead),
        "in-use-pool-live-worker": marker_env("worker-cpu-1", a, dead),
        "no-record": marker_env("nobody-cpu-0", a, dead),
        "invalid-worker-id": marker_env("/../../../../tmp/x", a, dead),
        "unnormalised-pool-root": marker_env("worker-cpu-1", a + "/../" + pool_a.name, dead),
        "relative-pool-root": marker_env("worker-cpu-1", "pool-a", dead),
        "born-before-worker": marker_env("gone-cpu-0", a, dead),
        "record-session-differs": marker_env("leftover-cpu-0", a, dead_session()),
        "live-session": marker_env("worker-cpu-1", a, f"pytest:{psutil.Process().pid}:"
                                   f"{psutil.Process().create_time():.2f}"),
    }
    assert sorted(forged) == sorted(FORGERIES)
    per_kind = count("forgers_per_kind")
    for env in forged.values():
        for _ in range(per_kind):
            innocent.append(canary(env)[0])

    (tmp_path / "test_trivial.py").write_text(TRIVIAL)
    r = subprocess.run(
        [PYTHON, "-m", "pytest", str(tmp_path / "test_trivial.py"), "--lab", "embedded",
         "--pool-root", str(pool_a), "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-q", "--basetemp", str(tmp_path / "bt")], cwd=tmp_path, env=clean_env(),
        capture_output=True, text=True, timeout=ANTI_HANG_S, stdin=subprocess.DEVNULL,
        check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wait_for(lambda: genuine.proc.poll() is not None, 30, "the genuine leftover to be reaped")
    signalled, died = settle_and_read(innocent)
    assert (signalled, died) == ({}, []), (signalled, died)
    outside = sorted(str(p) for p in Path("/tmp").glob("x*") if p.name in ("x", "x.json",
                                                                           "x.lock"))
    assert outside == []
    figure("forged_markers", path="pytest start-up sweep", forgers=len(forged) * per_kind,
           live_workers=2, genuine_leftovers_reaped=1, innocents_signalled=len(signalled),
           innocents_killed=len(died))


def dead_pid() -> int:
    p = subprocess.Popen(["/bin/true"])
    p.wait()
    return p.pid


# --------------------------------------------------------------------------- #4


def start_bare_canary(tmp: Path, i: int, env: list[str]) -> Canary:
    """A canary whose environment is exactly `env` (`env -i`): no marker, maybe nothing."""
    log = tmp / f"bare{i}.log"
    script = f"LOG={shlex.quote(str(log))}; {CANARY}"  # a shell variable: not in its environ
    p = subprocess.Popen(["/usr/bin/env", "-i", *env, "/bin/sh", "-c", script],
                         start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Canary(p, log)


RECORD_KINDS = ("create-time", "marker-only", "rust-started-at")
ENVS = {"empty": [], "unrelated": ["FOO=1", "PATH=/usr/bin:/bin"]}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LLORCH_POOL), *args], capture_output=True, text=True,
                          timeout=ANTI_HANG_S, env=clean_env(), stdin=subprocess.DEVNULL,
                          check=False)


@pytest.mark.parametrize("env_kind", sorted(ENVS))
@pytest.mark.parametrize("record_kind", RECORD_KINDS)
def test_unproven_environment_is_never_the_worker(tmp_path: Path, canaries: list[Canary],
                                                  record_kind: str, env_kind: str) -> None:
    pool = (tmp_path / "pool").resolve()
    c = start_bare_canary(tmp_path, 0, ENVS[env_kind])
    canaries.append(c)
    ct = wait_exec(c.proc.pid)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ct + 0.5))
    fields: dict[str, object] = {"pid": c.proc.pid}
    if record_kind == "create-time":
        fields.update(create_time=ct, pool_root=procs.pool_key(pool), started_at=now)
    elif record_kind == "rust-started-at":
        fields.update(started_at=now)
    write_record(pool, "worker-cpu-0", **fields)
    listed = cli("worker", "list", "--json", "--pool-root", str(pool))
    assert listed.returncode == 0, listed.stderr
    status = json.loads(listed.stdout)["workers"][0]["status"]
    stop = cli("worker", "stop", "worker-cpu-0", "--json", "--grace", "0.5",
               "--pool-root", str(pool))
    write_record(pool, "worker-cpu-0", **fields)
    stop_all = cli("worker", "stop", "--all", "--json", "--grace", "0.5",
                   "--pool-root", str(pool))
    reap = cli("worker", "reap", "--grace", "0.5", "--pool-root", str(pool))
    signalled, died = settle_and_read([c])
    assert (signalled, died) == ({}, []), (record_kind, env_kind, stop.stdout, stop.stderr)
    assert status == "stale", status
    steps = [x["step"] for r in (stop, stop_all) for x in json.loads(r.stdout or "[]")]
    assert steps == ["stale_record", "stale_record"], (stop.stderr, stop_all.stderr)
    assert reap.returncode == 0 and "No orphans" in reap.stdout
    figure("forged_markers", path=f"record {record_kind}, env {env_kind}", forgers=1,
           live_workers=0, genuine_leftovers_reaped=0, innocents_signalled=len(signalled),
           innocents_killed=len(died))


# --------------------------------------------------------------------------- #5


BAD_RECORDS = {
    "a-broken.json": "{not json",
    "b odd name.json": None,  # valid JSON naming a live canary: never signalled (bad id)
    "c..dots.json": None,
    "d-nopid.json": '{"worker_id": "d-nopid"}',
    "e-list.json": "[1, 2, 3]",
    "f-deep.json": "[" * 100000 + "]" * 100000,
}


def test_stop_all_stops_every_worker_it_can_and_names_the_rest(
        tmp_path: Path, canaries: list[Canary]) -> None:
    pool = (tmp_path / "pool").resolve()
    key = procs.pool_key(pool)
    workers_dir = pool / ".runtime" / "workers"
    workers_dir.mkdir(parents=True)
    live = []
    for i in range(3):
        wid = f"z-live-{i}"
        c = start_canary(tmp_path, i, marker_env(wid, key))
        canaries.append(c)
        write_record(pool, wid, pid=c.proc.pid, create_time=wait_exec(c.proc.pid),
                     pool_root=key)
        live.append(c)
    bystander = start_canary(tmp_path, 10, marker_env("b odd name", key))
    canaries.append(bystander)
    bct = wait_exec(bystander.proc.pid)
    for name, text in BAD_RECORDS.items():
        if text is None:
            text = json.dumps({"worker_id": name[:-5], "pid": bystander.proc.pid,
                               "create_time": bct, "pool_root": key})
        (workers_dir / name).write_text(text)
    (workers_dir / "g-dir.json").mkdir()
    r = cli("worker", "stop", "--all", "--grace", "0.5", "--pool-root", str(pool))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "not handled" in errors[0], r.stderr
    named = [n for n in [*BAD_RECORDS, "g-dir.json"] if n in r.stderr]
    assert sorted(named) == sorted([*BAD_RECORDS, "g-dir.json"]), r.stderr
    wait_for(lambda: all(c.proc.poll() is not None for c in live), 30, "every live worker")
    assert sorted(p.name for p in workers_dir.iterdir()) == sorted([*BAD_RECORDS,
                                                                    "g-dir.json"])
    signalled, died = settle_and_read([bystander])
    assert (signalled, died) == ({}, [])
    figure("stop_all", live_workers=len(live), bad_records=len(BAD_RECORDS) + 1,
           live_stopped=sum(c.proc.poll() is not None for c in live),
           bad_records_named=len(named), bystander_signalled=len(signalled), exit=r.returncode)
