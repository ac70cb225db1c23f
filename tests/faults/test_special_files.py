"""Issue 20 #12: only regular files are read; a FIFO, socket, device or directory is refused.

Opening a FIFO for reading blocks until a writer comes, and a device may never end, so a
FIFO as the catalog, a worker record or a log used to hang `models list|register`,
`worker list|stop --all|logs`, `status` and the gate. The class: every file the harness
reads from a pool (or is given to read or write) passes `fsutil.open_regular`, which
stats before opening and opens O_NONBLOCK. Each kind of special file (and a symlink to
one) is put in each place, and every command that reads that place must end promptly
with one line (or, for listings, a row that names the problem), no traceback, and the
file left where it was.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llorch_harness.fsutil import NotRegularFileError, open_regular, tail_text
from llorch_harness.plugin import report
from llorch_harness.pool import workers
from llorch_harness.pool.paths import PoolPaths

from .common import BIN, FULL, LLORCH_POOL, REPO_ROOT, clean_env, figure

LLORCH_HARNESS = BIN / "llorch-harness"
PYTEST = BIN / "pytest"
QUICK_S = 60.0  # a hang guard: each command ends in about a second

KINDS = ["fifo", "symlink-to-fifo", "socket", "directory", "device"]
CI_KINDS = ["fifo", "symlink-to-fifo", "device"]


def kinds() -> list[str]:
    return KINDS if FULL else CI_KINDS


def make_special(path: Path, kind: str, tmp: Path) -> socket.socket | None:
    """Put a special file of `kind` at `path`; a bound socket is returned to be closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-to-fifo":
        target = tmp / f"pipe-{path.name}"
        os.mkfifo(target)
        path.symlink_to(target)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path.symlink_to("/dev/zero")  # endless: a reader that trusted it would never finish
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        return sock
    else:
        raise ValueError(kind)
    return None


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[PoolPaths]:
    paths = PoolPaths.at(tmp_path / "pool")
    paths.root.mkdir()
    yield paths


def run(argv: list[str], cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=QUICK_S, check=False,
                       env=clean_env(**env), cwd=cwd, stdin=subprocess.DEVNULL)
    return r, time.monotonic() - t0


def check(r: subprocess.CompletedProcess[str], *, listing: bool = False) -> None:
    """One line naming the special file (or, for a listing, exit 0 with a row saying so)."""
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-2000:]
    if listing:
        assert r.returncode == 0, r.stderr
        assert "not a regular file" in r.stdout, r.stdout
        return
    assert r.returncode != 0, r.stdout[-500:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error: " in ln]
    assert len(errors) == 1, r.stderr
    assert "not a regular file" in errors[0], errors[0]


def exists(path: Path) -> bool:
    return os.path.lexists(path)


@pytest.mark.parametrize("kind", KINDS)
def test_special_file_as_catalog(pool: PoolPaths, tmp_path: Path, kind: str) -> None:
    if kind not in kinds():
        pytest.skip("full runs only (LLORCH_FAULT_SCALE=full)")
    sock = make_special(pool.catalog_path, kind, tmp_path)
    commands = [("models", "list"), ("models", "catalog"), ("models", "catalog", "--json"),
                ("models", "register", "m", "--name", "M", "--repo", "o/m",
                 "--architecture", "qwen"),
                ("models", "download", "tiny-qwen"), ("models", "verify", "tiny-qwen"),
                ("status",), ("worker", "spawn", "cpu", "--model", "tiny-qwen",
                              "--worker", "reference", "--port", "0")]
    took = []
    try:
        for args in commands:
            r, s = run([str(LLORCH_POOL), *args, "--pool-root", str(pool.root)], tmp_path,
                       HF_ENDPOINT="http://127.0.0.1:9")
            took.append(s)
            check(r)
    finally:
        if sock is not None:
            sock.close()
    assert exists(pool.catalog_path)
    figure("special_files", place="catalog", kind=kind, commands=len(commands),
           max_s=round(max(took), 2))


@pytest.mark.parametrize("kind", KINDS)
def test_special_file_as_worker_record(pool: PoolPaths, tmp_path: Path, kind: str) -> None:
    if kind not in kinds():
        pytest.skip("full runs only (LLORCH_FAULT_SCALE=full)")
    rec = pool.workers_dir / "worker-cpu-0.json"
    sock = make_special(rec, kind, tmp_path)
    took = []
    try:
        for args, listing in ((("worker", "list"), True), (("worker", "list", "--json"), True),
                              (("status",), False), (("worker", "stop", "worker-cpu-0"), False),
                              (("worker", "stop", "--all", "--grace", "0.2"), False),
                              (("worker", "reap", "--grace", "0.2"), None)):
            r, s = run([str(LLORCH_POOL), *args, "--pool-root", str(pool.root)], tmp_path)
            took.append(s)
            if listing is None:  # reap reads no records of its own pool without orphans
                assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
            elif args == ("status",):
                assert r.returncode == 0 and "invalid" in r.stdout, (r.stdout, r.stderr)
                assert "Traceback" not in r.stderr
            elif "--all" in args:
                assert "Traceback" not in r.stderr and "internal error" not in r.stderr
                assert r.returncode != 0 and "not a regular file" in r.stderr + r.stdout
            else:
                check(r, listing=listing)
        rows = workers.list_workers(pool)
        assert [(w.status, "not a regular file" in w.note) for w in rows] == [("invalid", True)]
    finally:
        if sock is not None:
            sock.close()
    assert exists(rec)  # left for a person to look at
    figure("special_files", place="worker record", kind=kind, commands=6,
           max_s=round(max(took), 2))


@pytest.mark.parametrize("kind", KINDS)
def test_special_file_as_worker_log(pool: PoolPaths, tmp_path: Path, kind: str) -> None:
    if kind not in kinds():
        pytest.skip("full runs only (LLORCH_FAULT_SCALE=full)")
    log = pool.workers_dir / "worker-cpu-0.log"
    sock = make_special(log, kind, tmp_path)
    took = []
    try:
        for args in (("worker", "logs", "worker-cpu-0"), ("worker", "logs", "-n", "5",
                                                           "worker-cpu-0"),
                     ("worker", "logs", "--follow", "worker-cpu-0")):
            r, s = run([str(LLORCH_POOL), *args, "--pool-root", str(pool.root)], tmp_path)
            took.append(s)
            check(r)
        t0 = time.monotonic()
        tail = workers.tail_lines(log)  # the tail a failed spawn quotes
        assert "not a regular file" in tail or "not read" in tail, tail
        assert report.log_tail(log) is None  # the report's tail attaches nothing
        with pytest.raises(NotRegularFileError):
            tail_text(log, 10)
        with pytest.raises(NotRegularFileError):
            open_regular(log).close()
        took.append(time.monotonic() - t0)
    finally:
        if sock is not None:
            sock.close()
    assert exists(log)
    figure("special_files", place="worker log", kind=kind, commands=3,
           max_s=round(max(took), 2))


@pytest.mark.parametrize("kind", KINDS)
def test_special_file_as_gate_result(tmp_path: Path, kind: str) -> None:
    if kind not in kinds():
        pytest.skip("full runs only (LLORCH_FAULT_SCALE=full)")
    path = tmp_path / "mac.json"
    sock = make_special(path, kind, tmp_path)
    try:
        r, took = run([str(LLORCH_HARNESS), "gate", "merge", f"mac={path}", "--html",
                       str(tmp_path / "out.html")], tmp_path)
    finally:
        if sock is not None:
            sock.close()
    check(r)
    assert r.returncode == 2
    figure("special_files", place="gate result (gate merge)", kind=kind, commands=1,
           max_s=round(took, 2))


@pytest.mark.parametrize("kind", KINDS)
def test_special_file_as_gate_json_target(tmp_path: Path, kind: str) -> None:
    """`--gate-json` naming a FIFO, a directory or `/proc/version`: one usage error before
    the run (pytest exit 4), not an INTERNALERROR after it."""
    if kind not in kinds():
        pytest.skip("full runs only (LLORCH_FAULT_SCALE=full)")
    path = tmp_path / "gate.json"
    sock = make_special(path, kind, tmp_path)
    try:
        r, took = run([str(PYTEST), str(REPO_ROOT / "tests_hw"), "-m", "cpu",
                       "--collect-only", "-q", "-p", "no:cacheprovider"], tmp_path,
                      LLORCH_GATE_JSON=str(path))
    finally:
        if sock is not None:
            sock.close()
    assert r.returncode == 4, (r.stdout[-1500:], r.stderr[-1500:])
    out = r.stdout + r.stderr
    assert "Traceback" not in out and "INTERNALERROR" not in out
    assert "gate JSON target" in out and "not a file" in out, out[-1500:]
    figure("special_files", place="gate JSON target", kind=kind, commands=1,
           max_s=round(took, 2))


def test_proc_file_as_gate_json_target(tmp_path: Path) -> None:
    r, _ = run([str(PYTEST), str(REPO_ROOT / "tests_hw"), "-m", "cpu", "--collect-only", "-q",
                "-p", "no:cacheprovider"], tmp_path, LLORCH_GATE_JSON="/proc/version")
    out = r.stdout + r.stderr
    assert r.returncode == 4 and "Traceback" not in out and "INTERNALERROR" not in out, out
    assert "cannot create a file in /proc" in out, out[-1500:]
