"""Issue 28 item 3: the reports checked where people read them, in headless Chromium.

pytest-html builds its tables with JavaScript, so the per-pool report is only what a person
sees once a browser ran it. The per-pool, merged and history pages of one embedded gate run
(tests/gatereports.py) are opened at 1280x800 (tests/browser.py `look_at`): the verdict is
on the first screen, every checklist row is there, no script error reaches the console,
and the text a person reads (pytest-html's details expanded) holds no `None`, no Python
tuple and no raw Markdown; the logs (tracebacks are code) no tuple and no `None` shown
for a skip.

Run them: `.venv/bin/pytest tests/test_report_browser.py -p no:cacheprovider` (Debian's
`chromium` installed; without it they skip, except in CI where they fail).
"""

from __future__ import annotations

import pytest

from llorch_harness.gate.checklist import checklist
from tests import gatereports
from tests.browser import chromium, look_at
from tests.gatereports import GateReports
from tests.reporttext import text_problems

pytestmark = pytest.mark.slow
gate_reports = gatereports.gate_reports  # the one gate run, shared (session scope)


def _above_the_fold(look, selector: str) -> dict:
    boxes = look.rects[selector]
    assert boxes, f"{selector} not on the page"
    box = boxes[0]
    assert box["height"] > 0 and 0 <= box["top"] < look.viewport[1], (selector, box,
                                                                      look.viewport)
    return box


def test_pool_report_in_chromium(gate_reports: GateReports) -> None:
    chromium()
    look = look_at(gate_reports.pool_page, ["#llorch-verdict", "#llorch-lab-banner",
                                            "tr.llorch-item", "#environment",
                                            "#results-table tbody"])
    assert look.console_errors() == []
    verdict = _above_the_fold(look, "#llorch-verdict")
    assert verdict["text"].startswith("CP3 verdict:") and "items:" in verdict["text"]
    assert verdict["top"] < look.rects["#environment"][0]["top"]  # first, before the tables
    _above_the_fold(look, "#llorch-lab-banner")
    rows = [r["text"] for r in look.rects["tr.llorch-item"]]
    for gi in checklist():
        assert any(gi.item.replace("`", "") in r for r in rows), gi.item
    assert len(look.rects["#results-table tbody"]) >= len(gate_reports.pool_json["items"])
    assert text_problems(look.text) == []
    for log in look.logs:
        assert text_problems(log, markdown=False) == [], log[:500]


def test_merged_page_in_chromium(gate_reports: GateReports) -> None:
    chromium()
    look = look_at(gate_reports.merged_page, ["#verdict", "#checklist tr.item", "#problems"])
    assert look.console_errors() == []
    verdict = _above_the_fold(look, "#verdict")
    assert verdict["text"].startswith("CP3 verdict:") and "items:" in verdict["text"]
    rows = [r["text"] for r in look.rects["#checklist tr.item"]]
    for gi in checklist():
        assert any(gi.item.replace("`", "") in r for r in rows), gi.item
    assert text_problems(look.text) == []


def test_history_page_in_chromium(gate_reports: GateReports) -> None:
    chromium()
    look = look_at(gate_reports.history_page, ["#verdict", ".llorch-perf-panel"])
    assert look.console_errors() == []
    verdict = _above_the_fold(look, "#verdict")
    assert verdict["text"].startswith("latest: ")
    assert look.rects[".llorch-perf-panel"]
    assert text_problems(look.text) == []
