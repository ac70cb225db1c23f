"""Workers of our own dead earlier sessions, found and stopped at the start of a gate run.

Why apart from the fixtures: this is process management (psutil, the pool's worker records)
run once per session by the plugin, not a fixture; plain functions, testable without pytest.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from llorch_harness.plugin.labs import LabDecision
from llorch_harness.pool import procs

SESSION_PREFIX = "pytest:"


def session_marker(pid: int | None = None) -> str:
    """`pytest:<pid>:<create_time>` of the controlling pytest: identity survives pid reuse."""
    proc = psutil.Process(pid or os.getpid())
    return f"{SESSION_PREFIX}{proc.pid}:{proc.create_time():.2f}"


def session_alive(marker: str | None) -> bool | None:
    """True/False for a marker of ours, None for anything else (never ours to judge)."""
    if not marker or not marker.startswith(SESSION_PREFIX):
        return None
    try:
        pid_s, ctime_s = marker[len(SESSION_PREFIX):].split(":", 1)
        pid, ctime = int(pid_s), float(ctime_s)
    except ValueError:
        return None
    try:
        proc = psutil.Process(pid)
        if procs.is_gone(proc):
            return False
        return abs(proc.create_time() - ctime) < procs.CREATE_TIME_TOLERANCE_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # cannot tell: leave it alone


PoolRoots = Callable[[str], bool] | Iterable[str | os.PathLike[str]]


def sweep_dead_sessions(pool_roots: PoolRoots = (), grace: float = 2.0) -> list[int]:
    """Stop workers of our own dead earlier sessions (a SIGKILLed run), proven first.

    A marker in a process's environment is only a claim: anyone can set it. A process
    is signalled only when all of this holds (see proven_leftover):
    - its marker names a `pytest:` session that is dead;
    - the pool root it names is one this session may touch (`pool_roots`: the pool root
      in use, see sweep_scope), and its worker id is a valid id;
    - that pool holds the worker's record, and the record names the same worker, pool
      and session, with the process's own pid and create time (or the process was born
      after the recorded worker: one of its children).
    Anything else (no record, a record that disagrees, another pool) is left alone; a
    worker of a live session (another run on the same machine) is never touched.
    """
    from llorch_harness.pool import workers
    from llorch_harness.pool.paths import PoolPaths

    allowed = _root_filter(pool_roots)
    stopped: list[int] = []
    for m in procs.marked_processes():
        if session_alive(m.session) is not False or not allowed(m.pool_root):
            continue
        if not proven_leftover(m):
            continue
        pid = m.proc.pid
        try:
            res = workers.stop_worker(PoolPaths(Path(m.pool_root)), m.worker_id, grace=grace)
            if res.step in ("already_dead", "stale_record") and not procs.is_gone(m.proc):
                procs.stop_ladder(m.proc, grace=grace)  # a proven child left behind
        except Exception:  # a start-up sweep must never stop the run
            continue
        stopped.append(pid)
    return stopped


def proven_leftover(m: procs.Marked) -> bool:
    """Does the pool's record of m.worker_id vouch for this marked process?"""
    from llorch_harness.errors import HarnessError
    from llorch_harness.pool import workers
    from llorch_harness.pool.paths import PoolPaths

    paths = PoolPaths(Path(m.pool_root))
    try:
        rec = workers.read_record(workers.record_path(paths, m.worker_id))
    except (FileNotFoundError, HarnessError, OSError):
        return False
    ctime = rec.create_time
    if (rec.worker_id != m.worker_id or rec.pool_root != m.pool_root
            or rec.session != m.session or not m.session or ctime is None):
        return False
    try:
        born = m.proc.create_time()
    except psutil.Error:
        return False
    if rec.pid == m.proc.pid:
        return abs(born - float(ctime)) <= procs.CREATE_TIME_TOLERANCE_S
    return born >= float(ctime) - procs.CREATE_TIME_TOLERANCE_S


def _root_filter(pool_roots: PoolRoots) -> Callable[[str], bool]:
    if callable(pool_roots):
        return pool_roots
    keys = {procs.pool_key(os.fspath(r)) for r in pool_roots}
    return keys.__contains__


def sweep_scope(lab: LabDecision, basetemp: str | os.PathLike[str] | None = None
                ) -> Callable[[str], bool]:
    """The pool roots a session's start-up sweep may touch: the pool root it uses, and in
    the embedded lab without --pool-root, the fresh pools that earlier runs made under this
    user's pytest temp directory (`pytest-of-USER/pytest-N/pool`, or BASETEMP/pool)."""
    from llorch_harness.errors import HarnessError
    from llorch_harness.pool.paths import resolve_pool_root

    exact: set[str] = set()
    temp_parent: Path | None = None
    if lab.pool_root:
        exact.add(procs.pool_key(lab.pool_root))
    elif lab.lab == "embedded":
        if basetemp:
            exact.add(procs.pool_key(Path(basetemp) / "pool"))
        else:
            temp_parent = user_temp_root()
    else:
        with contextlib.suppress(HarnessError, OSError):
            exact.add(procs.pool_key(resolve_pool_root(None)))

    def allowed(pool_root: str) -> bool:
        if pool_root in exact:
            return True
        if temp_parent is None:
            return False
        p = Path(pool_root)
        return (p.name == "pool" and p.parent.parent == temp_parent
                and re.fullmatch(r"pytest-\d+", p.parent.name) is not None)

    return allowed


def user_temp_root() -> Path | None:
    """pytest's per-user temp root (`$TMP/pytest-of-USER`), computed as pytest does."""
    import getpass
    import tempfile

    try:
        user = getpass.getuser()
    except (ImportError, OSError, KeyError):
        return None
    base = os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir()
    safe_user = re.sub(r"[\W]", "_", user)
    return Path(base).resolve() / f"pytest-of-{safe_user}"


def install_session_marker() -> str:
    """Set the marker in our environment so every worker (and xdist worker) inherits it."""
    marker = os.environ.get(procs.SESSION_ENV)
    if marker is not None and session_alive(marker) is True:
        return marker
    marker = session_marker()
    os.environ[procs.SESSION_ENV] = marker
    return marker
