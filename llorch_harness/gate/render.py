"""The merged verdict as people and tools read it: HTML page, JSON document, terminal lines.

Why apart from the merge: rendering only reads a `MergedGate`; report links are made
relative to the page that holds them, and every text written passes the one redaction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from llorch_harness import __version__
from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import atomic_write_text, refuse_non_regular_target
from llorch_harness.gate import mergeview, modelsupport
from llorch_harness.gate.checklist import CHECKPOINT
from llorch_harness.gate.results import PoolResult
from llorch_harness.gate.supportrender import render_html_section, render_markdown
from llorch_harness.redaction import redact
from llorch_harness.safetext import inline_code, term_text
from llorch_harness.safetext import text as html_text

if TYPE_CHECKING:  # the merge imports this module: the type only, no import cycle
    from llorch_harness.gate.merge import MergedGate

MERGE_SCHEMA = 1


def find_report(result: PoolResult, explicit: str | None) -> Path | str | None:
    """--report wins; else the document's `report` field; else a .html twin of the JSON."""
    if explicit:
        return Path(explicit)
    if result.report:
        parts = urlsplit(result.report)
        if parts.scheme in ("http", "https"):
            return result.report
        if not parts.scheme and not parts.netloc:
            p = Path(result.report)
            return p if p.is_absolute() else result.source.parent / p
        return None  # anything else (javascript:, file:, ...) is never made a link
    twin = result.source.with_suffix(".html")
    return twin if twin.is_file() else None


def link_for(target: Path | str, page_dir: Path) -> str:
    """A URL for `target` as seen from a page in `page_dir` (relative when it can be)."""
    if isinstance(target, str):
        return target
    try:
        rel = os.path.relpath(target.resolve(), page_dir.resolve())
    except ValueError:  # another drive (Windows)
        return target.resolve().as_uri()
    return quote(Path(rel).as_posix())


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") \
        if when else None


def to_json(m: MergedGate, reports: Mapping[str, Path | str | None], page_dir: Path) -> dict:
    """The merged document (`--json`); links relative to `page_dir`. `model_support` is
    the CP4 matrix (`gate.modelsupport.to_json`), null when no pool reported model runs."""
    support = modelsupport.build(m)
    return {
        "schema": MERGE_SCHEMA,
        "kind": "llorch-harness gate merge",
        "checkpoint": CHECKPOINT,
        "harness_version": __version__,
        "generated_at": _iso(m.generated_at),
        "verdict": m.verdict,
        "verdict_line": m.verdict_line,
        "max_age_hours": m.max_age_h,
        "expected_pools": m.expected,
        "problems": m.problems,
        "lab_failures": m.lab_problems,
        "missing_pools": m.missing_pools,
        "stale_pools": m.stale,
        "pools": [
            {
                "name": p.name, "source": link_for(p.source, page_dir),
                "report": link_for(r, page_dir) if (r := reports.get(p.name)) else None,
                "hostname": p.hostname, "lab": p.lab, "backends": list(p.roles),
                "backends_available": list(p.backends_available),
                "harness_version": p.harness_version, "gate_model": p.gate_model,
                "started_at": _iso(p.started_at), "finished_at": _iso(p.finished_at),
                "age_hours": round((m.generated_at - p.finished_at).total_seconds() / 3600, 2),
                "stale": m.stale.get(p.name), "exitstatus": p.exitstatus,
                "worker_binaries": {
                    b: {"path": v.get("path"), "sha256": v.get("sha256")}
                    for b, v in sorted(p.worker_binaries.items())
                },
            }
            for p in m.pools
        ],
        "items": [
            {
                "section": r.section, "item": r.item, "seed": r.seed,
                "concerns": list(r.concerns), "ok": r.ok, "note": r.note,
                "pools": {n: {"status": c.status, "required": c.required, "reason": c.reason,
                              **({"lab_cause": c.lab_cause} if c.lab_cause else {})}
                          for n, c in r.cells.items()},
            }
            for r in m.rows
        ],
        "model_support": modelsupport.to_json(support) if support else None,
    }


_STYLE = {
    "pass": ("PASS", "#1a7f37"), "fail": ("FAIL", "#cf222e"), "skip": ("SKIP", "#9a6700"),
    "error": ("ERROR", "#bc4c00"),
    "xfail": ("XFAIL", "#9a6700"), "not run": ("NOT RUN", "#cf222e"), "n/a": ("n/a", "#8c959f"),
}
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#1f2328}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #d0d7de;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f6f8fa}.section td{background:#eaeef2;
font-weight:bold}.reason{font-size:.85em;color:#57606a;max-width:28em;overflow-wrap:anywhere}
.verdict{font-size:1.9em;font-weight:bold;padding:10px 14px;border:4px solid;margin:6px 0}
.verdict .counts{font-size:.55em;font-weight:normal;color:#1f2328;margin-top:4px}
.verdict .elsewhere{font-size:.45em;font-weight:normal;color:#57606a;margin-top:2px}
.problems li{margin:.2em 0}code{font-size:.9em}
"""


def _e(value: object) -> str:
    return str(html_text(value))  # the one escaping layer (safetext)


def _code(value: object) -> str:
    """A checklist text with its `code` spans as <code> (never raw backticks)."""
    return str(inline_code(value))


def _known(value: object) -> str:
    return _e("unknown" if value is None or value == "" else value)


def _badge(status: str, required: bool) -> str:
    label, color = _STYLE.get(status, (status.upper(), "#57606a"))
    weight = "bold" if required else "normal"
    tag = "" if required or status == "n/a" else " (not required)"
    return f'<span style="color:{color};font-weight:{weight}">{_e(label)}{_e(tag)}</span>'


def render_html(m: MergedGate, reports: Mapping[str, Path | str | None], page_dir: Path,
                extra_html: str = "") -> str:
    """A self-contained page: verdict, problems, pools (with report links), the checklist,
    the model support matrix when pools reported model runs (CP4), then `extra_html` (the
    pools' performance, llorch_harness.perf)."""
    color = {"pass": "#1a7f37", "incomplete": "#bc4c00"}.get(m.verdict, "#cf222e")
    out = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(CHECKPOINT)} gate: merged verdict ({_e(m.verdict.upper())})</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(CHECKPOINT)} gate: all pools</h1>",
        f'<div id="verdict" class="verdict" style="color:{color};border-color:{color}">'
        f"{_e(CHECKPOINT)} verdict: {_code(m.verdict_line)}"
        f'<div class="counts">items: {_e(mergeview.counts_text(m))}</div>'
        + (f'<div class="elsewhere">need another pool: '
           f"{'; '.join(_code(n) for n in mergeview.needs_pool(m))}</div>"
           if mergeview.needs_pool(m) else "") + "</div>",
        f"<p>Merged by llorch-harness {_e(__version__)} at {_e(_iso(m.generated_at))}; "
        f"results older than {m.max_age_h:g} h or from another harness version are stale."
        + (f" Expected pools: {_e(', '.join(m.expected))}." if m.expected else "") + "</p>",
    ]
    if m.problems:
        out.append('<h2>Why not a pass</h2><ul id="problems" class="problems">')
        out += [f"<li>{_code(p)}</li>" for p in mergeview.grouped_problems(m)]
        out.append("</ul>")
    if m.lab_problems:  # the lab's failures: not evidence against the worker
        out.append("<h2>Could not check: lab failures (not the worker's fault)</h2>"
                   '<ul id="lab-failures" class="problems">')
        out += [f"<li>{_code(p)}</li>" for p in dict.fromkeys(m.lab_problems)]
        out.append("</ul>")
    out += _pools_table(m, reports, page_dir)
    out += _checklist_table(m)
    out.append(render_html_section(modelsupport.build(m)))
    if extra_html:
        out.append(extra_html)
    out.append("</body></html>\n")
    return "\n".join(out)


def _pools_table(m: MergedGate, reports: Mapping[str, Path | str | None],
                 page_dir: Path) -> list[str]:
    """One row per pool (host, lab, backends, binaries, links), then the missing ones."""
    out = ['<h2>Pools</h2><table id="pools"><tr><th>pool</th><th>host</th><th>lab</th>'
           "<th>backends</th><th>harness</th><th>finished</th><th>worker binaries</th>"
           "<th>report</th></tr>"]
    for p in m.pools:
        r = reports.get(p.name)
        link = (f'<a href="{_e(link_for(r, page_dir))}">report</a>' if r else "none")
        link += f' · <a href="{_e(link_for(p.source, page_dir))}">json</a>'
        bins = "<br>".join(
            f"{_e(b)}: <code>{_known(v.get('path'))}</code> sha256 "
            f"<code>{_known(v.get('sha256'))}</code>"
            for b, v in sorted(p.worker_binaries.items())) or "none"
        stale = (f'<div class="reason" style="color:#cf222e">STALE: {_e(m.stale[p.name])}</div>'
                 if p.name in m.stale else "")
        lab = (f'<span style="color:#cf222e;font-weight:bold">{_e(p.lab)}: reference worker, '
               "not llorch-candled</span>" if p.lab != "real" else _e(p.lab))
        out.append(
            f"<tr><td>{_e(p.name)}</td><td>{_e(p.hostname or '')}</td><td>{lab}</td>"
            f"<td>{_e(', '.join(p.roles) or 'none')}</td><td>{_known(p.harness_version)}</td>"
            f"<td>{_known(_iso(p.finished_at))}{stale}</td><td>{bins}</td><td>{link}</td></tr>")
    for name, why in m.missing_pools.items():
        out.append(f'<tr><td>{_e(name)}</td><td colspan="7" style="color:#cf222e">'
                   f"MISSING: {_e(why)}</td></tr>")
    out.append("</table>")
    return out


def _checklist_table(m: MergedGate) -> list[str]:
    """The checklist by section: one column per pool, then the item's verdict."""
    names = [p.name for p in m.pools] + list(m.missing_pools)
    out = ['<h2>Checklist</h2><table id="checklist"><tr><th>item</th>'
           + "".join(f"<th>{_e(n)}</th>" for n in names) + "<th>item verdict</th></tr>"]
    section = None
    for r in m.rows:
        if r.section != section:
            section = r.section
            out.append(f'<tr class="section"><td colspan="{len(names) + 2}">'
                       f"{_e(section)}</td></tr>")
        cells = []
        for n in names:
            c = r.cells.get(n)
            if c is None:
                cells.append('<td><span style="color:#cf222e">MISSING</span></td>')
                continue
            reason = f'<div class="reason">{_code(c.reason)}</div>' if c.reason else ""
            cells.append(f"<td>{_badge(c.status, c.required)}{reason}</td>")
        word = mergeview.item_word(r)
        verdict = (f'<span class="item-verdict" style="color:{mergeview.WORD_COLOR[word]};'
                   f'font-weight:bold">{_e(word)}</span>')
        note = f'<div class="reason">{_e(r.note)}</div>' if r.note else ""
        concerns = f'<div class="reason">concerns: {_e(", ".join(r.concerns))}</div>'
        out.append(f'<tr class="item"><td>{_code(r.item)}{concerns}</td>{"".join(cells)}'
                   f"<td>{verdict}{note}</td></tr>")
    out.append("</table>")
    return out


def summary_lines(m: MergedGate) -> list[str]:
    """What the terminal shows: one line per pool, the problems, the verdict."""
    lines = []
    for p in m.pools:
        mark = f" STALE ({m.stale[p.name]})" if p.name in m.stale else ""
        lines.append(f"pool {p.name}: {p.lab} lab, backends {', '.join(p.roles) or 'none'}, "
                     f"harness {p.harness_version}, finished {_iso(p.finished_at)}{mark}")
    for name, why in m.missing_pools.items():
        lines.append(f"pool {name}: MISSING ({why})")
    lines += [f"  - {p}" for p in m.problems]
    if m.lab_problems:
        lines.append("could not check: lab failures (not the worker's fault):")
        lines += [f"  - {p}" for p in m.lab_problems]
    lines.append(f"{CHECKPOINT} verdict: {m.verdict_line}")
    return [term_text(line) for line in lines]  # values from the pools' files: no ESC


def write_outputs(m: MergedGate, reports: Mapping[str, Path | str | None], *,
                  html_path: Path | None, json_path: Path | None,
                  perf_sources: Sequence[Path | str] = (),
                  support_path: Path | None = None) -> None:
    """Write the merged HTML, JSON and MODEL_SUPPORT.md atomically; links are relative to
    each file's folder. The pools' performance records (their gate JSON, plus
    `perf_sources`: stores or exports) are read and the Markdown is made first, so a bad
    source or a refused `support_path` writes nothing."""
    support_md = _support_markdown(m, support_path)
    perf_html, perf_json = _performance(m, perf_sources)
    try:
        if html_path is not None:  # reports pass the one redaction, like the pools' own
            atomic_write_text(html_path, redact(render_html(m, reports, html_path.parent,
                                                            perf_html)))
        if json_path is not None:
            doc = to_json(m, reports, json_path.parent)
            if perf_json is not None:
                doc["performance"] = perf_json
            atomic_write_text(json_path, redact(json.dumps(doc, indent=2)) + "\n")
        if support_path is not None and support_md is not None:
            atomic_write_text(support_path, redact(support_md))
    except OSError as exc:
        raise HarnessError(f"cannot write the merged report: {exc.strerror or exc} "
                           f"({exc.filename or ''})", exit_code=2) from None


def _support_markdown(m: MergedGate, path: Path | None) -> str | None:
    """MODEL_SUPPORT.md's text, or a HarnessError (exit 2) before anything is written: a
    target that is not a file, or no merged result with model runs to fill it."""
    if path is None:
        return None
    refuse_non_regular_target(path, "--model-support target",
                              "name a file to write MODEL_SUPPORT.md to")
    support = modelsupport.build(m)
    if support is None:
        raise HarnessError(modelsupport.no_model_runs_problem(m.pools),
                           "run the gate on each pool with --gate-models, then merge again",
                           exit_code=2)
    return render_markdown(support)


def _performance(m: MergedGate, sources: Sequence[Path | str]
                 ) -> tuple[str, list[dict[str, Any]] | None]:
    """The performance section across pools (nothing imported when there is none)."""
    if not sources and not any(p.performance for p in m.pools):
        return "", None
    from llorch_harness.perf import export, render

    panels = export.merged_panels(m.pools, sources)
    return (render.section_html(panels, "Performance per pool, model and backend"),
            [render.summary_json(p) for p in panels])
