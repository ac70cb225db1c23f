"""Device groups under xdist: every test of one device on one xdist worker.

Why not xdist's own `xdist_group`: pytest-xdist 3.8 puts an item's group into its node id
(`item._nodeid = nodeid + "@group"`), and from pytest 9 on `nodeid` is computed from the
item's structured id, so the assignment is silently lost: no node id carries a group, the
`loadgroup` scheduler sees each test as its own unit, and two xdist workers can run workers
on the same GPU at once (and a model's checks land on a worker that never saw the rest).
So each xdist worker writes its items' groups (`{nodeid: group}`, identical on every worker:
the collection is) into a directory the controller made, before it reports its collection;
the controller's scheduler (xdist's public `pytest_xdist_make_scheduler` hook) reads them
and keeps each group one unit of work, in collection order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from llorch_harness.fsutil import atomic_write_text

WORKERINPUT_KEY = "llorch_groups_dir"


def groups_of(items: list[pytest.Item]) -> dict[str, str]:
    """nodeid -> device group of every item that carries an xdist_group mark."""
    out = {}
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names:
            out[item.nodeid] = "_".join(names)
    return out


def write_groups(directory: str | Path, worker: str, groups: dict[str, str]) -> None:
    """One file per xdist worker (atomic: the controller never reads half a file)."""
    atomic_write_text(Path(directory) / f"{worker}.json", json.dumps(groups))


def read_groups(directory: str | Path) -> dict[str, str]:
    """The groups every worker wrote (they agree; the union covers a worker that failed)."""
    found: dict[str, str] = {}
    for path in sorted(Path(directory).glob("*.json")):
        try:
            found.update(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return found


def make_scheduler(config: pytest.Config, log: Any, directory: str | Path) -> Any:
    """xdist's loadgroup scheduler, with the groups taken from the workers' files."""
    from xdist.scheduler import LoadGroupScheduling

    class DeviceGroupScheduling(LoadGroupScheduling):
        """A test of a device group belongs to that group's unit; any other is its own."""

        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:  # first asked in schedule(), after every collection
                self._groups = read_groups(directory)
            group = self._groups.get(nodeid)
            # not ours (or an xdist that got its suffix through): xdist's own rule
            return f"@{group}" if group is not None else super()._split_scope(nodeid)

    return DeviceGroupScheduling(config, log)


def worker_name() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER") or "main"
