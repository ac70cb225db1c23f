"""Ctrl-C during a bisect, on a cuda pool (a scripted nvidia-smi, the reference worker as
llorch-cuda-candled): once in the middle of a build, once in the middle of a gate run. Each
time the bisect ends with 130 and leaves no worktree, no build process, no worker, no lease
and no changed ref; the developer's checkout is byte-identical. Also: the device lease is
held for the whole bisect (during a build, when no worker lives), not per worker life."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from llorch_harness.pool import leases
from tests import fakesmi
from tests.bisect_standin import _git, build_repo, install_cargo, snapshot

WAIT_S = 600.0  # a hang guard only
CUDA_ITEM = "Qwen works on CUDA (workstation)"


def wait_for(what: str, cond: Callable[[], object], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the bisect ended ({proc.returncode}) before {what}: "
                                 f"{proc.stdout.read()[-4000:] if proc.stdout else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def pool_processes(pool: Path) -> list[int]:
    """Workers of the pool (their marker) and gate runs on it (their command line)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("LLORCH_HARNESS_POOL") == str(pool.resolve()) or any(
                    f"--pool-root={pool}" in w for w in proc.cmdline()):
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


@dataclass
class CudaLab:
    base: Path
    main: list[str]
    env: dict[str, str]


@pytest.fixture
def cuda_lab(tmp_path: Path) -> CudaLab:
    main, _ = build_repo(tmp_path / "llama-orch", 20, faults={12: "wrong_rope_base"})
    tools = install_cargo(tmp_path / "tools").parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "PYTEST_"))}
    smi = fakesmi.install(tmp_path, {"gpus": [fakesmi.gpu(0)]})
    env.update(smi, PATH=f"{tools}:{smi['PATH'].split(os.pathsep)[0]}:"
                         f"{Path(sys.executable).parent}:/usr/bin:/bin",
               LLORCH_LEASE_DIR=str(tmp_path / "leases"))
    (tmp_path / "pool").mkdir()
    (tmp_path / "hold").mkdir()
    return CudaLab(tmp_path, main, env)


def start(base: Path, main: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "llorch_harness.cli.harness_main", "bisect",
            "--llorch-repo", str(base / "llama-orch"), "--good", main[0], "--bad", "main",
            "--backend", "cuda", "--item", CUDA_ITEM, "--gate-model", "tiny-llama",
            "--pool-root", str(base / "pool")]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=base, stdin=subprocess.DEVNULL)


def interrupt(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 130, out[-4000:]
    assert "error: interrupted" in out
    return out


def assert_nothing_left(base: Path, before: dict[str, tuple[int, bytes]]) -> None:
    repo = base / "llama-orch"
    assert snapshot(repo) == before  # no ref, index, HEAD or file changed
    assert _git(repo, "worktree", "list").count("\n") == 0
    assert not list((base / "pool" / ".runtime" / "bisect" / "runs").glob("*/llorch-bisect-*"))
    assert [s.key for s in leases.list_leases(base / "leases")] == []  # nothing held
    left = pool_processes(base / "pool")
    assert not left, f"left behind: {left}"


def test_ctrl_c_during_a_build_leaves_nothing_and_the_lease_spans_the_bisect(
        cuda_lab: CudaLab) -> None:
    base, main = cuda_lab.base, cuda_lab.main
    before = snapshot(base / "llama-orch")
    env = {**cuda_lab.env, "STANDIN_CARGO_HOLD": str(base / "hold")}
    proc = start(base, main, env)
    try:
        wait_for("the build to start", (base / "hold" / "cargo.pid").is_file, proc)
        wait_for("rustc to start", (base / "hold" / "rustc.pid").is_file, proc)
        held = leases.list_leases(base / "leases")
        assert [s.holder["pid"] for s in held if s.holder] == [proc.pid]  # no worker lives yet
        assert held[0].holder is not None and held[0].holder["worker_id"] == "bisect"
        wt = list((base / "pool" / ".runtime" / "bisect" / "runs").glob("*/llorch-bisect-*"))
        assert len(wt) == 1 and (wt[0] / "worker" / "Cargo.toml").is_file()  # at --good
        interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    for name in ("cargo.pid", "rustc.pid"):
        pid = int((base / "hold" / name).read_text())
        assert gone(pid), f"{name[:-4]} {pid} outlived the bisect"
    assert_nothing_left(base, before)


def test_ctrl_c_during_a_gate_run_leaves_no_worker_worktree_or_lease(
        cuda_lab: CudaLab) -> None:
    base, main = cuda_lab.base, cuda_lab.main
    before = snapshot(base / "llama-orch")
    env = dict(cuda_lab.env)
    proc = start(base, main, env)
    pool = str((base / "pool").resolve())
    try:
        wait_for("a worker of the gate run", lambda: any(
            _marker(p) == pool for p in psutil.process_iter()), proc)
        assert leases.list_leases(base / "leases")  # the worker borrowed the bisect's lease
        out = interrupt(proc)
        assert "[good]" in out and "testing 1 item(s), run 1 of 3" in out
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_nothing_left(base, before)


def _marker(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get("LLORCH_HARNESS_POOL")
    except (psutil.Error, OSError):
        return None
