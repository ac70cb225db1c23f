"""Find test processes by a unique marker: proof that nothing outlived a stopped command.

A "remote" command over the loopback sshd is a local process too, so a test can look for
it: the marker is a word of its command line (or a value in its environment), made unique
per test, so no other process can match.
"""

from __future__ import annotations

import time
import uuid

import psutil

POLL_S = 0.2


def new_marker(tag: str) -> str:
    return f"llorch-test-{tag}-{uuid.uuid4().hex}"


def marked(marker: str, env_name: str | None = None) -> list[psutil.Process]:
    """Live (not zombie) processes carrying `marker` in argv, or as the value of env_name."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            hit = any(marker in word for word in proc.cmdline())
            if not hit and env_name is not None:
                hit = proc.environ().get(env_name) == marker
        except psutil.Error:
            continue
        if hit:
            found.append(proc)
    return found


def named(procs: list[psutil.Process], name: str) -> list[psutil.Process]:
    """Those of `procs` still running under `name` (one that ended meanwhile is dropped)."""
    out = []
    for proc in procs:
        try:
            if proc.name() == name:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def wait_for(marker: str, count: int, timeout: float, env_name: str | None = None
             ) -> list[psutil.Process]:
    """The marked processes once at least `count` run (or whatever runs at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        procs = marked(marker, env_name)
        if len(procs) >= count or time.monotonic() > deadline:
            return procs
        time.sleep(POLL_S)


def wait_none(marker: str, timeout: float, env_name: str | None = None) -> list[str]:
    """Command lines of marked processes still alive at the deadline ([] once none is)."""
    deadline = time.monotonic() + timeout
    while True:
        procs = marked(marker, env_name)
        if not procs or time.monotonic() > deadline:
            out = []
            for p in procs:
                try:
                    out.append(" ".join(p.cmdline())[:300])
                except psutil.Error:
                    continue
            return out
        time.sleep(POLL_S)


def kill_all(marker: str, env_name: str | None = None) -> None:
    """Test cleanup: whatever still carries the marker is killed (never left behind)."""
    for proc in marked(marker, env_name):
        try:
            proc.kill()
        except psutil.Error:
            continue
