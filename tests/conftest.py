"""Shared set-up for the harness's own tests.

Hub client switches are set before anything imports huggingface_hub (it reads
them once, at import). At the end of the session no process spawned by a test
may survive: a leftover is killed and turns the run red, so a leak is never silent.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

MARKER = "LLORCH_HARNESS_POOL"


def leftover_marked_processes(base: Path) -> list[psutil.Process]:
    """Processes carrying the spawn marker with a pool root inside this run's temp dir."""
    found = []
    prefix = str(base.resolve())
    for proc in psutil.process_iter(["pid", "environ"]):
        try:
            env = proc.info.get("environ") or {}
        except (psutil.Error, OSError):
            continue
        root = env.get(MARKER)
        if root and root.startswith(prefix) and proc.pid != os.getpid():
            found.append(proc)
    return found


def pytest_configure(config: pytest.Config) -> None:
    """Tests stop their children with SIGINT (Ctrl-C) and expect what a user gets. A suite
    started as a background job of a script (`cmd &`, a CI step) inherits SIGINT ignored,
    and every child it starts would inherit that too, so those tests failed there: Python's
    handler is restored here, and children then start with SIGINT's default action."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Gate runs started by these tests keep the embedded lab's results store in the user's
    data directory (platformdirs, perf/session.py): point it into this run's temp dir, so
    tests never write into the home directory of whoever runs them."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        os.environ["XDG_DATA_HOME"] = str(factory.getbasetemp() / "xdg-data")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return  # the controller checks once every xdist worker is done
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    base = factory.getbasetemp()
    leaks = leftover_marked_processes(base)
    if not leaks:
        return
    lines = []
    for proc in leaks:
        try:
            lines.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()
        except psutil.Error:
            continue
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "harness test run leaked worker processes (killed now):\n  " + "\n  ".join(lines)
    if reporter is not None:
        reporter.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded tiny Qwen2 (small vocabulary, seed 0), built once per session for the
    reference-check tests."""
    from llorch_harness.lab.tinymodel import build_tiny_model

    out = tmp_path_factory.mktemp("ref") / "tiny-qwen"
    build_tiny_model(out)
    return out


@pytest.fixture(scope="session")
def numpy_ref(tiny: Path) -> Any:
    """The numpy reference on `tiny`."""
    from llorch_harness.checks.reference import NumpyReference

    return NumpyReference(tiny)
