"""A build or a gate run as a child process that never outlives the bisect.

Why its own session: a Ctrl-C typed at the terminal, or SIGINT/SIGTERM sent to the bisect
alone, must stop the child in order (pytest's teardown stops its workers; cargo stops its
rustc processes) and the bisect must wait for that before it removes the worktree. The
child gets SIGINT first, then SIGTERM, then SIGKILL of its whole process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

INT_GRACE_S = 60.0  # pytest stops its workers (SIGINT, 10 s grace each) on SIGINT
TERM_GRACE_S = 15.0


@dataclass(frozen=True)
class ChildResult:
    returncode: int
    seconds: float
    timed_out: bool = False
    pid: int = 0  # the child's pid (a pytest's workers carry it in their session marker)


def run_child(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path,
              timeout: float) -> ChildResult:
    """Run argv with stdout and stderr into `log`; on any exception (KeyboardInterrupt
    included) the child's group is stopped before it propagates."""
    t0 = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            return ChildResult(proc.returncode, time.monotonic() - t0, True, proc.pid)
        except BaseException:
            stop_group(proc)
            raise
        _kill_leftovers(proc.pid)
    return ChildResult(rc, time.monotonic() - t0, False, proc.pid)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to the child's process group; waits for it.
    A second Ctrl-C while waiting does not cut the ladder short."""
    for sig, grace in ((signal.SIGINT, INT_GRACE_S), (signal.SIGTERM, TERM_GRACE_S),
                       (signal.SIGKILL, TERM_GRACE_S)):
        _signal_group(proc.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                if proc.wait(timeout=max(0.0, deadline - time.monotonic())) is not None:
                    break
            except subprocess.TimeoutExpired:
                break
            except KeyboardInterrupt:
                continue
        if proc.poll() is not None:
            break
    _kill_leftovers(proc.pid)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_leftovers(pgid: int) -> None:
    """Whatever is still in the child's group after it ended (a stray rustc, a script's
    background job) is killed: nothing of a step outlives it."""
    _signal_group(pgid, signal.SIGKILL)
