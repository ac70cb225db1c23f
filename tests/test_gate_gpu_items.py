"""Issue 15's gate items end to end, in gate runs (subprocesses): an unhealthy card fails
"Device healthy" with its reason (and the session's readings reach the gate JSON), and a
worker that leaves a child behind fails "Cleanup works correctly" naming it, after which
nothing of it is left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests import fakesmi
from tests.test_gaterun import install_worker

REPO = Path(__file__).resolve().parents[1]
FAKEWORKER = Path(__file__).with_name("fakeworker.py")
RUN_TIMEOUT_S = 900


def gate(tmp: Path, *args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "PYTEST_"))}
    full.update(env)
    full["LLORCH_LEASE_DIR"] = str(tmp / "leases")
    (tmp / "pool").mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pytest", str(REPO / "tests_hw"), "-p", "no:cacheprovider",
            "--pool-root", str(tmp / "pool"), "--basetemp", str(tmp / "bt"), "-rA",
            "--gate-model", "tiny-qwen", "--gate-json", str(tmp / "g.json"), *args]
    res = subprocess.run(argv, capture_output=True, text=True, env=full, cwd=tmp,
                         timeout=RUN_TIMEOUT_S, check=False)
    doc = json.loads((tmp / "g.json").read_text()) if (tmp / "g.json").is_file() else {}
    return res, doc


def _item(doc: dict, name: str) -> dict:
    return next(r for r in doc.get("checklist", []) if r["item"] == name)


def _reasons(doc: dict, test: str) -> str:
    return " | ".join(r.get("reason") or "" for r in doc.get("items", [])
                      if test in (r.get("nodeid") or ""))


@pytest.mark.slow
def test_an_unhealthy_card_fails_device_healthy(tmp_path: Path) -> None:
    bad = fakesmi.gpu(0, **{"ecc.errors.uncorrected.volatile.total": 3})
    env = fakesmi.install(tmp_path, {"gpus": [bad]})
    install_worker(tmp_path / "bin", "cuda")
    install_worker(tmp_path / "bin", "cpu")
    res, doc = gate(tmp_path, "-m", "cuda", "-k", "device_healthy", "--llorch-bin-dir",
                    str(tmp_path / "bin"), env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-6000:]
    assert _item(doc, "Device healthy")["status"] == "fail", out[-6000:]
    assert "no uncorrected ECC errors" in _reasons(doc, "test_device_healthy")
    assert "cuda:0 NVIDIA Fake 4090: 3 uncorrected ECC error(s)" in out, out[-6000:]
    session = doc["device_health"]["cuda:0"]
    assert session["before"]["uuid"] == "GPU-fake-0000" and session["after"] is not None
    assert session["unhealthy_before"] == ["3 uncorrected ECC error(s) since the driver "
                                           "loaded"]


@pytest.mark.slow
def test_a_worker_that_leaves_a_child_fails_cleanup(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "llorch-cpu-candled"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKEWORKER}" "$@"\n')
    exe.chmod(0o755)
    res, doc = gate(tmp_path, "-m", "cpu", "-k", "test_cleanup", "--llorch-bin-dir",
                    str(bindir), env={"FAKEWORKER_MODE": "spawn_detached_child",
                                      "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-6000:]
    assert _item(doc, "Cleanup works correctly")["status"] == "fail", out[-6000:]
    assert "nothing left behind" in _reasons(doc, "test_cleanup")
    got = [ln for ln in out.splitlines() if "time.sleep(300)) still running" in ln]
    assert got and "(cleaned up by the harness)" in got[0], out[-6000:]
    pool = str((tmp_path / "pool").resolve())
    left = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("LLORCH_HARNESS_POOL") == pool:
                left.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    assert not left, f"left behind after the gate: {left}"


def _gate_popen(tmp: Path, lease_dir: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "PYTEST_"))}
    full.update(env, LLORCH_LEASE_DIR=str(lease_dir))
    (tmp / "pool").mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pytest", str(REPO / "tests_hw"), "-p", "no:cacheprovider",
            "--pool-root", str(tmp / "pool"), "--basetemp", str(tmp / "bt"), "-rA",
            "--gate-model", "tiny-qwen", f"--llorch-bin-dir={tmp / 'bin'}", *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=full, cwd=tmp)


def _cuda_workers_by_pool(pools: dict[str, str]) -> set[str]:
    """Which of the runs have a worker on cuda alive right now (found by its pool root)."""
    alive: set[str] = set()
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "--cuda-device" not in (proc.info["cmdline"] or []):
                continue
            pool = proc.environ().get("LLORCH_HARNESS_POOL")
        except (psutil.Error, OSError):
            continue
        alive |= {name for name, root in pools.items() if root == pool}
    return alive


@pytest.mark.slow
def test_two_concurrent_gate_runs_never_share_a_gpu(tmp_path: Path) -> None:
    """Two gate runs with different pool roots on one host (two CI runners), started
    together on cuda:0: at no moment are workers of both alive, and both pass (whoever
    comes second waits for the lease; the wait's wording is tested in test_leases.py)."""
    env = fakesmi.install(tmp_path, {"gpus": [fakesmi.gpu(0)]})
    runs = {}
    for name in ("a", "b"):
        install_worker(tmp_path / name / "bin", "cuda")
        runs[name] = _gate_popen(tmp_path / name, tmp_path / "leases", env, "-m", "cuda", "-k",
                                 "worker_spawn_command or background_processes",
                                 "--lease-wait", "600")
    pools = {n: str((tmp_path / n / "pool").resolve()) for n in runs}
    seen: list[set[str]] = []
    try:
        while any(p.poll() is None for p in runs.values()):
            seen.append(_cuda_workers_by_pool(pools))
    finally:
        outs = {n: p.communicate(timeout=RUN_TIMEOUT_S)[0] for n, p in runs.items()}
    for name, p in runs.items():
        assert p.returncode == 0, outs[name][-6000:]
    assert not [s for s in seen if len(s) > 1], "workers of both runs were alive on cuda:0"
    assert {"a"} in seen and {"b"} in seen, "the sampler never saw a run's worker"
