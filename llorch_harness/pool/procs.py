"""Process identity, tree and group kill, port checks, and the marker sweep.

A pid alone is not an identity: pids are reused. We identify a worker by pid +
create time + the marker environment variables every spawned process carries,
and we never signal a process that fails that check. What cannot be read is not
proof: an unreadable or empty environment (or command line) means "not ours".
A marker is someone else's text, too: its worker id and pool root are checked
(paths.validate_worker_id, paths.validate_pool_key) before anything uses them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from llorch_harness.errors import HarnessError
from llorch_harness.pool.paths import validate_pool_key, validate_worker_id

MARKER_WORKER_ENV = "LLORCH_HARNESS_WORKER"
MARKER_POOL_ENV = "LLORCH_HARNESS_POOL"
SESSION_ENV = "LLORCH_HARNESS_SESSION"
CREATE_TIME_TOLERANCE_S = 1.0
ENVIRON_TRIES = 5  # an empty environment is re-read a few times (a process inside exec())
ENVIRON_RETRY_S = 0.02
STOP_TERM_WAIT_S = 3.0  # after SIGTERM, before SIGKILL
_POLL_S = 0.01


# ---------------------------------------------------------------- identity

@dataclass(frozen=True)
class Marked:
    """A process carrying the harness marker: which pool and worker it belongs to."""

    proc: psutil.Process
    worker_id: str
    pool_root: str
    session: str | None


def is_gone(proc: psutil.Process) -> bool:
    """True once the process no longer runs; a zombie counts as gone (and is reaped if ours)."""
    try:
        if not proc.is_running():
            return True
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap_if_child(proc.pid)
            return True
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False
    return False


def _reap_if_child(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def parse_marker(env: Mapping[str, str]) -> tuple[str, str, str | None] | None:
    """(worker_id, pool_root, session) from an environment; None if absent or malformed.

    A marker whose worker id is not a valid id or whose pool root is not an absolute,
    normalised path is nobody's: `/../../../../tmp/x` must never become part of a path.
    """
    wid = env.get(MARKER_WORKER_ENV)
    pool = env.get(MARKER_POOL_ENV)
    if not wid or not pool:
        return None
    try:
        validate_worker_id(wid)
        validate_pool_key(pool)
    except HarnessError:
        return None
    return wid, pool, env.get(SESSION_ENV)


def read_marker(proc: psutil.Process) -> tuple[str, str, str | None] | None:
    """(worker_id, pool_root, session) from the environment; None if absent, malformed or
    unreadable."""
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return None
    return parse_marker(env)


def proven_environ(proc: psutil.Process) -> dict[str, str] | None:
    """The environment, or None when it cannot serve as proof: unreadable (another user's
    process, AccessDenied) or empty. A process in the middle of exec() shows an empty
    environment for a moment, so an empty one is read again a few times first; one that
    stays empty (`env -i`) is not ours."""
    for attempt in range(ENVIRON_TRIES):
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            return None
        if env:
            return env
        if attempt + 1 < ENVIRON_TRIES:
            time.sleep(ENVIRON_RETRY_S)
    return None


def _marker_matches(proc: psutil.Process, worker_id: str, pool_root: str) -> bool:
    env = proven_environ(proc)
    marker = parse_marker(env) if env is not None else None
    return marker is not None and marker[0] == worker_id and marker[1] == pool_root


def names_worker(cmdline: Sequence[str], worker_id: str) -> bool:
    """Does a command line carry the contract's `--worker-id ID` (or `--worker-id=ID`)?"""
    for i, word in enumerate(cmdline):
        if word == f"--worker-id={worker_id}":
            return True
        if word == "--worker-id" and i + 1 < len(cmdline) and cmdline[i + 1] == worker_id:
            return True
    return False


def identify(
    pid: int, *, create_time: float | None, worker_id: str, pool_root: str,
    started_at: float | None = None,
) -> tuple[str, psutil.Process | None]:
    """("alive", proc) | ("gone", None) | ("reused", proc): is pid still the worker we started?

    "alive" only with proof. Our own records carry create_time and the process carries
    our marker: both must match, and an unreadable or empty environment is no proof. A
    record written by the Rust llorch-pool has neither, so there the process must have been
    created within a few seconds before the record's started_at *and* its command line
    must carry the contract's `--worker-id ID`.
    """
    try:
        proc = psutil.Process(pid)
        if is_gone(proc):
            return "gone", None
        ctime = proc.create_time()
    except psutil.NoSuchProcess:
        return "gone", None
    except psutil.AccessDenied:
        return "reused", None
    if create_time is not None:
        if abs(ctime - create_time) > CREATE_TIME_TOLERANCE_S:
            return "reused", proc
        return ("alive", proc) if _marker_matches(proc, worker_id, pool_root) else (
            "reused", proc)
    if started_at is None:
        # nothing in the record identifies the process: only our marker can prove it
        return ("alive", proc) if _marker_matches(proc, worker_id, pool_root) else (
            "reused", proc)
    if not (started_at - 30.0 <= ctime <= started_at + 1.0):
        return "reused", proc
    try:
        cmdline = proc.cmdline()
    except (psutil.Error, OSError):
        return "reused", proc  # unreadable: no proof
    return ("alive", proc) if names_worker(cmdline, worker_id) else ("reused", proc)


def marked_processes(
    pool_root: str | None = None, worker_id: str | None = None, session: str | None = None,
) -> list[Marked]:
    """Every live process of this user carrying a well-formed harness marker, optionally
    narrowed down. Another user's process is never ours to signal, even when we (root) can
    read a marker in it."""
    found: list[Marked] = []
    me = os.getpid()
    my_uid = os.getuid() if hasattr(os, "getuid") else None
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        marker = read_marker(proc)
        if marker is None:
            continue
        if my_uid is not None:
            try:
                if proc.uids().real != my_uid:
                    continue
            except (psutil.Error, OSError):
                continue
        wid, pool, sess = marker
        if pool_root is not None and pool != pool_root:
            continue
        if worker_id is not None and wid != worker_id:
            continue
        if session is not None and sess != session:
            continue
        if is_gone(proc):
            continue
        found.append(Marked(proc, wid, pool, sess))
    return found


# ---------------------------------------------------------------- stopping

def _safe_pgid(pid: int) -> int | None:
    """The process group to signal: only one the process leads, never our own group."""
    try:
        pgid = os.getpgid(pid)
    except OSError:
        return None
    if pgid != pid or pgid == os.getpgid(0) or pgid <= 1:
        return None
    return pgid


def collect_tree(
    root: psutil.Process | None, extra: Iterable[psutil.Process] = (),
) -> tuple[list[psutil.Process], list[int]]:
    """Root, its descendants, members of its process group, plus extra: collected BEFORE signals,
    because children of a dead parent are reparented and no longer found as its children."""
    procs: dict[int, psutil.Process] = {}
    groups: list[int] = []
    roots = ([root] if root is not None else []) + list(extra)
    for p in roots:
        if is_gone(p):
            continue
        procs.setdefault(p.pid, p)
        with contextlib.suppress(psutil.Error):
            for c in p.children(recursive=True):
                procs.setdefault(c.pid, c)
        pg = _safe_pgid(p.pid)
        if pg is not None and pg not in groups:
            groups.append(pg)
    if groups:
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) in groups:
                    procs.setdefault(p.pid, p)
            except OSError:
                continue
    procs.pop(os.getpid(), None)
    return list(procs.values()), groups


def _signal_all(procs: list[psutil.Process], groups: list[int], sig: int) -> None:
    for pg in groups:
        # only a group that still holds one of ours: a dead group's id could be reused
        members = []
        for p in procs:
            with contextlib.suppress(OSError, psutil.Error):
                if not is_gone(p) and os.getpgid(p.pid) == pg:
                    members.append(p)
        if members:
            with contextlib.suppress(OSError):
                os.killpg(pg, sig)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)  # psutil refuses if the pid now names another process


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Poll until every process is gone or timeout; returns the survivors."""
    deadline = time.monotonic() + max(0.0, timeout)
    alive = [p for p in procs if not is_gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        alive = [p for p in alive if not is_gone(p)]
    return alive


@dataclass
class LadderResult:
    step: str          # "sigint" | "sigterm" | "sigkill" | "already_dead"
    seconds: float
    survivors: list[psutil.Process]


def stop_ladder(
    root: psutil.Process | None, *, grace: float = 10.0, term_wait: float = STOP_TERM_WAIT_S,
    kill_wait: float = 5.0, extra: Callable[[], list[psutil.Process]] = list,
) -> LadderResult:
    """SIGINT (the real worker's graceful stop), grace, SIGTERM, term_wait, SIGKILL.

    The whole tree, the process group and whatever `extra()` finds (the marker sweep)
    go; `extra` is asked again before each step so late forks are caught too.
    """
    t0 = time.monotonic()
    procs, groups = collect_tree(root, extra())
    if not procs:
        return LadderResult("already_dead", 0.0, [])
    steps = ((signal.SIGINT, "sigint", grace), (signal.SIGTERM, "sigterm", term_wait),
             (signal.SIGKILL, "sigkill", kill_wait))
    alive = procs
    for sig, name, wait_s in steps:
        more, more_groups = collect_tree(None, [*alive, *extra()])
        known = {p.pid for p in alive}
        alive = alive + [p for p in more if p.pid not in known]
        groups = groups + [g for g in more_groups if g not in groups]
        _signal_all(alive, groups, sig)
        alive = wait_gone(alive, wait_s)
        if not alive:
            # a late straggler found by the sweep is killed too, without changing the step
            late = [p for p in extra() if not is_gone(p)]
            if late:
                _signal_all(late, [], signal.SIGKILL)
                wait_gone(late, kill_wait)
            return LadderResult(name, time.monotonic() - t0, [])
    return LadderResult("sigkill", time.monotonic() - t0, alive)


# ---------------------------------------------------------------- ports

def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just handed out (bind :0, read, close); racy by nature, checked again later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """A cheap TCP connect: does anything listen there?"""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_bindable(port: int) -> bool:
    """Could a worker bind 0.0.0.0:port now (as tokio does, with SO_REUSEADDR)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


def port_is_free(port: int) -> bool:
    return not port_accepts(port) and port_bindable(port)


def wait_port_free(port: int, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if port_is_free(port):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


# ---------------------------------------------------------------- parent death

_PR_SET_PDEATHSIG = 1


def pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn that makes the child die with SIGKILL when its parent does (Linux only).

    Only for workers owned by a test process: the kernel sends the signal when the
    spawning *thread* exits, so spawn from a long-lived thread. CLI-spawned workers
    must outlive the CLI and never use this.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl  # resolved in the parent: nothing is loaded after fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def own_session_id() -> int:
    return os.getsid(0)


def process_alive(pid: int) -> bool:
    try:
        return not is_gone(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def pool_key(root: Path | str) -> str:
    """The pool root as the marker spells it (resolved, so two spellings of one pool match)."""
    return str(Path(root).resolve())
