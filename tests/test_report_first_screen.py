"""Issue 28 item 2: the first screen of the reports a person hands in, and every text in them.

One embedded gate run (tests/gatereports.py) gives the per-pool report, the merged page of
its result under two pool names and the history page. Checked here without a browser:
the verdict block comes first with item counts that match the gate JSON and names the
items that need another pool; no `None`, no Python tuple, no raw Markdown in any text the
pages, their pytest-html rows and logs, and their attachments hold; the merged "Why not
a pass" lists each item once with the word its table uses; the memory table says where
each number came from and shows what `/health` answered. tests/test_report_browser.py
looks at the same pages in Chromium.
"""

from __future__ import annotations

import html as htmlmod
import json
import re
from collections import Counter
from typing import Any

import pytest

from llorch_harness.gate.checklist import GateCollector
from llorch_harness.plugin import firstscreen
from llorch_harness.plugin import report as rpt
from tests import gatereports
from tests.gatereports import GateReports
from tests.reporttext import attachments, readable_text, text_problems

pytestmark = pytest.mark.slow
gate_reports = gatereports.gate_reports  # the one gate run, shared (session scope)


def _rows(page: str) -> dict[str, list[dict[str, Any]]]:
    """pytest-html's per-test data (result cells and log) from the page's JSON blob."""
    m = re.search(r'data-jsonblob="([^"]*)"', page)
    assert m, "no pytest-html data blob in the report"
    return json.loads(htmlmod.unescape(m.group(1)))["tests"]


def test_pool_report_starts_with_the_verdict_and_its_counts(gate_reports: GateReports) -> None:
    page = gate_reports.pool_page.read_text()
    first = page.index('id="llorch-verdict"')
    assert first < page.index('id="llorch-lab-banner"') < page.index('id="llorch-cp3-checklist"')
    block = readable_text(page[page.rindex("<div", 0, first):page.index("</div></div>", first)])
    doc = gate_reports.pool_json
    statuses = Counter("skip" if r["status"] == "xfail" else r["status"]
                       for r in doc["checklist"])
    assert f"CP3 verdict: {doc['verdict_line']}" in block or doc["verdict"].upper() in block
    assert firstscreen.counts_text(statuses) in block, block
    # the metal and cuda items need another pool, and the block says which backend each needs
    assert "need another pool:" in block and "Qwen works on Metal (mac) (metal)" in block
    assert "Qwen works on CUDA (workstation) (cuda)" in block


def test_pool_report_texts_hold_no_none_tuple_or_markdown(gate_reports: GateReports) -> None:
    page = gate_reports.pool_page.read_text()
    assert text_problems(readable_text(page)) == []
    tests = _rows(page)
    skipped = 0
    for nodeid, runs in tests.items():
        for run in runs:
            cells = readable_text("".join(run["resultsTableRow"]))
            log = readable_text("".join(run.get("log") or []) if isinstance(run.get("log"), list)
                                else str(run.get("log") or ""))
            assert text_problems(cells) == [], nodeid
            assert text_problems(log, markdown=False) == [], (nodeid, log[:500])
            if run["result"].lower() == "skipped":
                skipped += 1
                assert log.startswith("Skipped: "), (nodeid, log[:300])
    assert skipped, "the embedded cpu gate skips the Code Quality items: a skip log to check"
    found = attachments(page)
    assert found, "a self-contained report carries its attachments"
    for text in found:
        assert text_problems(text, markdown=False) == [], text[:500]


def test_merged_page_lists_each_problem_once_in_its_tables_word(
        gate_reports: GateReports) -> None:
    page = gate_reports.merged_page.read_text()
    assert text_problems(readable_text(page)) == []
    problems = re.search(r'<ul id="problems"[^>]*>(.*?)</ul>', page, re.DOTALL)
    assert problems, "the merged embedded-lab result is not a pass: a Why not a pass list"
    bullets = [readable_text(b).strip()
               for b in re.findall(r"<li>(.*?)</li>", problems.group(1), re.DOTALL)]
    assert len(bullets) == len(set(bullets)), bullets
    words = {}  # item -> the word its row in the checklist table shows
    for row in re.findall(r'<tr class="item">(.*?)</tr>', page, re.DOTALL):
        item = readable_text(re.match(r"<td>(.*?)<div", row, re.DOTALL).group(1)).strip()
        words[item] = readable_text(re.search(r'class="item-verdict"[^>]*>(.*?)<', row)
                                    .group(1)).strip()
    for item in {r["item"].replace("`", "") for r in gate_reports.merged_json["items"]}:
        said = [b for b in bullets if re.match(rf"[A-Z ]+ {re.escape(item)} \(", b)]
        assert len(said) <= 1, said  # once, whatever the number of pools
        if said:
            assert said[0].startswith(words[item] + " "), (said[0], words[item])
            assert words[item] != "PASS"
    # one pool result under two names: the pools are named together, not in two bullets
    assert any("pools mac, workstation" in b for b in bullets), bullets


def test_history_page_starts_with_the_latest_verdict(gate_reports: GateReports) -> None:
    page = gate_reports.history_page.read_text()
    assert text_problems(readable_text(page)) == []
    m = re.search(r'<div id="verdict"[^>]*>(.*?)</div>', page, re.DOTALL)
    assert m and "latest: tiny-qwen on cpu" in m.group(1) and "#1 " in m.group(1), page[:2000]
    assert page.index('id="verdict"') < page.index('id="llorch-perf"')


def test_memory_table_says_where_each_number_comes_from(gate_reports: GateReports) -> None:
    page = gate_reports.pool_page.read_text()
    table = re.search(r'<table class="llorch-memory"[^>]*>(.*?)</table>', page, re.DOTALL)
    assert table, "the gate's worker lives have a memory table"
    heads = [readable_text(h) for h in re.findall(r"<th>(.*?)</th>", table.group(1))]
    assert all("(" in h for h in heads[2:]), heads  # each figure names its source
    rows = [[readable_text(c) for c in re.findall(r"<td>(.*?)</td>", r)]
            for r in re.findall(r'<tr class="llorch-memory-life">(.*?)</tr>', table.group(1))]
    health_col = next(i for i, h in enumerate(heads) if h.startswith("/health vram_bytes"))
    lives = [r for r in gate_reports.pool_json["memory"] if r.get("backend") == "cpu"]
    assert lives and len(rows) == len(lives)
    for life, row in zip(lives, rows, strict=True):
        # the contract: /health answers 0 on a cpu build; the callback's size is elsewhere
        assert life["health_vram_bytes"] == 0, life
        assert row[health_col] == "0 bytes", row
        assert row[health_col - 1].startswith(f"{life['vram_bytes_reported']} bytes"), row


def _expect_failure(message: str) -> Any:
    """The longrepr pytest makes for `pytest.fail(msg, pytrace=False)` (gatehelpers.expect)."""
    try:
        pytest.fail(message, pytrace=False)
    except pytest.fail.Exception:
        return pytest.ExceptionInfo.from_current().getrepr(style="value")
    raise AssertionError("unreachable")


def test_a_failure_reason_carries_the_actual_value_beside_the_expected() -> None:
    collector = GateCollector()
    props = {"gate_section": "Qwen Testing", "gate_item": "No performance regression",
             "gate_backend": "cpu", "gate_scope": "backend"}
    longrepr = _expect_failure(
        "expected: every figure within its baseline band: median of the last 5 passing runs "
        "± max(3 MAD, 10 %)\ngot: REGRESSION worker load time (spawn to ready) 4.41 s vs "
        "baseline 2.05 s ± 0.21 s (+115 %)\nlook at: the performance panel")
    collector.add_report("tests_hw/test_performance.py::t[cpu]", "call", "failed", props,
                         longrepr, 1.0)
    row = next(r for r in collector.item_rollup() if r["item"] == "No performance regression")
    assert row["status"] == "fail"
    reason = row["reasons"][0]
    assert "+115 %" in reason and "4.41 s" in reason and "expected every figure" in reason
    page = rpt.checklist_html(collector.item_rollup(), collector.verdict())
    assert "+115 %" in page
