"""Process identity, the stop ladder, ports, callback listener, backend table and detection."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from llorch_harness.errors import HarnessError
from llorch_harness.pool import backends, procs
from llorch_harness.pool.readiness import CallbackServer


@pytest.fixture
def started():
    """Processes started by a test; killed (by group) and reaped afterwards, even on failure."""
    mine: list[subprocess.Popen[bytes]] = []
    yield mine
    for p in mine:
        if p.poll() is None:
            try:
                os.killpg(p.pid, 9)
            except OSError:
                p.kill()
        p.wait(timeout=10)


def _wait_exec(p: subprocess.Popen[bytes], name: str) -> None:
    """Between fork and exec a child still shows its parent's environment and command."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            proc = psutil.Process(p.pid)  # comm changes first; args and env come a bit later
            if proc.name() == name and proc.cmdline() and proc.environ():
                return
        except psutil.Error:
            pass
        time.sleep(0.005)
    raise AssertionError(f"{name} never exec'd")


def _marked_env(worker: str, pool: str, session: str | None = None) -> dict[str, str]:
    env = dict(os.environ, **{procs.MARKER_WORKER_ENV: worker, procs.MARKER_POOL_ENV: pool})
    if session:
        env[procs.SESSION_ENV] = session
    return env


def test_identify_alive_reused_gone(started, tmp_path: Path) -> None:
    pool = str(tmp_path)
    p = subprocess.Popen(["sleep", "60"], env=_marked_env("w-1", pool),
                         start_new_session=True)
    started.append(p)
    _wait_exec(p, "sleep")
    ct = psutil.Process(p.pid).create_time()
    assert procs.identify(p.pid, create_time=ct, worker_id="w-1", pool_root=pool)[0] == "alive"
    assert procs.identify(p.pid, create_time=ct - 50, worker_id="w-1",
                          pool_root=pool)[0] == "reused"
    assert procs.identify(p.pid, create_time=ct, worker_id="w-2", pool_root=pool)[0] == "reused"
    assert procs.identify(p.pid, create_time=ct, worker_id="w-1",
                          pool_root=pool + "x")[0] == "reused"
    p.kill()
    p.wait()
    assert procs.identify(p.pid, create_time=ct, worker_id="w-1", pool_root=pool)[0] == "gone"


def test_zombie_counts_as_gone(started) -> None:
    p = subprocess.Popen(["true"])
    started.append(p)
    proc = psutil.Process(p.pid)
    deadline = time.monotonic() + 10
    while proc.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert procs.is_gone(proc)


def test_marked_processes_narrowed_by_pool_worker_session(started, tmp_path: Path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    s1, s2 = f"s1-{tmp_path.name}-{os.getpid()}", f"s2-{tmp_path.name}-{os.getpid()}"
    pa = subprocess.Popen(["sleep", "60"], env=_marked_env("w-1", a, s1))
    pb = subprocess.Popen(["sleep", "60"], env=_marked_env("w-2", b, s2))
    started += [pa, pb]
    _wait_exec(pa, "sleep")
    _wait_exec(pb, "sleep")
    assert {m.proc.pid for m in procs.marked_processes(a)} == {pa.pid}
    assert {m.proc.pid for m in procs.marked_processes(b, "w-2")} == {pb.pid}
    assert procs.marked_processes(a, "w-2") == []
    (m,) = procs.marked_processes(session=s2)
    assert (m.proc.pid, m.worker_id, m.pool_root, m.session) == (pb.pid, "w-2", b, s2)


def test_ladder_kills_children_of_a_parent_that_died_first(started) -> None:
    """sh dies on SIGINT; its background sleeps ignore SIGINT (POSIX) and are reparented:
    they were collected before the first signal, so SIGTERM still reaches them."""
    sh = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & echo ready; wait"],
                          start_new_session=True, stdout=subprocess.PIPE)
    started.append(sh)
    assert sh.stdout is not None and sh.stdout.readline().strip() == b"ready"
    root = psutil.Process(sh.pid)
    deadline = time.monotonic() + 10  # both exec'd: SIGINT is ignored from then on
    while time.monotonic() < deadline:
        kids = root.children(recursive=True)
        if len(kids) == 2 and all(k.name() == "sleep" for k in kids):
            break
        time.sleep(0.005)
    assert len(kids) == 2
    res = procs.stop_ladder(root, grace=0.5, term_wait=3)
    assert res.step == "sigterm" and not res.survivors
    assert all(procs.is_gone(k) for k in kids)


def test_ladder_reports_sigint_and_already_dead(started) -> None:
    p = subprocess.Popen(["sleep", "60"], start_new_session=True)
    started.append(p)
    proc = psutil.Process(p.pid)
    assert procs.stop_ladder(proc, grace=5).step == "sigint"
    assert procs.stop_ladder(proc, grace=5).step == "already_dead"


def test_never_signals_own_process_group() -> None:
    assert procs._safe_pgid(os.getpid()) is None
    assert procs.collect_tree(psutil.Process(os.getpid()))[1] == []


def test_port_checks() -> None:
    port = procs.free_port()
    assert procs.port_is_free(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert procs.port_accepts(port) and not procs.port_is_free(port)
        assert not procs.wait_port_free(port, timeout=0.2)
    assert procs.wait_port_free(port, timeout=3)


def test_callback_server_accepts_contract_payload_and_refuses_others() -> None:
    with CallbackServer("worker-cpu-0") as cb, httpx.Client(trust_env=False, timeout=5) as c:
        bad = c.post(cb.url, json={"worker_id": "worker-cpu-9", "vram_bytes": 1, "uri": "u"})
        assert bad.status_code == 400 and "expected 'worker-cpu-0'" in cb.problems[0]
        assert c.post(cb.url, content=b"not json").status_code == 400
        ok = c.post(cb.url, json={"worker_id": "worker-cpu-0", "vram_bytes": 7,
                                  "uri": "http://localhost:8000"})
        assert ok.status_code == 200
        assert cb.received is not None and cb.received.payload["vram_bytes"] == 7


# ------------------------------------------------------------------ backends

def test_backend_command_lines_follow_the_contract() -> None:
    common = ["--worker-id", "w", "--model", "/m", "--port", "8001", "--callback-url", "u"]
    kw = {"worker_id": "w", "model": "/m", "port": 8001, "callback_url": "u", "gpu": 1}
    assert backends.get_backend("cpu").command("b", **kw) == ["b", *common]
    assert backends.get_backend("cuda").command("b", **kw) == ["b", *common, "--cuda-device", "1"]
    assert backends.get_backend("metal").command("b", **kw) == [
        "b", *common, "--metal-device", "1"]
    with pytest.raises(HarnessError, match="unknown backend 'rocm'"):
        backends.get_backend("rocm")


def _exe(d: Path, name: str, body: str = "exit 0") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(f"#!/bin/sh\n{body}\n")
    p.chmod(0o755)
    return p


def test_find_binary_order_and_older_name(tmp_path: Path, monkeypatch) -> None:
    on_path, bin_dir = tmp_path / "path", tmp_path / "bin"
    monkeypatch.setenv("PATH", str(on_path))
    monkeypatch.delenv(backends.BIN_DIR_ENV, raising=False)
    old = _exe(on_path, "llorch-candled")
    assert backends.find_binary("cpu") == old  # older name still found
    new = _exe(bin_dir, "llorch-cpu-candled")
    assert backends.find_binary("cpu", bin_dir) == new  # bin dir before PATH
    monkeypatch.setenv(backends.BIN_DIR_ENV, str(bin_dir))
    assert backends.find_binary("cpu") == new
    with pytest.raises(HarnessError) as info:
        backends.find_binary("cuda", bin_dir)
    assert "llorch-cuda-candled" in info.value.message and str(bin_dir) in info.value.message
    with pytest.raises(HarnessError, match="not a directory"):
        backends.find_binary("cpu", tmp_path / "nope")


def test_detect_cuda_and_device_info_from_nvidia_smi(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "fakebin"
    _exe(fake, "nvidia-smi", 'case "$1" in\n'
         '  -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-1234)";;\n'
         '  *) echo "NVIDIA H200, 565.57.01, 143771 MiB";;\nesac')
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    found = backends.detect_backends()
    assert "cpu" in found and "NVIDIA H200" in found["cuda"]
    info = backends.device_info("cuda", 0)
    assert (info["name"], info["driver_version"], info["memory_total"]) == (
        "NVIDIA H200", "565.57.01", "143771 MiB")


def test_no_cuda_without_a_gpu(tmp_path: Path, monkeypatch) -> None:
    _exe(tmp_path / "fakebin", "nvidia-smi", 'echo "NVIDIA-SMI has failed" >&2; exit 9')
    monkeypatch.setenv("PATH", str(tmp_path / "fakebin"))
    monkeypatch.setattr(backends, "_NVIDIA_GPUS_DIR", tmp_path / "no-such-dir")
    found = backends.detect_backends()
    assert "cuda" not in found and "cpu" in found
    assert ("metal" in found) == (sys.platform == "darwin" and os.uname().machine == "arm64")


def test_cpu_device_info_names_the_cpu() -> None:
    info = backends.device_info("cpu")
    assert isinstance(info["name"], str) and info["name"]


def test_status_command_shows_devices_and_workers(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "llorch-pool"
    res = subprocess.run([str(exe), "status", "--json", "--pool-root", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    assert "cpu" in st["devices"] and st["workers"] == [] and st["models"] == []
    assert set(st["binaries"]) == {"cpu", "cuda", "metal"}
    text = subprocess.run([str(exe), "status", "--pool-root", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False).stdout
    assert "Devices:" in text and "Workers: 0 recorded" in text


# ------------------------------------------------------------------ proof, not absence (issue 20)


def test_empty_environment_is_no_proof(started, tmp_path: Path) -> None:
    """Issue 20 #4: a process started with `env -i` has no marker to show: with the right
    create time it is still not the worker, whatever the record claims."""
    p = subprocess.Popen(["/usr/bin/env", "-i", "/bin/sleep", "60"], start_new_session=True)
    started.append(p)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and psutil.Process(p.pid).cmdline()[:1] != ["/bin/sleep"]:
        time.sleep(0.005)
    ct = psutil.Process(p.pid).create_time()
    pool = str(tmp_path)
    assert procs.proven_environ(psutil.Process(p.pid)) is None
    assert procs.identify(p.pid, create_time=ct, worker_id="w-1", pool_root=pool)[0] == "reused"
    assert procs.identify(p.pid, create_time=None, worker_id="w-1", pool_root=pool)[0] == "reused"


def test_rust_record_needs_the_worker_id_on_the_command_line(started) -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--worker-id",
                          "w-9"], start_new_session=True)
    started.append(p)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "--worker-id" not in psutil.Process(p.pid).cmdline():
        time.sleep(0.005)
    ct = psutil.Process(p.pid).create_time()
    ident = {"create_time": None, "pool_root": "/x", "started_at": ct + 0.5}
    assert procs.identify(p.pid, worker_id="w-9", **ident)[0] == "alive"
    assert procs.identify(p.pid, worker_id="w-1", **ident)[0] == "reused"
    assert procs.names_worker(["b", "--worker-id=w-9"], "w-9")
    assert not procs.names_worker(["b", "--worker-id"], "w-9")


@pytest.mark.parametrize(("wid", "pool", "ok"), [
    ("worker-cpu-0", "/srv/pool", True),
    ("/../../../../tmp/x", "/srv/pool", False),
    ("..", "/srv/pool", False),
    ("a/b", "/srv/pool", False),
    ("worker-cpu-0", "srv/pool", False),
    ("worker-cpu-0", "/srv/../etc", False),
    ("worker-cpu-0", "//srv/pool", False),
    ("worker-cpu-0", "/srv/pool/", False),
    ("worker-cpu-0", "/srv/\npool", False),
])
def test_marker_names_are_checked_before_use(wid: str, pool: str, ok: bool) -> None:
    """Issue 20 #6: a marker is someone else's text; a bad one is nobody's."""
    env = {procs.MARKER_WORKER_ENV: wid, procs.MARKER_POOL_ENV: pool, procs.SESSION_ENV: "s"}
    assert (procs.parse_marker(env) is not None) is ok
