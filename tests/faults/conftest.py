"""Per-test guard: whatever a fault test starts, it must stop; a leftover fails the test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from .common import descendants, kill_all, marked_under

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(autouse=True)
def no_leftover_processes(tmp_path: Path) -> Iterator[None]:
    """Children of this test and marked workers under its tmp dir are killed and reported."""
    before = {p.pid for p in descendants()}
    yield
    left: dict[int, psutil.Process] = {}
    for p in descendants():
        if p.pid not in before:
            left[p.pid] = p
    for p in marked_under(tmp_path):
        left.setdefault(p.pid, p)
    if left:
        names = []
        for p in left.values():
            try:
                names.append(f"{p.pid}: {' '.join(p.cmdline())[:120]}")
            except psutil.Error:
                names.append(str(p.pid))
        kill_all(list(left.values()))
        pytest.fail("test left processes behind (killed now): " + "; ".join(names))
