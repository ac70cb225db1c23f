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

from llorch_harness.gate.checklist import CP4_SECTION, gate_marker_args

ITEMS_ENV = "LLORCH_BISECT_ITEMS"
# CP4's items judge what the inference checks of the model saw ("every inference check ran
# and passed", every worker life): choosing one keeps those checks selected too.
NEEDS = {CP4_SECTION: ("Qwen Testing", CP4_SECTION)}


def chosen_items(env: dict[str, str] | None = None) -> set[str] | None:
    raw = (os.environ if env is None else env).get(ITEMS_ENV)
    if not raw:
        return None
    items = json.loads(raw)
    return {str(i) for i in items} if isinstance(items, list) else None


def marker_of(test: Any) -> tuple[str, str] | None:
    """(section, item) of a test's gate marker."""
    mark = test.get_closest_marker("gate")
    if mark is None:
        return None
    try:
        return gate_marker_args(mark.args, mark.kwargs)
    except ValueError:
        return None


def keeps(marker: tuple[str, str] | None, want: set[str], sections: set[str]) -> bool:
    return marker is not None and (marker[1] in want or marker[0] in sections)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[Any]) -> None:
    want = chosen_items()
    if want is None:
        return
    marks = [marker_of(t) for t in items]
    chosen = {m[0] for m in marks if m is not None and m[1] in want}
    sections = {s for c in chosen for s in NEEDS.get(c, ())}
    keep = [t for t, m in zip(items, marks, strict=True) if keeps(m, want, sections)]
    drop = [t for t, m in zip(items, marks, strict=True) if not keeps(m, want, sections)]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
