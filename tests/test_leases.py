"""Device leases: a kernel lock per device in a host-wide directory, with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llorch_harness.errors import HarnessError
from llorch_harness.pool import leases
from llorch_harness.pool.leases import DeviceKey

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from llorch_harness.pool import leases
    key = leases.DeviceKey("cuda", 0, sys.argv[2])
    lease = leases.acquire(key, Path(sys.argv[1]), wait=float(sys.argv[3]),
                           pool_root=sys.argv[4], worker_id="w-" + sys.argv[4][-1],
                           out=sys.stdout)
    print("HELD", flush=True)
    if sys.argv[5] == "stdin":  # held until the test says so (a line on stdin)
        sys.stdin.readline()
    else:
        time.sleep(float(sys.argv[5]))
    lease.release()
    print("RELEASED", flush=True)
""")


@pytest.fixture
def started():
    """Processes a test starts; killed and reaped afterwards, even on failure."""
    mine: list[subprocess.Popen[str]] = []
    yield mine
    for p in mine:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def _holder(started: list, lease_dir: Path, uuid: str, *, wait: float = 0.0,
            pool: str = "/pool/a", hold: float | str = 60.0, run: str = ""
            ) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lease_dir), uuid, str(wait), pool, str(hold)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, GITHUB_RUN_ID="", CI_JOB_ID="77", LLORCH_LEASE_RUN=run))
    started.append(p)
    return p


def _wait_line(p: subprocess.Popen[str], want: str) -> list[str]:
    lines: list[str] = []
    assert p.stdout is not None
    for line in p.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith(want):
            return lines
    err = p.stderr.read() if p.stderr else ""
    raise AssertionError(f"no {want!r} line; got {lines}, stderr {err}")


def test_acquire_writes_holder_and_lists(tmp_path: Path) -> None:
    key = DeviceKey("cuda", 1, "GPU-aaaa-1111")
    with leases.acquire(key, tmp_path, wait=0, pool_root="/pools/x") as lease:
        rec = lease.record
        assert rec["pid"] == os.getpid() and rec["pool_root"] == "/pools/x"
        assert rec["uuid"] == "GPU-aaaa-1111" and rec["device"] == "cuda:1 (GPU-aaaa-1111)"
        states = leases.list_leases(tmp_path)
        assert [(s.key, s.held) for s in states] == [("GPU-aaaa-1111", True)]
        assert states[0].holder is not None and states[0].holder["pid"] == os.getpid()
        lease.note_worker("w-9", 4242)
        assert leases.read_holder(tmp_path, key.key)["worker_pid"] == 4242
    assert leases.list_leases(tmp_path) == []
    assert [s.held for s in leases.list_leases(tmp_path, include_free=True)] == [False]
    assert oct(os.stat(tmp_path / "GPU-aaaa-1111.lock").st_mode & 0o777) == "0o666"


def test_second_process_fails_naming_the_holder(started, tmp_path: Path) -> None:
    holder = _holder(started, tmp_path, "GPU-bbbb", pool="/pool/a")
    _wait_line(holder, "HELD")
    key = DeviceKey("cuda", 0, "GPU-bbbb")
    with pytest.raises(HarnessError) as err:
        leases.acquire(key, tmp_path, wait=0, pool_root="/pool/b")
    msg = err.value.one_line()
    assert f"pid {holder.pid}" in msg and "pool /pool/a" in msg and "CI CI_JOB_ID=77" in msg
    assert "--lease-wait" in msg and "\n" not in msg


def test_processes_of_one_run_share_the_device_and_other_runs_wait(
        started, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gate session's `llorch-pool worker spawn` (same run token) uses the device the session
    holds; a run with another token, or with none, is refused; the token never reaches a record."""
    holder = _holder(started, tmp_path, "GPU-run1", run="token-of-run-a")
    _wait_line(holder, "HELD")
    key = DeviceKey("cuda", 0, "GPU-run1")
    record = leases.read_holder(tmp_path, key.key)
    assert record is not None and record["run"] and "token-of-run-a" not in json.dumps(record)
    monkeypatch.setenv("LLORCH_LEASE_RUN", "token-of-run-a")
    with leases.acquire(key, tmp_path, wait=0, pool_root="/pool/a") as shared:
        assert shared.record["pid"] == holder.pid
    assert leases.is_held(tmp_path, key.key)  # releasing the borrowed lease frees nothing
    for other in ("token-of-run-b", ""):
        monkeypatch.setenv("LLORCH_LEASE_RUN", other)
        with pytest.raises(HarnessError, match=f"pid {holder.pid}"):
            leases.acquire(key, tmp_path, wait=0, pool_root="/pool/b")


def test_waiter_says_who_holds_then_gets_it(started, tmp_path: Path) -> None:
    # the first lets go only once the second says it waits (a fixed hold raced the
    # second's start-up on a busy host: it found the device free and never waited)
    first = _holder(started, tmp_path, "GPU-cccc", pool="/pool/a", hold="stdin")
    _wait_line(first, "HELD")
    second = _holder(started, tmp_path, "GPU-cccc", pool="/pool/b", wait=120, hold=0)
    lines = _wait_line(second, "⏳")
    assert first.stdin is not None
    first.stdin.write("release\n")
    first.stdin.flush()
    lines += _wait_line(second, "HELD")
    assert first.wait(timeout=30) == 0 and second.wait(timeout=30) == 0
    waiting = [ln for ln in lines if ln.startswith("⏳")]
    assert len(waiting) == 1 and f"held by pid {first.pid}" in waiting[0]
    assert "worker w-a" in waiting[0]


def test_waiter_times_out_with_one_line(started, tmp_path: Path) -> None:
    first = _holder(started, tmp_path, "GPU-dddd")
    _wait_line(first, "HELD")
    second = _holder(started, tmp_path, "GPU-dddd", wait=0.5, pool="/pool/b")
    assert second.wait(timeout=30) != 0
    assert second.stderr is not None and "is in use: held by pid" in second.stderr.read()


def test_sigkilled_holder_frees_the_device_at_once(started, tmp_path: Path) -> None:
    holder = _holder(started, tmp_path, "GPU-eeee")
    _wait_line(holder, "HELD")
    assert leases.is_held(tmp_path, "GPU-eeee")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    with leases.acquire(DeviceKey("cuda", 0, "GPU-eeee"), tmp_path, wait=0) as lease:
        assert lease.record["pid"] == os.getpid()


def test_a_worker_that_inherits_the_lock_keeps_it(started, tmp_path: Path) -> None:
    """The spawning process lets go; the worker (and what it leaves behind) still holds it."""
    key = DeviceKey("metal", 0)
    lease = leases.acquire(key, tmp_path, wait=0)
    child = subprocess.Popen(["sleep", "60"], pass_fds=(lease.fileno(),))
    started.append(child)
    lease.release()
    assert leases.is_held(tmp_path, "metal-0")
    with pytest.raises(HarnessError):
        leases.acquire(key, tmp_path, wait=0)
    child.kill()
    child.wait(timeout=10)
    assert not leases.is_held(tmp_path, "metal-0")


def test_one_process_shares_its_device(tmp_path: Path) -> None:
    key = DeviceKey("cuda", 0, "GPU-ffff")
    a = leases.acquire(key, tmp_path, wait=0)
    b = leases.acquire(key, tmp_path, wait=0)
    assert a.fileno() == b.fileno()
    a.release()
    a.release()  # idempotent: b still holds
    assert leases.is_held(tmp_path, key.key)
    b.release()
    assert not leases.is_held(tmp_path, key.key)


def test_device_key_follows_cuda_visible_devices() -> None:
    uuids = {0: "GPU-zero", 1: "GPU-one", 2: "GPU-two"}.get
    assert leases.device_key("cuda", 0, {}, uuids).uuid == "GPU-zero"
    assert leases.device_key("cuda", 0, {"CUDA_VISIBLE_DEVICES": "2,1"}, uuids).uuid == "GPU-two"
    assert leases.device_key("cuda", 1, {"CUDA_VISIBLE_DEVICES": "GPU-x,MIG-y/1"},
                             uuids).key == "MIG-y_1"
    assert leases.device_key("cuda", 3, {}, lambda _i: None).key == "cuda-3"
    assert leases.device_key("metal", 0, {}).key == "metal-0"
    assert leases.needs_lease("cuda") and not leases.needs_lease("cpu")


def test_options_resolve_and_refuse_bad_values(tmp_path: Path) -> None:
    assert leases.resolve_lease_dir(None, {}) == Path(leases.DEFAULT_LEASE_DIR)
    assert leases.resolve_lease_dir(None, {"LLORCH_LEASE_DIR": str(tmp_path)}) == tmp_path
    assert leases.resolve_lease_wait(None, {}) == leases.DEFAULT_LEASE_WAIT_S
    assert leases.resolve_lease_wait(None, {"LLORCH_LEASE_WAIT": "2.5"}) == 2.5
    assert leases.resolve_lease_wait("0", {}) == 0.0
    for bad in ("-1", "nan", "inf", "soon"):
        with pytest.raises(HarnessError, match="lease wait"):
            leases.resolve_lease_wait(bad, {})


def test_lease_dir_is_shared_and_never_a_symlink(tmp_path: Path) -> None:
    shared = tmp_path / "leases"
    leases.ensure_lease_dir(shared)
    assert oct(os.stat(shared).st_mode & 0o7777) == "0o1777"
    link = tmp_path / "link"
    link.symlink_to(shared)
    with pytest.raises(HarnessError, match="not a directory"):
        leases.acquire(DeviceKey("metal", 0), link, wait=0)


def test_garbage_records_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "metal-0@1.json").write_text("{not json")
    me = str(os.getuid())  # a record counts only when its file's owner is the user it names
    good = {"acquired_at": 5, "pid": 9, "user": me}
    (tmp_path / f"metal-0@{me}.json").write_text(json.dumps(good))
    assert leases.read_holder(tmp_path, "metal-0") == good
    assert "pid 9" in leases.describe_holder(leases.read_holder(tmp_path, "metal-0"))
    assert "unknown" in leases.describe_holder(None)


def test_ci_job_names_the_run() -> None:
    env = {"GITHUB_RUN_ID": "12", "GITHUB_REPOSITORY": "o/r", "GITHUB_JOB": "gate"}
    assert leases.ci_job(env) == "o/r run 12 job gate"
    assert leases.ci_job({"BUILDKITE_JOB_ID": "x"}) == "BUILDKITE_JOB_ID=x"
    assert leases.ci_job({}) is None


# ---------------------------------------------------------------- spawn and runs

FAKEWORKER = Path(__file__).with_name("fakeworker.py")
# Each run's first worker keeps the device until one run has said it waits for it (its own
# log or the other's): the runs surely meet, however late a busy host starts either.
RUN = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from llorch_harness.pool import procs, workers
    from llorch_harness.pool.paths import PoolPaths
    pool, lease_dir, bindir, out = PoolPaths.at(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    other = procs.pool_key(sys.argv[5])
    logs = (Path(out + ".log"), Path(sys.argv[6] + ".log"))  # ours, the other run's
    log = open(logs[0], "w", encoding="utf-8", buffering=1)
    lives, seen = [], []
    for i in range(2):
        h = workers.spawn_worker(pool, "cuda", "fake", worker="llorch", bin_dir=bindir, port=0,
                                 lease_dir=lease_dir, lease_wait=240, worker_id=f"w{i}",
                                 out=log)
        t0 = time.time()
        while i == 0 and time.time() < t0 + 240 and not any(
                "\u23f3" in p.read_text(encoding="utf-8") for p in logs if p.exists()):
            time.sleep(0.05)
        t1 = time.time()
        while time.time() < t1 + 0.6:  # while ours runs, the other pool's may not
            seen += [m.proc.pid for m in procs.marked_processes(other)]
            time.sleep(0.05)
        h.stop(grace=5)
        lives.append([t0, time.time()])
    json.dump({"lives": lives, "other_seen": seen}, open(out, "w"))
""")


@pytest.fixture
def gpu_pools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two pool roots with a model, a fake llorch-cuda-candled, a scripted nvidia-smi and
    one lease directory; nothing marked for either pool survives the test."""
    from llorch_harness.pool import procs, workers
    from llorch_harness.pool.catalog import ModelEntry, update_catalog
    from llorch_harness.pool.paths import PoolPaths
    from tests import fakesmi

    for k, v in fakesmi.install(tmp_path, {"gpus": [fakesmi.gpu(0)]}).items():
        monkeypatch.setenv(k, v)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "llorch-cuda-candled"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKEWORKER}" "$@"\n')
    exe.chmod(0o755)
    pools = []
    for name in ("a", "b"):
        paths = PoolPaths.at(tmp_path / f"pool-{name}")
        (paths.models_dir / "fake").mkdir(parents=True)
        (paths.models_dir / "fake" / "model.safetensors").write_bytes(b"\0" * 16)
        update_catalog(paths, lambda c: c.upsert(ModelEntry(
            id="fake", name="Fake", path=".test-models/fake", downloaded=True,
            backends=["cpu", "cuda"])))
        pools.append(paths)
    yield pools, bindir, tmp_path / "leases"
    for paths in pools:
        workers.stop_all(paths, grace=1.0)
        workers.reap_orphans(paths, grace=1.0)
        assert not procs.marked_processes(procs.pool_key(paths.root))


def test_two_runs_never_share_a_gpu(started, gpu_pools, tmp_path: Path) -> None:
    """Two runs with different pool roots, started together, each spawning and stopping
    workers on cuda:0: no worker of one is alive while a worker of the other is."""
    pools, bindir, lease_dir = gpu_pools
    outs = [tmp_path / f"lives-{i}.json" for i in range(2)]
    runs = []
    for paths, out in zip(pools, outs, strict=True):
        other = pools[1] if paths is pools[0] else pools[0]
        other_out = outs[1] if out is outs[0] else outs[0]
        p = subprocess.Popen([sys.executable, "-c", RUN, str(paths.root), str(lease_dir),
                              str(bindir), str(out), str(other.root), str(other_out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(p)
        runs.append(p)
    for p in runs:
        _stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
    texts = [Path(f"{o}.log").read_text(encoding="utf-8") for o in outs]
    ra, rb = (json.loads(o.read_text()) for o in outs)
    assert ra["other_seen"] == [] and rb["other_seen"] == []
    a, b = ra["lives"], rb["lives"]
    assert len(a) == len(b) == 2
    for s1, e1 in a:
        for s2, e2 in b:
            assert e1 <= s2 or e2 <= s1, f"workers overlapped: {a} vs {b}"
    waits = [ln for t in texts for ln in t.splitlines() if ln.startswith("⏳")]
    assert waits and all("device cuda:0 (GPU-fake-0000): held by pid" in w for w in waits)


def test_cli_spawn_holds_the_gpu_until_the_worker_stops(gpu_pools) -> None:
    """`worker spawn` exits; its worker keeps the lease; another pool's spawn fails naming
    it; `worker stop` frees the device for the other pool at once."""
    pools, bindir, lease_dir = gpu_pools

    def pool_cli(paths, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llorch_harness.cli.pool_main", *args, "--pool-root",
             str(paths.root)], capture_output=True, text=True, timeout=120)

    spawn = ("worker", "spawn", "cuda", "--model", "fake", "--llorch-bin-dir", str(bindir),
             "--port", "0", "--lease-dir", str(lease_dir))
    first = pool_cli(pools[0], *spawn, "--lease-wait", "0", "--json")
    assert first.returncode == 0, first.stderr
    worker_pid = json.loads(first.stdout)["pid"]
    listed = pool_cli(pools[0], "leases", "--json", "--lease-dir", str(lease_dir))
    [held] = json.loads(listed.stdout)["leases"]
    assert held["held"] and held["key"] == "GPU-fake-0000"
    assert held["holder"]["worker_pid"] == worker_pid
    assert held["holder"]["pool_root"] == str(pools[0].root)
    second = pool_cli(pools[1], *spawn, "--lease-wait", "0.5")
    assert second.returncode == 1
    errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "device cuda:0 (GPU-fake-0000) is in use" in errors[0]
    assert f"worker worker-cuda-0 (pid {worker_pid})" in errors[0]
    assert not (pools[1].workers_dir / "worker-cuda-0.json").exists()
    assert pool_cli(pools[0], "worker", "stop", "worker-cuda-0").returncode == 0
    third = pool_cli(pools[1], *spawn, "--lease-wait", "0")
    assert third.returncode == 0, third.stderr
    text = pool_cli(pools[1], "leases", "--lease-dir", str(lease_dir)).stdout
    assert "🔒 cuda:0 (GPU-fake-0000): held by" in text and str(pools[1].root) in text
    assert pool_cli(pools[1], "worker", "stop", "worker-cuda-0").returncode == 0
    assert not leases.is_held(lease_dir, "GPU-fake-0000")
