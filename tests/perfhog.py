"""A CPU hog for the performance tests: real busy processes outside the test's process tree.

Why outside the tree: the harness counts its own process trees (and its workers') as its
own load, never as "other processes"; a hog that is a child of the test process would be
counted as the harness's. A launcher starts the spinners in new sessions and exits, so
they are re-parented (to init or a subreaper) like any other job on the host. Every
spinner stops itself after `LIFETIME_S` even if the fixture never gets to kill it, and the
fixture kills each one by its pid (checked against its start time) when it is done.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil

LIFETIME_S = 900.0  # a spinner's own bound: never outlives a forgotten fixture by much

# spin until the CPU time budget (seconds, 0: none) or the lifetime is used up
SPIN = ("import sys,time\nbudget=float(sys.argv[1]);end=time.monotonic()+float(sys.argv[2])\n"
        "while time.monotonic()<end and (budget<=0 or time.process_time()<budget):\n"
        "    sum(range(1000))\n")
LAUNCH = ("import subprocess,sys\nps=[subprocess.Popen([sys.executable,'-c',sys.argv[1],"
          "sys.argv[2],sys.argv[3]],start_new_session=True,stdin=subprocess.DEVNULL,"
          "stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL) for _ in range(int(sys.argv[4]))]\n"
          "print(' '.join(str(p.pid) for p in ps),flush=True)\n")


def start(count: int, cpu_budget_s: float = 0.0,
          lifetime_s: float = LIFETIME_S) -> list[psutil.Process]:
    """`count` spinners outside this process's tree, each until `cpu_budget_s` of CPU time
    (0: until killed or `lifetime_s`)."""
    out = subprocess.run([sys.executable, "-c", LAUNCH, SPIN, str(cpu_budget_s),
                          str(lifetime_s), str(count)],
                         capture_output=True, text=True, timeout=60, check=True)
    procs = []
    for pid in out.stdout.split():
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(int(pid)))
    return procs


def stop(procs: list[psutil.Process]) -> None:
    """Kill each spinner by pid (psutil checks it is still the process it started)."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=10)


@contextlib.contextmanager
def hog(count: int | None = None) -> Iterator[list[psutil.Process]]:
    """A spinner on every core (or `count`) for the block's duration, always stopped."""
    procs = start(count or psutil.cpu_count() or 1)
    try:
        wait_running(procs)
        yield procs
    finally:
        stop(procs)


def wait_running(procs: list[psutil.Process], timeout_s: float = 60.0) -> None:
    """Until every spinner has used some CPU (it is spinning, not still starting)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            if all(p.cpu_times().user > 0.05 for p in procs):
                return
        time.sleep(0.05)
    raise TimeoutError("the CPU hog's spinners did not start spinning within 60 s")


def wait_done(procs: list[psutil.Process], timeout_s: float = 300.0) -> None:
    """Until every budgeted spinner has used its budget and exited."""
    psutil.wait_procs(procs, timeout=timeout_s)


def wait_cpu(procs: list[psutil.Process], cpu_s: float, timeout_s: float = 300.0) -> None:
    """Until the spinners together used `cpu_s` more CPU seconds than now."""
    def used() -> float:
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.cpu_times().user + p.cpu_times().system
        return total

    start, deadline = used(), time.monotonic() + timeout_s
    while used() - start < cpu_s:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the CPU hog did not use {cpu_s:g} s of CPU in {timeout_s:g} s")
        time.sleep(0.05)
