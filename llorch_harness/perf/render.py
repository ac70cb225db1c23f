"""Performance records for people: HTML panels (per-pool report, merged report, history
page) and text tables (the history command).

One panel per model x backend x pool: the run's figures beside their baseline and band,
the verdict of each, and a small trend plot of each figure over the last runs of the same
fingerprint. Every text goes through the one redaction before it reaches a page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llorch_harness.perf.baseline import Comparison
from llorch_harness.perf.figures import SPECS, format_value
from llorch_harness.perf.plots import TrendPoint, trend_svg
from llorch_harness.perf.store import ResultsStore, StoredRun
from llorch_harness.redaction import redact
from llorch_harness.safetext import Markup, html, join, term_text

TREND_RUNS = 30
PLOTTED = ("load_s", "ttft_s", "itl_p50_s", "itl_p95_s", "s_per_token", "tokens_per_sec",
           "memory_ready", "memory_peak")
_VERDICT_STYLE = {"regression": ("REGRESSION", "#cf222e"), "improvement": ("improved", "#1a7f37"),
                  "ok": ("ok", "#1a7f37"), "no baseline": ("no baseline", "#9a6700"),
                  "unavailable": ("unavailable", "#57606a"), "not judged": ("shown", "#57606a")}
_STATUS_STYLE = {"fail": ("FAIL", "#cf222e"), "pass": ("PASS", "#1a7f37"),
                 "recorded": ("RECORDED", "#9a6700")}
CSS = """
.llorch-perf table{border-collapse:collapse;margin:4px 0 14px 0}
.llorch-perf td,.llorch-perf th{border:1px solid #d0d7de;padding:3px 6px;font-size:13px;
vertical-align:middle}
.llorch-perf th{background:#f6f8fa;text-align:left}
.llorch-perf .msg{font-size:13px;margin:2px 0 4px 0}
"""


@dataclass
class Panel:
    """One record and the trend it belongs to (oldest first, the record included)."""

    current: StoredRun
    trend: list[StoredRun]
    source: str | None = None  # where it came from (a store or an export), for merged pages


def comparisons(run: StoredRun) -> dict[str, Comparison]:
    rows = (run.check or {}).get("comparisons") or []
    out = {}
    for raw in rows:
        try:
            c = Comparison.from_json(raw)
        except (KeyError, TypeError, ValueError):
            continue
        out[c.name] = c
    return out


def panels_for_run(store: ResultsStore, run_key: str, trend_runs: int = TREND_RUNS
                   ) -> list[Panel]:
    """This run's records, each with the last runs of its baseline key."""
    return [Panel(r, store.runs(baseline_key=r.baseline_key, last=trend_runs))
            for r in store.runs(run_key=run_key)]


def latest_panels(runs: Iterable[StoredRun], trend_runs: int = TREND_RUNS,
                  source: str | None = None) -> list[Panel]:
    """The newest record of each pool x model x backend x fingerprint, with its trend."""
    groups: dict[tuple[str, str, str, str], list[StoredRun]] = {}
    for r in sorted(runs, key=lambda r: r.id):
        groups.setdefault((r.pool, r.model, r.backend, r.baseline_key), []).append(r)
    return [Panel(rs[-1], rs[-trend_runs:], source) for _, rs in sorted(groups.items())]


def _value_cell(run: StoredRun, name: str) -> Markup:
    fig = run.figures.get(name)
    if fig is None or fig.value is None:
        note = fig.note if fig else "not measured"
        return html('<td title="{0}"><i>unavailable</i><br><small>{0}</small></td>', note)
    spread = f" ± {format_value(name, fig.spread)}" if fig.spread is not None else ""
    extra = f" ({fig.note})" if fig.note else ""
    return html("<td>{}{}<br><small>n={}{}</small></td>", format_value(name, fig.value), spread,
                fig.n, extra)


def _row(panel: Panel, name: str, comp: Comparison | None) -> Markup:
    run = panel.current
    label, color = _VERDICT_STYLE.get(comp.verdict if comp else "not judged", ("", "#57606a"))
    if comp is not None and comp.baseline is not None:
        base = f"{format_value(name, comp.baseline)} ± {format_value(name, comp.band)}"
        runs = ", ".join(f"#{r}" for r in comp.runs)
        base_cell = html("<td>{}<br><small>runs {}</small></td>", base, runs)
        change = f"{comp.change:+.0%}" if comp.change is not None else ""
    else:
        shown = comp.note if comp and comp.note and comp.verdict != "unavailable" else ""
        base_cell = html("<td><small>{}</small></td>", shown)
        change = ""
    plot: str | Markup = ""
    if name in PLOTTED and not (comp and comp.verdict == "unavailable"):
        pts = [TrendPoint(r.id, r.figures[name].value if name in r.figures else None,
                          r.status == "fail") for r in panel.trend]
        plot = trend_svg(name, pts, current_id=run.id,
                         baseline=comp.baseline if comp else None,
                         band=comp.band if comp else None,
                         verdict=comp.verdict if comp else "ok")
    return html('<tr><td>{}</td>{}{}<td>{}</td><td style="color:{};font-weight:bold">{}</td>'
                "<td>{}</td></tr>", SPECS[name].label if name in SPECS else name,
                _value_cell(run, name), base_cell, change, color, label, plot)


def panel_html(panel: Panel) -> Markup:
    run = panel.current
    status, color = _STATUS_STYLE.get(run.status, (run.status.upper(), "#57606a"))
    comps = comparisons(run)
    msg = (run.check or {}).get("message") or ""
    src = f" — from {panel.source}" if panel.source else ""
    accepted = Markup(" <i>(accepted as a new baseline)</i>") if run.accepted else ""
    head = html('<h4>{} on {}, pool {} — run #{} {}{} — <span style="color:{}">{}</span>{}</h4>',
                run.model, run.backend, run.pool, run.id, run.recorded_at, src, color, status,
                accepted)
    facts = fingerprint_facts(run)
    rows = [_row(panel, name, comps.get(name)) for name in SPECS if name in run.figures]
    return html('<div class="llorch-perf-panel" data-baseline-key="{}">\n{}\n'
                '<p class="msg">{}</p>\n<p class="msg"><small>{}</small></p>\n'
                "<table><tr><th>figure</th><th>this run (median ± MAD)</th>"
                "<th>baseline ± band</th><th>change</th><th>verdict</th>"
                "<th>trend (this run marked, band shaded)</th></tr>\n{}</table></div>",
                run.baseline_key, head, msg, facts, join("\n", rows))


def fingerprint_facts(run: StoredRun) -> str:
    """The record's fingerprint in words; a fact the store does not hold is left out (never
    `driver None`), the binary is `unknown` when its hash is missing."""
    fp = run.fingerprint
    facts = [f"worker binary {str(run.binary_sha256)[:16] if run.binary_sha256 else 'unknown'}"]
    for label, key in (("device", "device"), ("driver", "driver"), ("", "os"),
                       ("harness", "harness_version"), ("", "protocol")):
        value = fp.get(key)
        if value not in (None, "", "None"):
            facts.append(f"{label} {value}".strip())
    return ", ".join(facts)


def latest_line(panels: Sequence[Panel]) -> str:
    """The history page's first line: the newest record's status per model x backend x pool
    (`latest: tiny-qwen on cpu, pool p: #4 FAIL`), as the reports' verdict."""
    if not panels:
        return "no performance records"
    parts = [f"{r.model} on {r.backend}, pool {r.pool}: "
             f"#{r.id} {_STATUS_STYLE.get(r.status, (r.status.upper(),))[0]}"
             for r in (p.current for p in panels)]
    return "latest: " + "; ".join(parts)


def section_html(panels: Sequence[Panel], title: str = "Performance") -> str:
    """A `<div>` for a report: every panel, or a line saying there is nothing."""
    body = [panel_html(p) for p in panels] or [Markup(
        "<p>no performance records for this run (the item was skipped or not selected)</p>")]
    return str(html('<div id="llorch-perf" class="llorch-perf"><style>{}</style>\n'
                    "<h2>{}</h2>\n{}</div>", Markup(CSS), title, join("\n", body)))


def page_html(panels: Sequence[Panel], title: str, intro: str = "") -> str:
    """A whole self-contained page (history --html)."""
    statuses = {p.current.status for p in panels}
    color = "#cf222e" if "fail" in statuses else "#1a7f37" if statuses == {"pass"} \
        else "#9a6700"
    return str(html('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{0}</title>'
                    '</head><body style="font-family:sans-serif"><h1>{0}</h1>'
                    '<div id="verdict" style="font-size:1.6em;font-weight:bold;color:{3};'
                    'border:4px solid {3};padding:10px 14px">{4}</div><p>{1}</p>{2}'
                    "</body></html>\n", title, intro,
                    Markup(section_html(panels, "Figures over runs")), color,
                    latest_line(panels)))


# --------------------------------------------------------------------------- text


HISTORY_COLUMNS = ("load_s", "ttft_s", "s_per_token", "tokens_per_sec", "memory_ready",
                   "memory_peak")


def history_table(runs: Sequence[StoredRun]) -> list[str]:
    """One line per record, oldest first, with its main figures and status."""
    header = ["id", "recorded", "pool", "model", "backend", "binary", "status", "gate",
              *[_short(n) for n in HISTORY_COLUMNS]]
    rows = [header]
    for r in runs:
        rows.append([f"#{r.id}", r.recorded_at, r.pool, r.model, r.backend,
                     str(r.binary_sha256 or "?")[:8],
                     r.status + ("*" if r.accepted else ""), r.gate_verdict or "-",
                     *[_cell(r, n) for n in HISTORY_COLUMNS]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [term_text(redact("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                             .rstrip())) for row in rows]


def _short(name: str) -> str:
    return {"load_s": "load", "ttft_s": "ttft", "s_per_token": "per-token",
            "tokens_per_sec": "tok/s", "memory_ready": "mem@ready",
            "memory_peak": "mem peak"}.get(name, name)


def _cell(run: StoredRun, name: str) -> str:
    fig = run.figures.get(name)
    return "n/a" if fig is None or fig.value is None else format_value(name, fig.value)


def trend_lines(panels: Sequence[Panel]) -> list[str]:
    """Per fingerprint: each judged figure's latest value against its baseline; the figures
    that could not be measured in one line per reason."""
    out: list[str] = []
    for p in panels:
        run = p.current
        out.append(redact(f"{run.model} on {run.backend}, pool {run.pool}: latest run #{run.id} "
                          f"{run.status}; {len(p.trend)} run(s) of this fingerprint"))
        missing: dict[str, list[str]] = {}
        for c in comparisons(run).values():
            if c.verdict == "unavailable":
                missing.setdefault(c.note or "not measured", []).append(c.label)
            elif c.verdict != "not judged":
                out.append(redact(f"  {_VERDICT_STYLE.get(c.verdict, (c.verdict,))[0]:<12} "
                                  f"{c.describe()}"))
        for why, labels in missing.items():
            out.append(redact(f"  {'unavailable':<12} {', '.join(labels)}: {why}"))
    return [term_text(line) for line in out]  # values from a store: no control bytes


def summary_json(panel: Panel) -> dict[str, Any]:
    """A record for a gate JSON or merged JSON: the record plus its trend's values."""
    doc = panel.current.to_json()
    doc["trend"] = [{"id": r.id, "recorded_at": r.recorded_at, "status": r.status,
                     "figures": {n: f.value for n, f in r.figures.items()}}
                    for r in panel.trend]
    return doc
