"""A pytest plugin the bisect loads into the gate's own run (`-p llorch_harness.bisect.select`):
only the tests of the chosen checklist items stay selected.

Why a plugin and not `-k`: items are named by their `gate(section, item)` marker, not by test
names, and one item has tests in several modules. Deselected tests are reported to pytest as
such, so the gate's checklist shows the other items as NOT RUN, exactly as a `-m` selection
would. The items come in `LLORCH_BISECT_ITEMS` (a JSON list), set by the bisect only.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from llorch_harness.gate.checklist import gate_marker_args

ITEMS_ENV = "LLORCH_BISECT_ITEMS"


def chosen_items(env: dict[str, str] | None = None) -> set[str] | None:
    raw = (os.environ if env is None else env).get(ITEMS_ENV)
    if not raw:
        return None
    items = json.loads(raw)
    return {str(i) for i in items} if isinstance(items, list) else None


def item_of(test: Any) -> str | None:
    mark = test.get_closest_marker("gate")
    if mark is None:
        return None
    try:
        return gate_marker_args(mark.args, mark.kwargs)[1]
    except ValueError:
        return None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[Any]) -> None:
    want = chosen_items()
    if want is None:
        return
    keep = [t for t in items if item_of(t) in want]
    drop = [t for t in items if item_of(t) not in want]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
