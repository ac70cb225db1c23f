"""The run key of a gate session, and whether the session measured performance at all.

Why a module this small: the plugin calls it on every gate run (xdist's node set-up, the
session's end), so it imports nothing but pytest and uuid; the rest of the package is
imported only when a run did measure. The key is made once on the controller and handed
to xdist workers, so every record of one run carries the same key.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

PERF_SECTION = "Qwen Testing"
PERF_ITEM = "No performance regression"
WORKERINPUT_KEY = "llorch_perf_run"
RUN_KEY = pytest.StashKey[str]()


def run_key(config: pytest.Config) -> str:
    """This session's run key: the controller's (an xdist worker's came in workerinput)."""
    given = getattr(config, "workerinput", {}).get(WORKERINPUT_KEY)
    if isinstance(given, str) and given:
        return given
    key = config.stash.get(RUN_KEY, None)
    if key is None:
        key = uuid.uuid4().hex
        config.stash[RUN_KEY] = key
    return key


def ran_perf(config: pytest.Config, collector: Any) -> bool:
    """Did this session record performance (the item ran: passed, failed, or could not
    check on a busy host, which records too)?"""
    return RUN_KEY in config.stash and any(
        r.item == PERF_ITEM and r.status in ("pass", "fail", "error")
        for r in collector.results.values())
