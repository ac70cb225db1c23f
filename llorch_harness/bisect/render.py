"""The bisect's self-contained HTML page, in the style of the gate's merged report.

Every value on the page (subjects, authors, file names, reasons, refs) is text from outside:
each one goes through `html.escape` and the one redaction, and nothing is ever placed in
markup unescaped; the page fetches nothing.
"""

from __future__ import annotations

import html
from typing import Any

from llorch_harness.bisect.driver import BisectResult
from llorch_harness.bisect.report import (
    PATH_TEXT,
    RULE_TEXT,
    answer,
    build_cell,
    runs_cell,
    to_json,
)
from llorch_harness.fsutil import atomic_write_text
from llorch_harness.redaction import redact

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#1f2328}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #d0d7de;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f6f8fa}
.reason{font-size:.85em;color:#57606a;max-width:40em;overflow-wrap:anywhere}
.verdict{font-size:1.4em;font-weight:bold;padding:8px;border:3px solid}
.bad{color:#cf222e}.good{color:#1a7f37}.skip{color:#9a6700}code{font-size:.9em}
"""


def _e(value: object) -> str:
    return html.escape(redact(str(value)), quote=True)


def render_html(result: BisectResult) -> str:
    doc = to_json(result)
    ans = answer(result)
    color = "#cf222e" if ans["exact"] else "#9a6700"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>llorch bisect: {_e(ans['text'])}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>llorch-harness bisect: {_e(doc['good']['ref'])}..{_e(doc['bad']['ref'])}</h1>",
           f'<p id="answer" class="verdict" style="color:{color};border-color:{color}">'
           f"{_e(ans['text'])}</p>"]
    out += _answer_html(ans)
    out.append("<h2>How</h2><ul>")
    out += [f"<li>{_e(k)}: {_e(v)}</li>" for k, v in (
        ("repository", doc["repo"]), ("backend", doc["backend"]),
        ("good", f"{doc['good']['ref']} {doc['good']['sha']}"),
        ("bad", f"{doc['bad']['ref']} {doc['bad']['sha']}"),
        ("path", PATH_TEXT), ("commits in the range", doc["range_size"]),
        ("items", "; ".join(doc["items"]) + f" ({doc['items_from']})"),
        ("runs per commit", doc["runs"]), ("rule", RULE_TEXT),
        ("build command", " ".join(doc["build_command"])),
        ("test steps", doc["test_steps"]), ("started", doc["started_at"]),
        ("finished", doc["finished_at"]), ("harness", doc["harness_version"]))]
    out.append("</ul>")
    out += _steps_html(result)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _answer_html(ans: dict[str, Any]) -> list[str]:
    if not ans["exact"]:
        rows = ["<table id=\"range\"><tr><th>commit</th><th>subject</th><th>author</th>"
                "<th>date</th><th>decision</th></tr>"]
        rows += [f"<tr><td><code>{_e(c['sha'])}</code></td><td>{_e(c['subject'])}</td>"
                 f"<td>{_e(c['author'])}</td><td>{_e(c['date'])}</td>"
                 f"<td class=\"{_e(c['decision'])}\">{_e(c['decision'])} {_e(c['note'])}</td>"
                 "</tr>" for c in ans["range"]]
        return [*rows, "</table>"]
    fb, parent = ans["first_bad"], ans.get("parent") or {}
    out = ['<table id="first-bad">']
    out += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in (
        ("commit", fb["sha"]), ("subject", fb["subject"]), ("author", fb["author"]),
        ("date", fb["date"]), ("files changed", ", ".join(fb["files"]) or "(none)"))]
    out.append("</table><table id=\"items\"><tr><th>item</th><th>at the first bad commit"
               f"</th><th>at its parent {_e(str(parent.get('sha', ''))[:12])}</th></tr>")
    for item, v in ans["items"].items():
        out.append(f"<tr><td>{_e(item)}</td><td class=\"bad\">"
                   f"{_e(' '.join(s.upper() for s in v['at_first_bad']))}"
                   f"<div class=\"reason\">{_e(v['reason'])}</div></td>"
                   f"<td class=\"good\">{_e(' '.join(s.upper() for s in v['at_parent']))}"
                   "</td></tr>")
    return [*out, "</table>"]


def _steps_html(result: BisectResult) -> list[str]:
    out = ["<h2>Steps</h2>", '<table id="steps"><tr><th>step</th><th>commit</th>'
           "<th>subject</th><th>build</th><th>runs (P pass, F fail, E could not check, "
           "S skip), per item</th><th>decision</th></tr>"]
    for s in result.steps:
        decision = "-" if s.phase == "discover" else s.decision
        why = s.note or (next((r for r in (s.reason(i, "fail") for i in result.items) if r), "")
                         if decision == "bad" else "")
        out.append(f"<tr><td>{_e(s.label)}</td><td><code>{_e(s.commit.short)}</code></td>"
                   f"<td>{_e(s.commit.subject)}</td><td>{_e(build_cell(s))}</td>"
                   f"<td>{_e(runs_cell(s, result.items))}</td>"
                   f"<td class=\"{_e(decision)}\">{_e(decision.upper())}"
                   f"<div class=\"reason\">{_e(why[:300])}</div></td></tr>")
    return [*out, "</table>"]


def write_html(result: BisectResult, path: Any) -> None:
    atomic_write_text(path, render_html(result))
