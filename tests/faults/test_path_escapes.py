"""Issue 20 #6, #7: nothing is created, written or deleted outside the pool root.

#6 A worker id or pool root read from another process's environment (the harness
markers) became part of a lock path: `LLORCH_HARNESS_WORKER=/../../../../tmp/x` made
`worker list`, `reap` and the start-up sweep create files and directories outside the
pool root. Forgers with bad ids, unnormalised, relative and foreign pool roots run beside
every command that looks at markers; the sandbox outside the pool root is snapshotted
before and after (0 changes allowed), and forgers with malformed markers are never
signalled (they are nobody's).

#7 A symbolic link anywhere under the pool root on the way to what a command writes or
deletes (`.cache` in a model directory and its subdirectories, `.locks`, the lock file,
`.test-models`, `.runtime`, a model file) must be refused with one line before anything
is written; the link's target tree is snapshotted and must not change (the issue's case:
`*.incomplete` files there were deleted and lock/metadata files written).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llorch_harness.lab.hub import LocalHub, build_embedded_hub_root
from llorch_harness.pool import procs

from .common import ANTI_HANG_S, LLORCH_POOL, PYTHON, clean_env, figure, wait_for
from .test_process_identity import Canary, settle, start_canary

TRIVIAL = "def test_nothing():\n    pass\n"


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int, str]]:
    """Every entry under root (skip excluded): (size, mtime_ns, kind). Links not followed."""
    out: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and (dirpath == str(skip) or dirpath.startswith(f"{skip}/")):
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if skip is not None and p == str(skip):
                continue
            st = os.lstat(p)
            kind = "l" if os.path.islink(p) else "d" if os.path.isdir(p) else "f"
            out[os.path.relpath(p, root)] = (0 if kind == "d" else st.st_size,
                                              0 if kind == "d" else st.st_mtime_ns, kind)
    return out


def changes(before: dict[str, tuple[int, int, str]], after: dict[str, tuple[int, int, str]]
            ) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


@pytest.fixture
def canaries() -> Iterator[list[Canary]]:
    made: list[Canary] = []
    yield made
    for c in made:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.proc.pid, signal.SIGKILL)
        c.proc.wait(timeout=10)


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=ANTI_HANG_S,
                          env=clean_env(**env), cwd=cwd, stdin=subprocess.DEVNULL, check=False)


# --------------------------------------------------------------------------- #6


def test_marker_names_never_become_paths(tmp_path: Path, canaries: list[Canary]) -> None:
    sandbox = tmp_path / "sandbox"
    pool = (sandbox / "a" / "b" / "pool").resolve()
    (pool / ".runtime" / "workers").mkdir(parents=True)
    (sandbox / "cwd").mkdir()
    key = procs.pool_key(pool)
    dead = subprocess.Popen(["/bin/true"])
    dead.wait()
    session = f"pytest:{dead.pid}:1.00"
    malformed = {  # nobody's markers: never a path, never a signal
        "issue-literal": ("/../../../../tmp/x", key),
        "dot-dot-id": ("../../../escape-a", key),
        "bare-dot-dot": ("..", key),
        "slash-id": ("a/b", key),
        "newline-id": ("x\ny", key),
        "unnormalised-root": ("worker-cpu-0", key + "/../../escape-b"),
        "relative-root": ("worker-cpu-0", "a/b/pool"),
        "double-slash-root": ("worker-cpu-0", "/" + key),
    }
    foreign = {  # well-formed markers of a pool that does not exist: nothing may be created
        "foreign-pool": ("worker-cpu-0", str(sandbox / "elsewhere" / "pool")),
    }
    forgers: dict[str, Canary] = {}
    for i, (name, (wid, root)) in enumerate({**malformed, **foreign}.items()):
        c = start_canary(tmp_path, i, {procs.MARKER_WORKER_ENV: wid,
                                       procs.MARKER_POOL_ENV: root,
                                       procs.SESSION_ENV: session})
        canaries.append(c)
        forgers[name] = c
    for c in forgers.values():
        wait_for(lambda c=c: c.proc.poll() is not None or _execd(c), 10, "canary exec")
    (sandbox / "cwd" / "test_trivial.py").write_text(TRIVIAL)
    before = snapshot(sandbox, skip=pool)
    tmp_before = {p: p.exists() for p in (Path("/tmp/x"), Path("/tmp/x.lock"))}
    pool_cmds = [["worker", "list"], ["worker", "list", "--json"], ["status", "--json"],
                 ["worker", "reap", "--grace", "0.5"]]
    results = [run([str(LLORCH_POOL), *a, "--pool-root", str(pool)], sandbox / "cwd")
               for a in pool_cmds]
    results.append(run([str(LLORCH_POOL), "worker", "reap", "--all-pools", "--grace", "0.5"],
                       sandbox / "cwd"))
    results.append(run([PYTHON, "-m", "pytest", "test_trivial.py", "--lab", "embedded",
                        "--pool-root", str(pool), "-p", "no:cacheprovider", "-q",
                        "--rootdir", str(sandbox / "cwd"), "--basetemp",
                        str(pool / "bt")], sandbox / "cwd"))
    for r in results:
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    changed = changes(before, snapshot(sandbox, skip=pool))
    assert changed == [], f"created or changed outside the pool root: {changed}"
    assert {p: p.exists() for p in tmp_before} == tmp_before
    settle(list(forgers.values()))
    signalled = {n: c.signals() for n, c in forgers.items()
                 if n in malformed and (c.signals() or c.proc.poll() is not None)}
    assert signalled == {}, signalled
    figure("path_escapes", case="forged marker names", forgers=len(forgers),
           commands=len(results), outside_changes=len(changed),
           malformed_signalled=len(signalled))


def _execd(c: Canary) -> bool:
    try:
        return psutil.Process(c.proc.pid).cmdline()[:1] == ["/bin/sh"]
    except psutil.Error:
        return False


# --------------------------------------------------------------------------- #7


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_embedded_hub_root(tmp_path_factory.mktemp("escapehub"))


def _outside(tmp: Path) -> Path:
    """What a link points at: a hub-like cache with a partial file, and plain files."""
    out = tmp / "outside"
    (out / "huggingface" / "download").mkdir(parents=True)
    (out / "huggingface" / "download" / "victim.incomplete").write_text("precious partial")
    (out / "download").mkdir()
    (out / "download" / "victim2.incomplete").write_text("precious partial 2")
    (out / "victim.txt").write_text("precious file")
    return out


# name -> (link path relative to the pool root, target relative to outside/, command)
LINKS: dict[str, tuple[str, str, str]] = {
    "cache-dir": (".test-models/tiny-qwen/.cache", "", "download"),
    "cache-huggingface": (".test-models/tiny-qwen/.cache/huggingface", "huggingface",
                          "download"),
    "cache-download": (".test-models/tiny-qwen/.cache/huggingface/download", "download",
                       "download"),
    "locks-dir": (".test-models/.locks", "", "download"),
    "lock-file": (".test-models/.locks/tiny-qwen.lock", "victim.txt", "download"),
    "model-file": (".test-models/tiny-qwen/config.json", "victim.txt", "download"),
    "metadata-file": (".test-models/tiny-qwen/.cache/huggingface/download/config.json."
                      "metadata", "victim.txt", "download"),
    "models-dir": (".test-models", "", "download"),
    "model-dir-out": (".test-models/tiny-qwen", "", "download"),
    "runtime-dir": (".runtime", "", "spawn"),
    "workers-dir": (".runtime/workers", "", "spawn"),
    "verify-locks-dir": (".test-models/.locks", "", "verify"),
}


@pytest.mark.parametrize("case", sorted(LINKS))
def test_symlinks_under_the_pool_root_are_refused(case: str, tmp_path: Path,
                                                   hub_root: Path) -> None:
    link_rel, target_rel, command = LINKS[case]
    pool = (tmp_path / "pool").resolve()
    outside = _outside(tmp_path)
    with LocalHub(hub_root) as hub:
        if command in ("spawn", "verify"):  # a pool with the model downloaded first
            r0 = run([str(LLORCH_POOL), "models", "download", "tiny-qwen", "--pool-root",
                      str(pool)], tmp_path, HF_ENDPOINT=hub.url)
            assert r0.returncode == 0, r0.stderr
        link = pool / link_rel
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(outside / target_rel if target_rel else outside)
        before = snapshot(outside)
        argv = {"download": ["models", "download", "tiny-qwen", "--force"],
                "verify": ["models", "verify", "tiny-qwen"],
                "spawn": ["worker", "spawn", "cpu", "--model", "tiny-qwen", "--worker",
                          "reference", "--port", "0", "--ready-timeout", "30"]}[command]
        t0 = time.time()
        r = run([str(LLORCH_POOL), *argv, "--pool-root", str(pool)], tmp_path,
                HF_ENDPOINT=hub.url)
        fetched = [q.path for q in hub.requests
                   if q.route == "resolve" and q.method == "GET" and q.time >= t0]
    changed = changes(before, snapshot(outside))
    assert changed == [], f"{case}: written or deleted through the link: {changed}"
    assert r.returncode != 0, f"{case}: accepted: {r.stdout[-500:]}"
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert "symbolic link" in errors[0] or "escapes" in errors[0], errors[0]
    if command == "download":
        assert fetched == [], f"{case}: files were fetched before the refusal"
    figure("path_escapes", case=f"symlink {case} ({command})", exit=r.returncode,
           outside_changes=len(changed), message=errors[0][:80])
