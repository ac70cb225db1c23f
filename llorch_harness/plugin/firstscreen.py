"""What a person sees first in a gate run's HTML report, and what keeps the report true.

Why a module of its own: pytest-html lays the page out (title, environment table, then the
summary), writes attachments to a shared `assets/` folder that the next run overwrites, and
shows a skip's `longrepr` as the Python tuple `('/path', 110, 'Skipped: ...')`. The gate
fixes the three here (issue 28 items 1 and 2):

- `make_self_contained`: a gate run's `--html` report is self-contained (attachments
  embedded as data: URLs), so run 1's report still says run 1's outcome after run 4.
- `verdict_html` + `FIRST_SCREEN_CSS`: the verdict, big, with counts (pass, fail, could not
  check, skip, not run) and the items that need another pool, as the first block under the
  title; the CSS moves pytest-html's environment table below the summary.
- `clean_log`: a skip's or xfail's log entry as the sentence it is, not a tuple.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from llorch_harness.gate.checklist import CHECKPOINT
from llorch_harness.safetext import html, inline_code, join

VERDICT_STYLE = {"pass": "#1a7f37", "fail": "#cf222e", "incomplete": "#bc4c00",
                 "not run": "#57606a"}
BIG_LINE_MAX = 90  # a longer verdict line (a lab cause's whole evidence) goes under the word
COUNT_LABELS = (("pass", "pass"), ("fail", "fail"), ("error", "could not check"),
                ("skip", "skip"), ("not run", "not run"))

# pytest-html's body: h1, "Report generated", environment, summary, results table. The
# summary (our verdict first in it) goes right under the title; the environment after it.
FIRST_SCREEN_CSS = (
    "<style>body{display:flex;flex-direction:column;align-items:stretch}"
    "#title{order:0}body>p{order:1}.summary{order:2}#environment-header{order:3}"
    "#environment{order:4;align-self:flex-start}#results-table{order:5}footer{order:6}"
    ".summary>.summary__data>h2{display:none}"
    "#llorch-verdict{font-size:1.9em;font-weight:bold;padding:10px 14px;border:4px solid;"
    "margin:6px 0}#llorch-verdict .counts{font-size:.55em;font-weight:normal;"
    "color:#1f2328;margin-top:4px}#llorch-verdict .elsewhere{font-size:.45em;"
    "font-weight:normal;color:#57606a;margin-top:2px}</style>")


def make_self_contained(config: pytest.Config) -> bool:
    """Turn on pytest-html's `--self-contained-html` when the gate writes `--html`: the
    attachments then live inside the page and no later run can change them. Runs before
    pytest-html's own configure (the gate's configure is tryfirst). True when turned on."""
    if not getattr(config.option, "htmlpath", None):
        return False
    if getattr(config.option, "self_contained_html", None) is True:
        return False
    config.option.self_contained_html = True
    return True


def needs_other_pool(row: Mapping[str, Any], here: Iterable[str]) -> list[str]:
    """The backends an item concerns when none of them is usable on this pool (empty: it
    could run here)."""
    concerns = list(row.get("concerns") or [])
    if not concerns or row.get("status") not in ("skip", "not run"):
        return []
    usable = set(here)
    return [] if usable & set(concerns) else concerns


def item_counts(rollup: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Items per status (pass, fail, error = could not check, skip, not run)."""
    counts = {key: 0 for key, _ in COUNT_LABELS}
    for row in rollup:
        status = "skip" if row["status"] == "xfail" else row["status"]
        counts[status] = counts.get(status, 0) + 1
    return counts


def counts_text(counts: Mapping[str, int]) -> str:
    """`12 pass · 1 fail · 0 could not check · 5 skip` (not run only when there is one)."""
    parts = [f"{counts.get(key, 0)} {label}" for key, label in COUNT_LABELS
             if key != "not run" or counts.get(key)]
    return " · ".join(parts)


def verdict_html(rollup: list[dict[str, Any]], verdict: str, verdict_line: str,
                 here: Iterable[str]) -> str:
    """The first block of the page: `CP3 verdict: FAIL (worker: 1 item)`, the item counts,
    and which items need another pool (with the backend each needs)."""
    color = VERDICT_STYLE.get(verdict, "#cf222e")
    usable = list(here)
    elsewhere = [html("{} ({})", inline_code(r["item"]), " or ".join(need))
                 for r in rollup if (need := needs_other_pool(r, usable))]
    other = html('<div class="elsewhere">need another pool: {}</div>',
                 join("; ", elsewhere)) if elsewhere else ""
    big = verdict_line if len(verdict_line) <= BIG_LINE_MAX else verdict.upper()
    detail = "" if big == verdict_line else html('<div class="elsewhere">{}</div>',
                                                 inline_code(verdict_line))
    return str(html('<div id="llorch-verdict" class="llorch-verdict-{}" style="color:{};'
                    'border-color:{}">{} verdict: {}<div class="counts">items: {}</div>{}{}'
                    "</div>", verdict.replace(" ", "-"), color, color, CHECKPOINT,
                    inline_code(big), counts_text(item_counts(rollup)), detail, other))


def clean_log(report: pytest.TestReport, data: list[str]) -> None:
    """A skip's (or xfail's) log as a sentence: pytest-html writes `str(longrepr)`, which for
    a skip is the tuple `(path, line, 'Skipped: why')`. In place; other logs untouched."""
    longrepr = report.longrepr
    if not (report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3):
        return
    reason = str(longrepr[2])
    sentence = reason if reason.startswith(("Skipped", "XFAIL", "xfail")) \
        else f"Skipped: {reason}"
    line_no = f", line {longrepr[1]}" if isinstance(longrepr[1], int) else ""
    where = f" ({longrepr[0]}{line_no})" if longrepr[0] else ""
    line = str(html("{}{}\n", sentence, where))
    if data:
        data[0] = line
    else:
        data.append(line)
