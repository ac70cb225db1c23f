"""Worker spawn/list/stop/logs/reap against real processes on real ports.

Most tests use tests/fakeworker.py installed as `llorch-cpu-candled` behind a
shell wrapper (so the harness finds and hashes a real executable); the
reference-worker tests run when that module exists.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from llorch_harness.errors import HarnessError
from llorch_harness.pool import procs, workers
from llorch_harness.pool.catalog import ModelEntry, update_catalog
from llorch_harness.pool.paths import PoolPaths

FAKEWORKER = Path(__file__).with_name("fakeworker.py")
LLORCH_POOL = Path(sys.executable).parent / "llorch-pool"
CLI_TIMEOUT = 90  # anti-hang only


def _register(paths: PoolPaths, model_id: str, *, downloaded: bool = True,
              backends: list[str] | None = None) -> None:
    d = paths.models_dir / model_id
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text('{"model_type": "qwen2"}')
    (d / "model.safetensors").write_bytes(b"\0" * 16)
    entry = ModelEntry(id=model_id, name=f"Fake {model_id}", path=f".test-models/{model_id}",
                       downloaded=downloaded, backends=backends or ["cpu"])
    update_catalog(paths, lambda c: c.upsert(entry))


@pytest.fixture
def pool(tmp_path: Path):
    """A pool with models; after the test, nothing marked for this pool may survive."""
    paths = PoolPaths.at(tmp_path / "pool")
    paths.root.mkdir()
    _register(paths, "fake")
    _register(paths, "fake-undl", downloaded=False)
    yield paths
    leftover = procs.marked_processes(procs.pool_key(paths.root))
    workers.stop_all(paths, grace=1.0)
    workers.reap_orphans(paths, grace=1.0)
    assert not procs.marked_processes(procs.pool_key(paths.root))
    assert not leftover, f"test left marked processes: {[m.proc.pid for m in leftover]}"


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    exe = d / "llorch-cpu-candled"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKEWORKER}" "$@"\n')
    exe.chmod(0o755)
    return d


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LLORCH_POOL), *args], capture_output=True, text=True, timeout=CLI_TIMEOUT,
        env=env or dict(os.environ), stdin=subprocess.DEVNULL, check=False,
    )


def spawn(pool: PoolPaths, bin_dir: Path, mode: str = "", **kw):
    kw.setdefault("port", 0)
    kw.setdefault("ready_timeout", 30.0)
    env = {"FAKEWORKER_MODE": mode, **kw.pop("extra_env", {})}
    return workers.spawn_worker(pool, "cpu", "fake", bin_dir=bin_dir, extra_env=env, **kw)


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), res.stderr
    return lines[0]


# ------------------------------------------------------------------ happy path

def test_cli_spawn_list_logs_stop(pool: PoolPaths, bin_dir: Path) -> None:
    res = cli("worker", "spawn", "cpu", "--model", "fake", "--port", "0",
              "--llorch-bin-dir", str(bin_dir), "--pool-root", str(pool.root))
    assert res.returncode == 0, res.stderr
    for label in ("ID: worker-cpu-0", "Backend: cpu", "Model: Fake fake (fake)", "GPU: 0",
                  "Port: ", "PID: ", "Endpoint: http://localhost:", "Logs: "):
        assert label in res.stdout, res.stdout
    rec = json.loads((pool.workers_dir / "worker-cpu-0.json").read_text())
    for key in ("worker_id", "pid", "backend", "model_id", "port", "started_at", "create_time",
                "cmdline", "binary_path", "binary_sha256", "log_path", "uri", "vram_bytes",
                "gpu", "pool_root", "harness_version", "ready_seconds"):
        assert key in rec, key
    pid, port = rec["pid"], rec["port"]
    assert rec["cmdline"][1:] == ["--worker-id", "worker-cpu-0", "--model",
                                  str(pool.models_dir / "fake"), "--port", str(port),
                                  "--callback-url", rec["cmdline"][-1]]
    # detached: the CLI has exited, the worker lives on in its own session with our marker
    proc = psutil.Process(pid)
    assert os.getsid(pid) == pid
    assert proc.environ()[procs.MARKER_WORKER_ENV] == "worker-cpu-0"
    with httpx.Client(trust_env=False, timeout=5) as c:
        assert c.get(f"{rec['uri']}/health").json()["status"] == "healthy"
        body = c.post(f"{rec['uri']}/execute", json={"job_id": "j", "prompt": "hi",
                                                     "max_tokens": 2}).text
    assert '"type": "end"' in body

    listed = json.loads(cli("worker", "list", "--json", "--pool-root", str(pool.root)).stdout)
    (row,) = listed["workers"]
    assert (row["worker_id"], row["status"], row["health"], row["pid"]) == (
        "worker-cpu-0", "running", "healthy", pid)
    assert row["uptime_s"] >= 0 and listed["orphans"] == []
    table = cli("worker", "list", "--pool-root", str(pool.root)).stdout
    assert "worker-cpu-0" in table and "running" in table

    logs = cli("worker", "logs", "worker-cpu-0", "-n", "2", "--pool-root", str(pool.root))
    assert logs.returncode == 0 and len(logs.stdout.splitlines()) == 2

    stop = cli("worker", "stop", "worker-cpu-0", "--json", "--pool-root", str(pool.root))
    assert stop.returncode == 0, stop.stderr
    (result,) = json.loads(stop.stdout)
    assert result["step"] == "sigint" and result["port_free"] is True
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (pool.workers_dir / "worker-cpu-0.json").exists()
    assert "initiating graceful shutdown" in (pool.workers_dir / "worker-cpu-0.log").read_text()
    assert procs.port_is_free(port)


def test_handle_is_a_context_manager_that_stops_on_exceptions(pool, bin_dir) -> None:
    with pytest.raises(RuntimeError, match="boom"), spawn(
        pool, bin_dir, extra_env={"FAKEWORKER_VRAM": "12345"}
    ) as h:
        held = h
        assert h.worker_id == "worker-cpu-0" and h.backend == "cpu" and h.model_id == "fake"
        assert h.vram_bytes == 12345 and h.ready_seconds > 0 and h.gpu == 0
        assert h.uri == f"http://127.0.0.1:{h.port}" and h.record_path.exists()
        assert h.binary_path == bin_dir / "llorch-cpu-candled" and len(h.binary_sha256) == 64
        assert "HTTP server listening" in h.log_tail(5)
        raise RuntimeError("boom")
    assert held._stopped is not None and held._stopped.step == "sigint"
    assert held.stop().step == "sigint"  # idempotent
    assert not held.record_path.exists() and held.poll() is not None


def test_default_port_is_8000_plus_gpu(pool, bin_dir) -> None:
    port = procs.free_port()
    if port <= 8000:
        pytest.skip("the OS handed out a port below 8000")
    gpu = port - 8000
    res = cli("worker", "spawn", "cpu", "--model", "fake", "--gpu", str(gpu),
              "--llorch-bin-dir", str(bin_dir), "--pool-root", str(pool.root))
    assert res.returncode == 0, res.stderr
    rec = json.loads((pool.workers_dir / f"worker-cpu-{gpu}.json").read_text())
    assert rec["port"] == port and rec["gpu"] == gpu
    assert workers.stop_worker(pool, f"worker-cpu-{gpu}", grace=5).step == "sigint"


def test_slow_bind_waits_for_health_after_callback(pool, bin_dir) -> None:
    with spawn(pool, bin_dir, "slow_bind") as h:
        assert h.ready_seconds >= 0.9  # callback came ~1 s before the port opened
        with httpx.Client(trust_env=False) as c:
            assert c.get(f"{h.uri}/health").status_code == 200


# ------------------------------------------------------------------ start-up failures

def test_crash_at_start_reported_fast_with_log_tail(pool, bin_dir) -> None:
    with pytest.raises(workers.WorkerStartError) as info:
        spawn(pool, bin_dir, "crash_at_start")
    reported = time.time()
    err = info.value
    assert err.exit_status == 3 and "exited with status 3" in err.one_line()
    tail = err.log_tail.splitlines()
    assert len(tail) == 40 and "panicked" in err.log_tail and "loading shard 49" in err.log_tail
    crashed = float(re.search(r"fake crash at ([\d.]+)", err.log_tail).group(1))
    lag = reported - crashed
    print(f"crash-to-report lag: {lag * 1000:.1f} ms")
    assert lag < 5.0  # generous anti-hang bound; the figure goes to the benchmark
    assert not (pool.workers_dir / "worker-cpu-0.json").exists()


def test_crash_at_start_cli_prints_tail_and_one_error_line(pool, bin_dir) -> None:
    env = dict(os.environ, FAKEWORKER_MODE="crash_at_start")
    res = cli("worker", "spawn", "cpu", "--model", "fake", "--port", "0",
              "--llorch-bin-dir", str(bin_dir), "--pool-root", str(pool.root), env=env)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: worker worker-cpu-0 exited with status 3"), res.stderr
    assert "  | thread 'main' panicked" in res.stderr
    assert not list(pool.workers_dir.glob("*.json"))


def test_never_ready_is_stopped_at_the_timeout(pool, bin_dir) -> None:
    t0 = time.monotonic()
    with pytest.raises(workers.WorkerStartError) as info:
        spawn(pool, bin_dir, "never_ready", ready_timeout=2.0)
    assert time.monotonic() - t0 < 30  # anti-hang
    assert "not ready within 2 s" in info.value.reason
    assert "Loading forever" in info.value.log_tail
    assert not (pool.workers_dir / "worker-cpu-0.json").exists()
    assert not procs.marked_processes(procs.pool_key(pool.root))


def test_unhealthy_worker_is_not_ready(pool, bin_dir) -> None:
    with pytest.raises(workers.WorkerStartError) as info:
        # a generous timeout: on a loaded machine the fake worker may bind late, and the
        # reason must be its /health answer, not a port that was never reached
        spawn(pool, bin_dir, "unhealthy", ready_timeout=8.0)
    assert "/health status 'unhealthy'" in info.value.reason


# ------------------------------------------------------------------ stopping

def test_worker_ignoring_sigint_and_sigterm_is_killed(pool, bin_dir) -> None:
    h = spawn(pool, bin_dir, "ignore_signals")
    result = h.stop(grace=0.5)
    assert result.step == "sigkill" and result.port_free
    assert not procs.process_alive(h.pid) and not h.record_path.exists()


def _grandchildren(pool: PoolPaths, wid: str, worker_pid: int) -> list[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [m.proc for m in procs.marked_processes(procs.pool_key(pool.root), wid)
                 if m.proc.pid != worker_pid]
        # only once it has exec'd: between fork and exec it is not yet in its own session
        if found and all("time.sleep(300)" in " ".join(p.cmdline()) for p in found):
            return [p.pid for p in found]
        time.sleep(0.05)
    raise AssertionError("the detached grandchild never appeared")


def test_detached_child_is_stopped_with_its_worker(pool, bin_dir) -> None:
    h = spawn(pool, bin_dir, "spawn_detached_child")
    (child,) = _grandchildren(pool, h.worker_id, h.pid)
    assert os.getsid(child) != os.getsid(h.pid)  # really outside the worker's session/group
    assert h.stop(grace=5).step == "sigint"
    assert not procs.process_alive(child)
    assert not procs.marked_processes(procs.pool_key(pool.root))


def test_grandchild_of_a_dead_worker_is_found_and_stopped(pool, bin_dir) -> None:
    h = spawn(pool, bin_dir, "spawn_detached_child,exit_after_ready",
              extra_env={"FAKEWORKER_EXIT_AFTER": "0.3"})
    (child,) = _grandchildren(pool, h.worker_id, h.pid)
    deadline = time.monotonic() + 10
    while h.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    (row,) = workers.list_workers(pool)
    assert row.status == "dead"
    assert child in [p.pid for p in workers.find_orphans(pool)]  # reparented, own session
    assert workers.stop_worker(pool, h.worker_id, grace=2).step == "already_dead"
    assert not procs.process_alive(child) and not h.record_path.exists()


@pytest.mark.parametrize("variant", ["create_time_differs", "no_marker"])
def test_stale_record_is_removed_without_signalling(pool, variant) -> None:
    # create_time_differs: the stranger even carries this worker's marker, so only the
    # create time can tell it apart; no_marker: same create time, but no marker
    marker = {procs.MARKER_WORKER_ENV: "worker-cpu-0", procs.MARKER_POOL_ENV: str(pool.root)}
    env = dict(os.environ, **(marker if variant == "create_time_differs" else {}))
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True, env=env)
    try:
        ct = psutil.Process(stranger.pid).create_time()
        pool.workers_dir.mkdir(parents=True, exist_ok=True)
        rec = {"worker_id": "worker-cpu-0", "pid": stranger.pid, "backend": "cpu",
               "model_id": "fake", "port": procs.free_port(), "started_at": workers.utc_now(),
               "create_time": ct - 1000 if variant == "create_time_differs" else ct,
               "pool_root": procs.pool_key(pool.root)}
        workers.write_record(pool.workers_dir / "worker-cpu-0.json", rec)
        listed = json.loads(cli("worker", "list", "--json", "--pool-root", str(pool.root)).stdout)
        assert listed["workers"][0]["status"] == "stale"
        res = cli("worker", "stop", "worker-cpu-0", "--pool-root", str(pool.root))
        assert res.returncode == 0, res.stderr
        assert "stale record" in res.stdout
        assert stranger.poll() is None  # not signalled
        assert psutil.Process(stranger.pid).status() != psutil.STATUS_ZOMBIE
        assert not (pool.workers_dir / "worker-cpu-0.json").exists()
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize("argv_tail", [["--worker-id", "worker-metal-0"],
                                       ["--worker-id=worker-metal-0"], []],
                         ids=["flag-value", "flag-equals", "no-worker-id"])
def test_rust_style_record_identified_by_started_at(pool, argv_tail) -> None:
    """Records written by the Rust llorch-pool have only the CP3 fields: the process must
    be born just before started_at and carry the contract's `--worker-id ID` (a process
    that merely started at the right time is not proof, issue 20 #4)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                *argv_tail], start_new_session=True)
    try:
        deadline = time.monotonic() + 10  # between fork and exec the argv is the parent's
        while time.monotonic() < deadline and "time.sleep(60)" not in " ".join(
                psutil.Process(sleeper.pid).cmdline()):
            time.sleep(0.005)
        pool.workers_dir.mkdir(parents=True, exist_ok=True)
        base = {"worker_id": "worker-metal-0", "pid": sleeper.pid, "backend": "metal",
                "model_id": "fake", "port": 8000}
        path = pool.workers_dir / "worker-metal-0.json"
        path.write_text(json.dumps({**base, "started_at": workers.utc_now()}))
        expected = "running" if argv_tail else "stale"
        assert workers.list_workers(pool, check_health_now=False)[0].status == expected
        path.write_text(json.dumps({**base, "started_at": "2020-01-01T00:00:00.123456789+00:00"}))
        assert workers.list_workers(pool, check_health_now=False)[0].status == "stale"
    finally:
        sleeper.kill()
        sleeper.wait()


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("case", ["unknown_backend", "not_in_catalog", "not_downloaded",
                                  "backend_unsupported", "port_in_use", "missing_binary"])
def test_bad_spawn_input_is_one_line_and_starts_nothing(pool, bin_dir, tmp_path, case) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = dict(os.environ, PATH=f"{empty}:/usr/bin:/bin")
    env.pop("LLORCH_BIN_DIR", None)
    args = {"backend": "cpu", "model": "fake", "bin": str(bin_dir), "port": "0"}
    expect = ""
    listener = None
    if case == "unknown_backend":
        args["backend"], expect = "gpu9", "unknown backend 'gpu9' (known: cpu, cuda, metal)"
    elif case == "not_in_catalog":
        # not a model any command knows: no hint to download it (that would fail too)
        args["model"], expect = "nope", "unknown model id 'nope' (known: "
    elif case == "not_downloaded":
        args["model"] = "fake-undl"
        expect = ("model fake-undl is not downloaded (Run: llorch-pool models download "
                  f"fake-undl --pool-root {pool.root})")
    elif case == "backend_unsupported":
        args["backend"], expect = "cuda", "model fake doesn't support the cuda backend"
    elif case == "port_in_use":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        args["port"] = str(listener.getsockname()[1])
        expect = f"port {args['port']} is already in use"
    elif case == "missing_binary":
        args["bin"], expect = str(empty), "no llorch-cpu-candled or llorch-candled binary"
    try:
        res = cli("worker", "spawn", args["backend"], "--model", args["model"], "--port",
                  args["port"], "--llorch-bin-dir", args["bin"], "--pool-root", str(pool.root),
                  env=env)
    finally:
        if listener is not None:
            listener.close()
    assert res.returncode != 0
    line = one_error_line(res)
    assert expect in line, line
    if case == "missing_binary":
        assert str(empty) in line and "PATH" in line
    assert "Spawning" not in res.stdout
    assert not list(pool.workers_dir.glob("*.json")) and not list(pool.workers_dir.glob("*.log"))


def test_second_spawn_of_a_live_id_is_refused(pool, bin_dir) -> None:
    with spawn(pool, bin_dir) as h:
        res = cli("worker", "spawn", "cpu", "--model", "fake", "--port", "0",
                  "--llorch-bin-dir", str(bin_dir), "--pool-root", str(pool.root))
        assert res.returncode == 1
        assert f"worker worker-cpu-0 is already running (pid {h.pid}" in one_error_line(res)
        assert workers.list_workers(pool)[0].health == "healthy"
        assert json.loads(h.record_path.read_text())["pid"] == h.pid


def test_stop_and_logs_of_unknown_worker(pool) -> None:
    res = cli("worker", "stop", "worker-cpu-7", "--pool-root", str(pool.root))
    # docs/workers.md's rule: what is not running needs no stop, and that is success
    assert res.returncode == 0 and "worker-cpu-7 is not running" in res.stdout, res.stderr
    res = cli("worker", "logs", "worker-cpu-7", "--pool-root", str(pool.root))
    assert res.returncode == 1 and "no log for worker worker-cpu-7" in one_error_line(res)
    res = cli("worker", "stop", "../x", "--pool-root", str(pool.root))
    assert res.returncode == 2 and "invalid worker id" in one_error_line(res)


# ------------------------------------------------------------------ logs, orphans, markers

def test_log_rotation_keeps_previous_log(pool, bin_dir) -> None:
    first = spawn(pool, bin_dir)
    first.stop(grace=5)
    second = spawn(pool, bin_dir)
    try:
        log = pool.workers_dir / "worker-cpu-0.log"
        assert f'"pid": {first.pid}' in (log.with_name("worker-cpu-0.log.1")).read_text()
        assert f'"pid": {second.pid}' in log.read_text()
        assert f'"pid": {first.pid}' not in log.read_text()
    finally:
        second.stop(grace=5)


def test_follow_logs_until_the_worker_is_gone(pool, bin_dir) -> None:
    h = spawn(pool, bin_dir)
    out = io.StringIO()
    t = threading.Thread(target=workers.follow_logs, args=(pool, h.worker_id, 3),
                         kwargs={"out": out, "poll": 0.05})
    t.start()
    deadline = time.monotonic() + 60  # anti-hang: the tail is printed once it follows
    while not out.getvalue() and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert out.getvalue(), "follow_logs printed no tail"
    h.stop(grace=5)
    t.join(timeout=20)
    assert not t.is_alive()
    text = out.getvalue()
    assert "initiating graceful shutdown" in text and "is not running" in text


def test_orphan_is_listed_and_reaped(pool, bin_dir) -> None:
    h = spawn(pool, bin_dir)
    h.record_path.unlink()  # the record is lost (e.g. a crashed CLI or a wiped .runtime)
    listed = json.loads(cli("worker", "list", "--json", "--pool-root", str(pool.root)).stdout)
    assert listed["workers"] == []
    assert [o["pid"] for o in listed["orphans"]] == [h.pid]
    assert "orphan" in cli("worker", "list", "--pool-root", str(pool.root)).stdout
    res = cli("worker", "reap", "--grace", "5", "--pool-root", str(pool.root))
    assert res.returncode == 0 and str(h.pid) in res.stdout
    assert not procs.process_alive(h.pid) and workers.find_orphans(pool) == []


def test_session_marker_is_passed_through(pool, bin_dir) -> None:
    session = f"test-{uuid.uuid4().hex[:8]}"
    with spawn(pool, bin_dir, extra_env={procs.SESSION_ENV: session}) as h:
        found = procs.marked_processes(session=session)
        assert [m.proc.pid for m in found] == [h.pid]
        assert found[0].pool_root == procs.pool_key(pool.root)
        assert h.record.session == session


_DIE_WITH_PARENT = """
import sys, time
from llorch_harness.pool.paths import PoolPaths
from llorch_harness.pool.workers import spawn_worker
h = spawn_worker(PoolPaths.at(sys.argv[1]), "cpu", "fake", port=0, bin_dir=sys.argv[2],
                 die_with_parent=True, ready_timeout=30)
print(h.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_die_with_parent_worker_dies_when_its_owner_is_killed(pool, bin_dir) -> None:
    owner = subprocess.Popen([sys.executable, "-c", _DIE_WITH_PARENT, str(pool.root),
                              str(bin_dir)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(owner.stdout.readline())
        assert procs.process_alive(pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        deadline = time.monotonic() + 10
        while procs.process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not procs.process_alive(pid)
        assert workers.list_workers(pool)[0].status == "dead"
    finally:
        owner.kill()
        owner.wait()


# ------------------------------------------------------------------ reference worker

def _refworker_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in (
        "llorch_harness.lab.refworker.__main__", "llorch_harness.lab.refworker.engine",
        "llorch_harness.lab.tinymodel"))


@pytest.mark.skipif(not _refworker_available(),
                    reason="reference worker (refworker/__main__.py, engine.py, tinymodel) "
                           "not in this tree yet")
def test_reference_worker_spawn_execute_list_stop(pool) -> None:
    from llorch_harness.lab.tinymodel import build_tiny_model

    build_tiny_model(pool.models_dir / "tiny-qwen")
    entry = ModelEntry(id="tiny-qwen", name="Tiny Qwen2", path=".test-models/tiny-qwen",
                       downloaded=True, backends=["cpu", "cuda", "metal"], architecture="qwen")
    update_catalog(pool, lambda c: c.upsert(entry))
    with workers.spawn_worker(pool, "cpu", "tiny-qwen", worker="reference", port=0,
                              ready_timeout=120) as h:
        assert h.command[:3] == [sys.executable, "-m", "llorch_harness.lab.refworker"]
        assert h.binary_path.name == "__main__.py" and len(h.binary_sha256) == 64
        with httpx.Client(trust_env=False, timeout=60) as c:
            assert c.get(f"{h.uri}/health").json()["status"] == "healthy"
            body = c.post(f"{h.uri}/execute", json={"job_id": "j1", "prompt": "Hello",
                                                    "max_tokens": 3, "temperature": 0}).text
        assert '"type":"end"' in body.replace(" ", "")
        (row,) = workers.list_workers(pool)
        assert row.status == "running" and row.health == "healthy"
        assert workers.worker_logs(pool, h.worker_id, 5)
    assert h.stop().step == "sigint" and not h.record_path.exists()
    assert not procs.process_alive(h.pid)


def test_reference_worker_refuses_gpu_backends(pool) -> None:
    from llorch_harness.pool.torchdevice import device_usable

    if device_usable("cuda:0") is None:
        pytest.skip("torch sees cuda:0 here: the reference worker runs on it (torch engine)")
    _register(pool, "multi", backends=["cpu", "cuda"])
    with pytest.raises(HarnessError, match="reference worker on cuda needs torch to see "
                       "cuda:0: torch .*sees no CUDA device"):
        workers.spawn_worker(pool, "cuda", "multi", worker="reference")


# ------------------------------------------------------------------ issue 20 #15


@pytest.mark.parametrize("field,value", [("uri", "http://[::1"), ("uri", "ftp://x"),
                                         ("uri", 12), ("port", 99999), ("port", -1),
                                         ("port", True), ("port", "8000")])
def test_live_worker_with_a_hostile_record_field(pool, bin_dir, field, value) -> None:
    """A record with port 99999 or -1 crashed `worker stop` in bind() and kept the record;
    a uri `http://[::1` crashed `worker list` and `status` (httpx.InvalidURL)."""
    h = spawn(pool, bin_dir)
    rec_path = pool.workers_dir / f"{h.worker_id}.json"
    rec = json.loads(rec_path.read_text())
    rec[field] = value
    rec_path.write_text(json.dumps(rec))
    for args in (("worker", "list"), ("worker", "list", "--json"), ("status",),
                 ("status", "--json")):
        r = cli(*args, "--pool-root", str(pool.root))
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)
    (row,) = workers.list_workers(pool)
    assert row.status == "running"
    if field == "uri" and isinstance(value, str):
        assert row.health == "-" and "unusable worker uri" in row.note, row
    else:
        assert row.health == "healthy" or field == "port", row
    r = cli("worker", "stop", h.worker_id, "--grace", "5", "--pool-root", str(pool.root))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert not rec_path.exists()
    assert not procs.process_alive(h.pid) or psutil.Process(h.pid).status() == "zombie"


@pytest.mark.parametrize("port", [99999, -1, 0, "x"])
def test_dead_worker_record_with_a_bad_port_is_removed_by_stop(pool, port) -> None:
    pool.workers_dir.mkdir(parents=True, exist_ok=True)
    rec = pool.workers_dir / "worker-cpu-0.json"
    rec.write_text(json.dumps({"worker_id": "worker-cpu-0", "pid": 4194305, "port": port,
                               "create_time": 1.0, "started_at": "2020-01-01T00:00:00Z"}))
    r = cli("worker", "stop", "worker-cpu-0", "--pool-root", str(pool.root))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "was already dead" in r.stdout and not rec.exists()


# ------------------------------------------------------------------ issue 13: typed record

def test_spawned_record_reads_back_byte_for_byte(pool, bin_dir) -> None:
    """What spawn writes is the CP3 JSON it always was: read into a WorkerRecord and
    written again, the file is unchanged (key order, nulls, the ready fields)."""
    h = spawn(pool, bin_dir)
    text = h.record_path.read_text()
    rec = workers.read_record(h.record_path)
    assert json.dumps(rec.to_json(), indent=2) + "\n" == text
    on_disk = json.loads(text)
    assert list(on_disk)[:6] == ["worker_id", "pid", "backend", "model_id", "port", "started_at"]
    assert list(on_disk)[-1] == "callback_uri" and on_disk["ready_seconds"] > 0
    assert (rec.pid, rec.port, rec.uri) == (h.pid, h.port, h.uri) and not rec.starting
    h.stop(grace=5)
