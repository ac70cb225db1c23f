"""What the HTML report shows: title, lab banner, the CP3 checklist, per-test extras, and
an environment table built from an allow-list.

Why an allow-list: pytest-html's redact list runs on the controller only and xdist workers
merge their unredacted metadata back in, so a token in the environment would reach the
report with `-n 2`. Only keys named here ever get in, on every process.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from llorch_harness.gate.checklist import CHECKPOINT
from llorch_harness.gate.modelsupport import fmt_bytes
from llorch_harness.redaction import is_secret_name, redact, secret_values
from llorch_harness.safetext import Markup, html, inline_code, join, term_text
from llorch_harness.safetext import text as html_text

ALLOWED_METADATA = ("Python", "Platform", "Packages", "Plugins")
HARNESS_PREFIX = "llorch "
LOG_TAIL_LINES = 60

_STATUS_STYLE = {
    "pass": ("PASS", "#1a7f37"),
    "fail": ("FAIL", "#cf222e"),
    "error": ("ERROR", "#bc4c00"),  # could not check (cargo offline, no git range)
    "skip": ("SKIP", "#9a6700"),
    "xfail": ("XFAIL", "#9a6700"),
    "not run": ("NOT RUN", "#57606a"),
}


def report_title(hostname: str, lab: str) -> str:
    return f"{CHECKPOINT} gate — pool {hostname} — {lab} lab"


def known(value: Any) -> str:
    """A value for a page: `unknown` where the harness has none (never the text `None`)."""
    return "unknown" if value is None or value == "" else str(value)


def harness_metadata(lab: Mapping[str, Any]) -> dict[str, str]:
    """The harness's own rows of the environment table."""
    backends = lab.get("backends", {})
    rows = {
        f"{HARNESS_PREFIX}lab": known(lab.get("banner", lab.get("lab"))),
        f"{HARNESS_PREFIX}pool": known(lab.get("hostname")),
        f"{HARNESS_PREFIX}harness version": known(lab.get("harness_version")),
        f"{HARNESS_PREFIX}gate model": known(lab.get("gate_model")),
        f"{HARNESS_PREFIX}backends available": ", ".join(
            sorted(n for n, st in backends.items() if st.get("reason") is None)) or "none",
    }
    for name, st in sorted(backends.items()):
        if st.get("binary"):
            rows[f"{HARNESS_PREFIX}{name} binary"] = (
                f"{st['binary']} sha256 {known(st.get('binary_sha256'))}")
        if st.get("engine"):  # which engine and device served the backend (embedded lab)
            rows[f"{HARNESS_PREFIX}{name} worker"] = f"{known(st.get('worker'))}, {st['engine']}"
    return rows


def filter_metadata(metadata: MutableMapping[str, Any], lab: Mapping[str, Any] | None) -> None:
    """Keep only allow-listed keys (in place), then add the harness rows."""
    for key in list(metadata):
        if key not in ALLOWED_METADATA or is_secret_name(key):
            metadata.pop(key, None)
    if lab is not None:
        metadata.update(harness_metadata(lab))


def escape_environment(metadata: MutableMapping[str, Any]) -> None:
    """Every value of the environment table as HTML text, in place (pytest-html's app.js
    puts values in with `innerHTML`: a binary's path holding `<img onerror=...>` would run).
    Dict keys and list items too. Idempotent (an escaped value is `Markup` and stays as it
    is), so it runs at session start, before pytest-html first reads the table (a report
    written mid-run with `generate_report_on_test`), and again once the xdist workers'
    metadata has been merged back, before the final page."""
    for key in list(metadata):
        metadata[key] = _env_value(metadata[key], 0)


def _env_value(value: Any, depth: int) -> Any:
    if isinstance(value, Mapping) and depth < 2:
        return {html_text(k): _env_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple) and depth < 2:
        return [_env_value(v, depth + 1) for v in value]
    return html_text(value if isinstance(value, Markup) else str(value))


def banner_html(banner: str, lab: str) -> str:
    color = "#cf222e" if lab == "embedded" else "#0969da"
    return html('<p id="llorch-lab-banner" style="font-size:1.4em;font-weight:bold;'
                'color:{0};border:3px solid {0};padding:8px">{1}</p>', color, banner)


def unchecked_note(rollup: list[dict[str, Any]]) -> str:
    """What the verdict line adds when items could not be checked (they are not failures)."""
    rows = [r for r in rollup if r["status"] == "error"]
    if not rows:
        return ""
    return " (" + "; ".join(
        f"{r['item']}: {r['reasons'][0] if r['reasons'] else 'could not check'}"
        for r in rows) + ")"


def checklist_html(rollup: list[dict[str, Any]], verdict: str,
                   verdict_line: str | None = None) -> str:
    """The CP3 checklist, seed order, with status, backends and skip/fail reasons; the
    heading's verdict names the class when `verdict_line` is given (labcause)."""
    label, color = _STATUS_STYLE.get(verdict, (verdict.upper(), "#57606a"))
    label = verdict_line or label
    parts = [Markup('<div id="llorch-cp3-checklist">'),
             html('<h2>{} gate checklist — verdict: <span style="color:{}">{}</span></h2>',
                  CHECKPOINT, color, inline_code(label))]
    note = unchecked_note(rollup)
    if note:
        parts.append(html('<p class="llorch-unchecked">{}</p>', inline_code("not checked" + note)))
    several = any(len(row.get("models") or {}) > 1 for row in rollup)
    section = None
    for row in rollup:
        if row["section"] != section:
            if section is not None:
                parts.append(Markup("</table>"))
            section = row["section"]
            parts.append(html("<h3>{}</h3>", section))
            parts.append(html('<table class="llorch-gate" border="1" cellpadding="4">'
                              "<tr><th>status</th><th>item</th><th>per backend</th>{}"
                              "<th>reason</th></tr>",
                              Markup("<th>per model</th>") if several else ""))
        parts.append(_checklist_row(row, several))
    if section is not None:
        parts.append(Markup("</table>"))
    parts.append(Markup("</div>"))
    return str(join("\n", parts))


def _checklist_row(row: Mapping[str, Any], several: bool) -> Markup:
    slabel, scolor = _STATUS_STYLE.get(row["status"], (row["status"], "#57606a"))
    extra = "" if row["seed"] else Markup(" <i>(extra: not a seed item)</i>")
    per = ", ".join(f"{b}: {s}" for b, s in sorted(row["backends"].items()))
    reasons = join("<br>", (inline_code(r) for r in row["reasons"]))
    models = html("<td>{}</td>", per_model(row)) if several else ""
    return html('<tr class="llorch-item llorch-{}"><td style="color:{};font-weight:bold">{}'
                "</td><td>{}{}</td><td>{}</td>{}<td>{}</td></tr>",
                str(row["status"]).replace(" ", "-"), scolor, slabel, inline_code(row["item"]),
                extra, per,
                models, reasons)


def per_model(row: Mapping[str, Any]) -> str:
    """An item's status per model, in the models' order: `tiny-qwen PASS, tiny-llama FAIL`."""
    return ", ".join(f"{m} {_STATUS_STYLE.get(st, (st,))[0]}"
                     for m, st in (row.get("models") or {}).items())


def _size(n: Any) -> str:
    """Bytes as the merged MODEL_SUPPORT.md writes them (unknown: a dash)."""
    return fmt_bytes(int(n)) if isinstance(n, int | float) else "—"


def model_run_lines(runs: list[dict[str, Any]]) -> list[str]:
    """CP4's runs for the terminal: one line per model and backend, with its figures."""
    out = []
    for r in runs:
        label = _STATUS_STYLE.get(r["status"], (r["status"].upper(),))[0]
        mem = r.get("memory_at_ready") or {}
        figures = (f"startup {r['startup_s']:.2f} s" if r.get("startup_s") else "startup —",
                   f"{mem.get('kind', 'memory')} at ready {_size(mem.get('bytes'))}",
                   f"{r['tokens_per_sec']:g} tok/s" if r.get("tokens_per_sec") else "— tok/s",
                   f"{r.get('worker_lives') or 0} worker lives")
        failed = f"  [failed: {', '.join(r['failed_items'])}]" if r.get("failed_items") else ""
        why = f"  [{r['reason']}]" if r.get("reason") and not failed else ""
        out.append(term_text(redact(f"  {label:<7} {r['model']} on {r['backend']}: "
                                    f"{'; '.join(figures)}{failed}{why}")))
    return out


def model_runs_html(runs: list[dict[str, Any]]) -> str:
    """The same per model and backend, for the HTML summary."""
    rows = []
    for r in runs:
        label, color = _STATUS_STYLE.get(r["status"], (r["status"], "#57606a"))
        mem = r.get("memory_at_ready") or {}
        cells = (r["model"], r.get("architecture") or "—", _size(r.get("size_bytes")),
                 r["backend"], f"{r['startup_s']:.2f} s" if r.get("startup_s") else "—",
                 f"{_size(mem.get('bytes'))} ({mem.get('kind', '—')})",
                 f"{r['tokens_per_sec']:g}" if r.get("tokens_per_sec") else "—",
                 str(r.get("worker_lives") or 0),
                 ", ".join(r.get("failed_items") or []) or (r.get("reason") or ""))
        rows.append(html('<tr><td style="color:{};font-weight:bold">{}</td>{}</tr>', color,
                         label, join("", (html("<td>{}</td>", c) for c in cells))))
    head = join("", (html("<th>{}</th>", h) for h in (
        "status", "model", "architecture", "size on disk", "backend", "startup", "memory at ready",
        "tokens/s", "worker lives", "failed items / reason")))
    return str(html('<div id="llorch-model-runs"><h2>Models on this pool (CP4)</h2>'
                    '<table class="llorch-gate" border="1" cellpadding="4"><tr>{}</tr>{}'
                    "</table></div>", head, join("\n", rows)))


def terminal_checklist(rollup: list[dict[str, Any]], verdict: str,
                       verdict_line: str | None = None) -> list[str]:
    """The checklist by section, then the verdict line (`verdict_line` names the class:
    `FAIL (worker: 2 items)`, `INCOMPLETE (lab: hub unreachable)`)."""
    lines = []
    section = None
    for row in rollup:
        if row["section"] != section:
            section = row["section"]
            lines.append(f"{section}:")
        label = _STATUS_STYLE.get(row["status"], (row["status"],))[0]
        extra = "" if row["seed"] else " (extra)"
        why = f"  [{row['reasons'][0]}]" if row["reasons"] and row["status"] != "pass" else ""
        lines.append(term_text(redact(f"  {label:<7} {row['item']}{extra}{why}")))
        if len(row.get("models") or {}) > 1:
            lines.append(term_text(redact(f"          per model: {per_model(row)}")))
    line = verdict_line or f"{verdict.upper()}{unchecked_note(rollup)}"
    lines.append(term_text(redact(f"{CHECKPOINT} gate verdict: {line}")))
    return lines


LAB_TITLE = "Could not check: lab failures (not the worker's fault)"


def lab_lines(failures: list[dict[str, Any]], retries: list[dict[str, Any]]) -> list[str]:
    """The terminal's lab section: each item the lab kept from being checked, and each
    retry of a transient cause (also those that then succeeded)."""
    lines = []
    if failures:
        lines.append(f"{LAB_TITLE}:")
        lines += [term_text(redact(
            f"  lab: {f['cause']}{' (retried once)' if f.get('retried') else ''}  "
            f"{f['item']} [{f.get('backend') or 'pool'}]: {f.get('detail')}")) for f in failures]
    if retries:
        lines.append("Retried once (transient lab causes):")
        lines += [term_text(redact(f"  {r.get('what')}: {r.get('cause')} ({r.get('detail')}); "
                                   f"{r.get('outcome')}  [{r.get('nodeid')}]")) for r in retries]
    return lines


def lab_html(failures: list[dict[str, Any]], retries: list[dict[str, Any]]) -> str:
    """The same for the HTML summary (empty when the lab never failed nor was retried)."""
    if not failures and not retries:
        return ""
    parts = [Markup('<div id="llorch-lab-failures">')]
    if failures:
        parts.append(html('<h2>{}</h2><table class="llorch-gate" border="1" cellpadding="4">'
                          "<tr><th>status</th><th>lab cause</th><th>item</th><th>backend</th>"
                          "<th>evidence</th></tr>", LAB_TITLE))
        parts += [html('<tr class="llorch-lab"><td style="color:#bc4c00;font-weight:bold">'
                       "COULD NOT CHECK</td><td>lab: {}{}</td><td>{}</td><td>{}</td>"
                       "<td>{}</td></tr>", f["cause"],
                       " (retried once)" if f.get("retried") else "", inline_code(f["item"]),
                       f.get("backend") or "pool", f.get("detail") or "") for f in failures]
        parts.append(Markup("</table>"))
    if retries:
        parts.append(Markup('<h3>Retried once (transient lab causes)</h3>'
                            '<ul class="llorch-retries">'))
        parts += [html("<li>{}: {} ({}); {} <code>{}</code></li>", r.get("what"),
                       r.get("cause"), r.get("detail"), r.get("outcome"), r.get("nodeid"))
                  for r in retries]
        parts.append(Markup("</ul>"))
    parts.append(Markup("</div>"))
    return str(join("\n", parts))


# --------------------------------------------------------------------------- extras


def log_tail(path: str | Path | None, lines: int = LOG_TAIL_LINES) -> str | None:
    if not path:
        return None
    from llorch_harness.fsutil import NotRegularFileError, tail_text

    try:  # the one bounded tail; a FIFO or device as the log is never opened
        return tail_text(path, lines, window=64 * 1024) if Path(path).exists() else None
    except (OSError, NotRegularFileError):
        return None


def build_extras(record: Mapping[str, Any], failed: bool) -> list[dict[str, Any]]:
    """pytest-html extras from what a test recorded (see fixtures.GateRecord)."""
    try:
        from pytest_html import extras
    except ImportError:  # pytest-html absent: nothing to attach
        return []
    out: list[dict[str, Any]] = []
    info = {k: v for k, v in record.items() if k not in ("streams", "log_paths")}
    if info:
        out.append(extras.text(redact(json.dumps(info, indent=2, default=str)),
                               name="worker and model"))
    streams = record.get("streams")
    if streams:
        out.append(extras.text(redact(json.dumps(streams, indent=2, default=str)),
                               name="token streams compared"))
    if failed:
        for path in record.get("log_paths", []) or []:
            tail = log_tail(path)
            if tail is not None:
                out.append(extras.text(redact(tail), name=f"worker log tail {Path(path).name}"))
    return out


# --------------------------------------------------------------------------- redaction

_TEXT_EXTRAS = ("text", "json", "html")


def redact_report(rep: pytest.TestReport | pytest.CollectReport) -> None:
    """pytest's own texts of one report through the one redaction, in place: the failure
    text (traceback, `-l` locals, `-vv` diffs, the crash line JUnit uses), captured output
    sections, user properties (JUnit properties), xfail reasons and text extras.

    The longrepr keeps its structure (colours, the JUnit message) where the walk can clean
    it; if any secret is still visible in the rendered text, the whole longrepr becomes
    the redacted text.
    """
    values = secret_values()

    def clean(text: str) -> str:
        return redact(text, values=values)

    if rep.longrepr is not None:
        rep.longrepr = _redact_longrepr(rep, clean)
    if getattr(rep, "sections", None):
        rep.sections = [(clean(t), clean(c) if isinstance(c, str) else c)
                        for t, c in rep.sections]
    if isinstance(rep, pytest.TestReport) and rep.user_properties:
        rep.user_properties = [(n, clean(v) if isinstance(v, str) else v)
                               for n, v in rep.user_properties]
    # set by pytest's skipping plugin and by pytest-html, not declared on the report class
    wasxfail = getattr(rep, "wasxfail", None)
    if isinstance(wasxfail, str):
        setattr(rep, "wasxfail", clean(wasxfail))  # noqa: B010
    extras = getattr(rep, "extras", None)
    if extras:
        setattr(rep, "extras", [_redact_extra(e, clean) for e in extras])  # noqa: B010


def _redact_extra(extra: Any, clean: Callable[[str], str]) -> Any:
    if isinstance(extra, dict) and extra.get("format_type") in _TEXT_EXTRAS \
            and isinstance(extra.get("content"), str):
        return {**extra, "content": clean(extra["content"])}
    return extra


def _redact_longrepr(rep: pytest.TestReport | pytest.CollectReport,
                     clean: Callable[[str], str]) -> Any:
    longrepr = rep.longrepr
    if isinstance(longrepr, str):
        return clean(longrepr)
    if isinstance(longrepr, tuple):  # a skip: (path, lineno, reason)
        return tuple(clean(x) if isinstance(x, str) else x for x in longrepr)
    try:
        _walk(longrepr, clean, 0)
        text = rep.longreprtext  # pytest's own plain rendering (public)
    except Exception:  # an unknown repr type: fall back to its redacted text
        return clean(str(longrepr))
    return longrepr if clean(text) == text else clean(text)


def _walk(obj: Any, clean: Callable[[str], str], depth: int) -> Any:
    """Strings inside pytest's TerminalRepr dataclasses (and their lists/tuples) redacted."""
    if depth > 30:
        return obj
    if isinstance(obj, str):
        return clean(obj)
    if isinstance(obj, list):
        obj[:] = [_walk(x, clean, depth + 1) for x in obj]
        return obj
    if isinstance(obj, tuple):
        return tuple(_walk(x, clean, depth + 1) for x in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            new = _walk(value, clean, depth + 1)
            if new is not value:
                object.__setattr__(obj, f.name, new)
    return obj
