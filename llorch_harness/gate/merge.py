"""One CP3 verdict across pools: load per-pool `--gate-json` results, merge, judge, render.

Why: the gate passes only when Qwen works on Metal on the mac *and* on CUDA on the
workstation; no single pool can show that. The merge is deliberately strict: a required
item passes only where it ran and passed; a skip, a missing pool, a stale result, a result
from another harness version or from the embedded lab (reference worker, not
llorch-candled) each fail the verdict and say so.

Which pools an item is required on: an item concerns some backends (`gate.GateItem.backends`);
a pool plays the backends it was run for (its `backends_required`, else the selected
backends that were usable there). An item is required on every pool that plays one of its
backends; `metal` and `cuda` must each be played by at least one pool.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from llorch_harness import __version__
from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import (
    NotRegularFileError,
    atomic_write_text,
    loads_json_strict,
    read_regular_bytes,
)
from llorch_harness.gate.checklist import CHECKPOINT, GateItem, checklist
from llorch_harness.redaction import redact

MERGE_SCHEMA = 1
DEFAULT_MAX_AGE_H = 24.0
FUTURE_SKEW_S = 300.0  # a result "from the future" beyond this is a clock problem: stale
GPU_BACKENDS: tuple[str, ...] = ("metal", "cuda")  # CP3 needs a pool for each
ALL_BACKENDS: tuple[str, ...] = ("cpu", "cuda", "metal")
_MAX_RESULT_BYTES = 64 * 1024 * 1024
_POOL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_STATUS_ALIASES = {
    "pass": "pass", "passed": "pass",
    "fail": "fail", "failed": "fail", "error": "fail",
    "skip": "skip", "skipped": "skip",
    "xfail": "xfail", "xfailed": "xfail",
}


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class TestOutcome:
    """One test's result as a pool reported it."""

    section: str
    item: str
    backend: str | None
    status: str  # pass | fail | skip | xfail
    reason: str | None
    nodeid: str | None


@dataclass
class PoolResult:
    """One pool's `--gate-json` document, validated."""

    name: str
    source: Path
    hostname: str | None
    harness_version: str
    lab: str
    started_at: datetime | None
    finished_at: datetime
    roles: tuple[str, ...]
    backends_available: tuple[str, ...]
    backend_reasons: dict[str, str]
    worker_binaries: dict[str, dict[str, Any]]
    gate_model: str | None
    exitstatus: int | None
    outcomes: list[TestOutcome]
    report: str | None = None  # link target for the per-pool HTML report
    concerns: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)


def _bad(source: Path | str, problem: str) -> HarnessError:
    return HarnessError(f"gate result {source}: {problem}", exit_code=2)


def _opt_str(doc: Mapping[str, Any], key: str, source: Path) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise _bad(source, f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _str_list(doc: Mapping[str, Any], key: str, source: Path) -> tuple[str, ...] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(source, f"'{key}' must be a list of strings")
    return tuple(value)


def parse_time(value: Any, key: str, source: Path) -> datetime:
    if not isinstance(value, str):
        raise _bad(source, f"'{key}' must be an ISO 8601 time string")
    try:
        when = datetime.fromisoformat(value)
        # normalised to UTC here, once: `0001-01-01T00:00:00+23:59` parses, but any later
        # arithmetic on it (its age, its UTC form) overflows
        when = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except ValueError:
        raise _bad(source, f"'{key}' is not an ISO 8601 time: {value[:40]!r}") from None
    except OverflowError:
        raise _bad(source, f"'{key}' {value[:40]!r} lies outside the years 1..9999 in UTC") \
            from None
    return when


def _outcome(raw: Any, index: int, source: Path) -> TestOutcome:
    where = f"items[{index}]"
    if not isinstance(raw, dict):
        raise _bad(source, f"{where} must be an object")
    for key in ("section", "item", "status"):
        if not isinstance(raw.get(key), str):
            raise _bad(source, f"{where}.{key} missing or not a string")
    status = _STATUS_ALIASES.get(raw["status"])
    if status is None:
        raise _bad(source, f"{where}.status {raw['status'][:30]!r} is not one of "
                           f"{', '.join(sorted(_STATUS_ALIASES))}")
    backend = raw.get("backend") or None
    if backend is not None and backend not in ALL_BACKENDS:
        raise _bad(source, f"{where}.backend {str(backend)[:30]!r} is not one of "
                           f"{', '.join(ALL_BACKENDS)} or null")
    reason = raw.get("reason")
    nodeid = raw.get("nodeid")
    return TestOutcome(raw["section"], raw["item"], backend, status,
                       str(reason) if reason is not None else None,
                       str(nodeid) if nodeid is not None else None)


def pool_roles(doc: Mapping[str, Any], outcomes: Sequence[TestOutcome],
               source: Path) -> tuple[str, ...]:
    """The backends this pool was run for: required ones, else selected and usable ones."""
    required = _str_list(doc, "backends_required", source)
    if required:
        return tuple(b for b in ALL_BACKENDS if b in required)
    selected = _str_list(doc, "backends_selected", source)
    available = _str_list(doc, "backends_available", source)
    if selected is not None and available is not None:
        return tuple(b for b in ALL_BACKENDS if b in selected and b in available)
    if available is not None:
        return tuple(b for b in ALL_BACKENDS if b in available)
    ran = {o.backend for o in outcomes if o.backend and o.status in ("pass", "fail")}
    return tuple(b for b in ALL_BACKENDS if b in ran)


def parse_result(doc: Any, source: Path, name: str | None = None) -> PoolResult:
    """Validate one gate document; every problem is one line naming the file."""
    if not isinstance(doc, dict):
        raise _bad(source, "not a JSON object (expected the output of pytest --gate-json)")
    if doc.get("checkpoint") != CHECKPOINT:
        raise _bad(source, f"'checkpoint' is {doc.get('checkpoint')!r}, expected {CHECKPOINT!r}")
    version = doc.get("harness_version")
    if not isinstance(version, str) or not version:
        raise _bad(source, "'harness_version' missing or not a string")
    lab = doc.get("lab")
    if lab not in ("embedded", "real"):
        raise _bad(source, f"'lab' is {lab!r}, expected 'embedded' or 'real'")
    finished_raw = doc.get("finished_at", doc.get("started_at"))
    if finished_raw is None:
        raise _bad(source, "'finished_at' missing")
    finished = parse_time(finished_raw, "finished_at", source)
    started = (parse_time(doc["started_at"], "started_at", source)
               if doc.get("started_at") is not None else None)
    items = doc.get("items")
    if not isinstance(items, list):
        raise _bad(source, "'items' missing or not a list")
    outcomes = [_outcome(raw, i, source) for i, raw in enumerate(items)]
    hostname = _opt_str(doc, "hostname", source)
    pool_field = _opt_str(doc, "pool", source)
    pool_name = name or pool_field or hostname
    if not pool_name or not _POOL_NAME_RE.fullmatch(pool_name):
        raise _bad(source, f"no usable pool name ({pool_name!r}); pass it as NAME=PATH")
    binaries = doc.get("worker_binaries") or {}
    if not isinstance(binaries, dict) or not all(isinstance(v, dict) for v in binaries.values()):
        raise _bad(source, "'worker_binaries' must map backend to {path, sha256}")
    reasons = doc.get("backend_reasons") or {}
    if not isinstance(reasons, dict):
        raise _bad(source, "'backend_reasons' must be an object")
    exitstatus = doc.get("exitstatus")
    if exitstatus is not None and (isinstance(exitstatus, bool) or not isinstance(exitstatus, int)):
        raise _bad(source, "'exitstatus' must be an integer")
    concerns: dict[tuple[str, str], tuple[str, ...]] = {}
    for row in doc.get("checklist") or []:
        if isinstance(row, dict) and isinstance(row.get("concerns"), list):
            key = (str(row.get("section")), str(row.get("item")))
            concerns[key] = tuple(str(b) for b in row["concerns"] if b in ALL_BACKENDS)
    report = _opt_str(doc, "report", source)
    return PoolResult(
        name=pool_name, source=source, hostname=hostname, harness_version=version, lab=lab,
        started_at=started, finished_at=finished, roles=pool_roles(doc, outcomes, source),
        backends_available=_str_list(doc, "backends_available", source) or (),
        backend_reasons={str(k): str(v) for k, v in reasons.items() if v},
        worker_binaries={str(k): dict(v) for k, v in binaries.items()},
        gate_model=_opt_str(doc, "gate_model", source), exitstatus=exitstatus,
        outcomes=outcomes, report=report, concerns=concerns,
    )


def load_result(path: Path, name: str | None = None) -> PoolResult:
    """Read and validate one `--gate-json` file (HarnessError exit 2 on any problem)."""
    try:
        # a FIFO or a device would block or never end: only a regular file is read
        data = read_regular_bytes(path, "gate result", limit=_MAX_RESULT_BYTES + 1)
        if len(data) > _MAX_RESULT_BYTES:
            raise _bad(path, f"too large (over {_MAX_RESULT_BYTES} bytes) for a gate result")
        text = data.decode("utf-8")
    except NotRegularFileError as exc:
        raise _bad(path, f"is {exc.kind}, not a regular file") from None
    except OSError as exc:
        raise _bad(path, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _bad(path, "not UTF-8 text") from None
    try:
        doc = loads_json_strict(text)
    except json.JSONDecodeError as exc:
        raise _bad(path, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") \
            from None
    except (ValueError, RecursionError) as exc:
        raise _bad(path, f"not usable JSON: {exc}") from None
    return parse_result(doc, path, name)


def split_named(arg: str) -> tuple[str | None, Path]:
    """`NAME=PATH` names the pool; a plain PATH takes the name from the document."""
    name, sep, rest = arg.partition("=")
    if sep and _POOL_NAME_RE.fullmatch(name) and not Path(arg).exists():
        return name, Path(rest)
    return None, Path(arg)


def parse_pool_list(text: str | None) -> list[str]:
    if not text:
        return []
    names = [p.strip() for p in text.split(",") if p.strip()]
    for n in names:
        if not _POOL_NAME_RE.fullmatch(n):
            raise HarnessError(f"invalid pool name {n[:40]!r} in pool list",
                               "use letters, digits, '.', '_' and '-'", exit_code=2)
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- merging


@dataclass
class Cell:
    """One item on one pool."""

    status: str  # pass | fail | skip | xfail | not run | n/a
    required: bool
    reason: str | None = None


@dataclass
class Row:
    section: str
    item: str
    seed: bool
    concerns: tuple[str, ...]
    cells: dict[str, Cell]
    ok: bool
    note: str | None = None  # e.g. "no pool ran metal"


@dataclass
class MergedGate:
    verdict: str  # "pass" | "fail"
    pools: list[PoolResult]
    rows: list[Row]
    problems: list[str]
    missing_pools: dict[str, str]  # name -> why
    stale: dict[str, str]  # name -> why
    expected: list[str]
    max_age_h: float
    generated_at: datetime

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict == "pass" else 1


def _cell(pool: PoolResult, section: str, item: str, concerns: Sequence[str]) -> Cell:
    required = bool(set(concerns) & set(pool.roles))
    tests = [o for o in pool.outcomes if o.section == section and o.item == item]
    failed = [o for o in tests if o.status == "fail"]
    if failed:
        o = failed[0]
        return Cell("fail", required, f"{o.backend or 'pool'}: {o.reason or 'failed'}")
    relevant = [o for o in tests if o.backend is None or o.backend in pool.roles]
    if relevant and all(o.status == "pass" for o in relevant):
        return Cell("pass", required)
    not_passed = [o for o in relevant if o.status != "pass"]
    if not_passed:
        o = not_passed[0]
        return Cell(o.status, required, f"{o.backend or 'pool'}: {o.reason or o.status}")
    if not required:
        return Cell("n/a", False)
    return Cell("not run", True, "no test for this item ran on this pool")


def _age_problem(pool: PoolResult, now: datetime, max_age_h: float) -> str | None:
    age_s = (now - pool.finished_at).total_seconds()
    if age_s < -FUTURE_SKEW_S:
        return (f"finished_at {pool.finished_at.isoformat()} lies {-age_s / 3600:.1f} h in "
                "the future (check the pool's clock)")
    if age_s > max_age_h * 3600:
        return (f"finished {age_s / 3600:.1f} h ago, older than --max-age {max_age_h:g} h "
                "(rerun the gate on this pool)")
    return None


def merge(
    pools: Sequence[PoolResult],
    *,
    expect_pools: Iterable[str] = (),
    absent: Mapping[str, str] | None = None,
    max_age_h: float = DEFAULT_MAX_AGE_H,
    now: datetime | None = None,
    harness_version: str = __version__,
    items: Sequence[GateItem] | None = None,
) -> MergedGate:
    """Merge pool results into rows (checklist order) and a verdict with every problem named.

    `absent` names pools that produced no result (unreachable, no JSON) and why.
    """
    now = now or datetime.now(UTC)
    expected = list(dict.fromkeys(expect_pools))
    problems: list[str] = []
    names = [p.name for p in pools]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise HarnessError(f"two gate results for pool {dupes[0]}",
                           "name them apart with NAME=PATH", exit_code=2)
    missing: dict[str, str] = dict(absent or {})
    for name in expected:
        if name not in names and name not in missing:
            missing[name] = "expected (--expect-pools) but no result was given"
    for name, why in missing.items():
        problems.append(f"missing pool {name}: {why}")

    stale: dict[str, str] = {}
    for p in pools:
        whys = []
        age = _age_problem(p, now, max_age_h)
        if age:
            whys.append(age)
        if p.harness_version != harness_version:
            whys.append(f"ran harness {p.harness_version}, this is {harness_version}")
        if whys:
            stale[p.name] = "; ".join(whys)
            problems.append(f"stale result from pool {p.name} ({p.source}): {stale[p.name]}")
        if p.lab != "real":
            problems.append(f"pool {p.name} ran the embedded lab: reference worker, not "
                            "llorch-candled; not evidence for CP3")
        if not p.roles:
            why = "; ".join(f"{b}: {r}" for b, r in sorted(p.backend_reasons.items()))
            problems.append(f"pool {p.name} ran no usable backend" + (f" ({why})" if why else ""))
        if p.exitstatus not in (None, 0):
            problems.append(f"pytest on pool {p.name} exited {p.exitstatus}")

    played = {b for p in pools for b in p.roles}
    for backend in GPU_BACKENDS:
        if backend not in played:
            problems.append(f"no pool ran the {backend} backend (CP3 needs a {backend} pool)")

    gate_items = list(items if items is not None else checklist())
    known = {(gi.section, gi.item) for gi in gate_items}
    extra_keys: list[tuple[str, str]] = []
    for p in pools:
        for o in p.outcomes:
            key = (o.section, o.item)
            if key not in known and key not in extra_keys:
                extra_keys.append(key)

    rows: list[Row] = []
    for gi in gate_items:
        rows.append(_row(gi.section, gi.item, gi.seed, gi.backends, pools, problems))
    for section, item in extra_keys:
        concerns = next((p.concerns[(section, item)] for p in pools
                         if (section, item) in p.concerns), ALL_BACKENDS)
        row = _row(section, item, False, concerns, pools, problems)
        row.note = "not in this harness's checklist"
        rows.append(row)

    verdict = "pass" if not problems else "fail"
    return MergedGate(verdict, list(pools), rows, problems, missing, stale, expected,
                      max_age_h, now)


def _row(section: str, item: str, seed: bool, concerns: Sequence[str],
         pools: Sequence[PoolResult], problems: list[str]) -> Row:
    cells = {p.name: _cell(p, section, item, concerns) for p in pools}
    ok = True
    label = f"{section} / {item}"
    for name, c in cells.items():
        if c.status == "fail":
            ok = False
            problems.append(f"FAILED {label} on pool {name}: {c.reason}")
        elif c.required and c.status != "pass":
            ok = False
            why = c.reason or c.status
            problems.append(f"{c.status.upper()} {label} on pool {name} (required there; "
                            f"a {c.status} is not a pass): {why}")
    note = None
    if seed and not any(c.required for c in cells.values()):
        gpu = [b for b in concerns if b in GPU_BACKENDS]
        if gpu and len(gpu) == len(concerns):
            ok = False
            note = f"no {' or '.join(gpu)} pool"
            problems.append(f"NOT VERIFIED {label}: {note} among the results")
    return Row(section, item, seed, tuple(concerns), cells, ok, note)


# --------------------------------------------------------------------------- report paths


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


# --------------------------------------------------------------------------- output


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") \
        if when else None


def to_json(m: MergedGate, reports: Mapping[str, Path | str | None], page_dir: Path) -> dict:
    """The merged document (`--json`); links relative to `page_dir`."""
    return {
        "schema": MERGE_SCHEMA,
        "kind": "llorch-harness gate merge",
        "checkpoint": CHECKPOINT,
        "harness_version": __version__,
        "generated_at": _iso(m.generated_at),
        "verdict": m.verdict,
        "max_age_hours": m.max_age_h,
        "expected_pools": m.expected,
        "problems": m.problems,
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
                "pools": {n: {"status": c.status, "required": c.required, "reason": c.reason}
                          for n, c in r.cells.items()},
            }
            for r in m.rows
        ],
    }


_STYLE = {
    "pass": ("PASS", "#1a7f37"), "fail": ("FAIL", "#cf222e"), "skip": ("SKIP", "#9a6700"),
    "xfail": ("XFAIL", "#9a6700"), "not run": ("NOT RUN", "#cf222e"), "n/a": ("n/a", "#8c959f"),
}
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#1f2328}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #d0d7de;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f6f8fa}.section td{background:#eaeef2;
font-weight:bold}.reason{font-size:.85em;color:#57606a;max-width:28em;overflow-wrap:anywhere}
.verdict{font-size:1.6em;font-weight:bold;padding:8px;border:3px solid}
.problems li{margin:.2em 0}code{font-size:.9em}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _badge(status: str, required: bool) -> str:
    label, color = _STYLE.get(status, (status.upper(), "#57606a"))
    weight = "bold" if required else "normal"
    tag = "" if required or status == "n/a" else " (not required)"
    return f'<span style="color:{color};font-weight:{weight}">{_e(label)}{_e(tag)}</span>'


def render_html(m: MergedGate, reports: Mapping[str, Path | str | None], page_dir: Path) -> str:
    """A self-contained page: verdict, problems, pools (with report links), the checklist."""
    color = "#1a7f37" if m.verdict == "pass" else "#cf222e"
    out = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(CHECKPOINT)} gate: merged verdict ({_e(m.verdict.upper())})</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(CHECKPOINT)} gate: all pools</h1>",
        f'<p id="verdict" class="verdict" style="color:{color};border-color:{color}">'
        f"{_e(CHECKPOINT)} verdict: {_e(m.verdict.upper())}</p>",
        f"<p>Merged by llorch-harness {_e(__version__)} at {_e(_iso(m.generated_at))}; "
        f"results older than {m.max_age_h:g} h or from another harness version are stale."
        + (f" Expected pools: {_e(', '.join(m.expected))}." if m.expected else "") + "</p>",
    ]
    if m.problems:
        out.append('<h2>Why not a pass</h2><ul id="problems" class="problems">')
        out += [f"<li>{_e(p)}</li>" for p in m.problems]
        out.append("</ul>")
    out.append('<h2>Pools</h2><table id="pools"><tr><th>pool</th><th>host</th><th>lab</th>'
               "<th>backends</th><th>harness</th><th>finished</th><th>worker binaries</th>"
               "<th>report</th></tr>")
    for p in m.pools:
        r = reports.get(p.name)
        link = (f'<a href="{_e(link_for(r, page_dir))}">report</a>' if r else "none")
        link += f' · <a href="{_e(link_for(p.source, page_dir))}">json</a>'
        bins = "<br>".join(
            f"{_e(b)}: <code>{_e(v.get('path'))}</code> sha256 <code>{_e(v.get('sha256'))}</code>"
            for b, v in sorted(p.worker_binaries.items())) or "none"
        stale = (f'<div class="reason" style="color:#cf222e">STALE: {_e(m.stale[p.name])}</div>'
                 if p.name in m.stale else "")
        lab = (f'<span style="color:#cf222e;font-weight:bold">{_e(p.lab)}: reference worker, '
               "not llorch-candled</span>" if p.lab != "real" else _e(p.lab))
        out.append(
            f"<tr><td>{_e(p.name)}</td><td>{_e(p.hostname or '')}</td><td>{lab}</td>"
            f"<td>{_e(', '.join(p.roles) or 'none')}</td><td>{_e(p.harness_version)}</td>"
            f"<td>{_e(_iso(p.finished_at))}{stale}</td><td>{bins}</td><td>{link}</td></tr>")
    for name, why in m.missing_pools.items():
        out.append(f'<tr><td>{_e(name)}</td><td colspan="7" style="color:#cf222e">'
                   f"MISSING: {_e(why)}</td></tr>")
    out.append("</table>")
    names = [p.name for p in m.pools] + list(m.missing_pools)
    out.append('<h2>Checklist</h2><table id="checklist"><tr><th>item</th>'
               + "".join(f"<th>{_e(n)}</th>" for n in names) + "<th>item verdict</th></tr>")
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
            reason = f'<div class="reason">{_e(c.reason)}</div>' if c.reason else ""
            cells.append(f"<td>{_badge(c.status, c.required)}{reason}</td>")
        verdict = _badge("pass" if r.ok else "fail", True)
        note = f'<div class="reason">{_e(r.note)}</div>' if r.note else ""
        concerns = f'<div class="reason">concerns: {_e(", ".join(r.concerns))}</div>'
        out.append(f"<tr><td>{_e(r.item)}{concerns}</td>{''.join(cells)}"
                   f"<td>{verdict}{note}</td></tr>")
    out.append("</table></body></html>\n")
    return "\n".join(out)


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
    lines.append(f"{CHECKPOINT} verdict: {m.verdict.upper()}")
    return lines


def write_outputs(m: MergedGate, reports: Mapping[str, Path | str | None], *,
                  html_path: Path | None, json_path: Path | None) -> None:
    """Write the merged HTML and JSON atomically; links are relative to each file's folder."""
    try:
        if html_path is not None:  # reports pass the one redaction, like the pools' own
            atomic_write_text(html_path, redact(render_html(m, reports, html_path.parent)))
        if json_path is not None:
            doc = to_json(m, reports, json_path.parent)
            atomic_write_text(json_path, redact(json.dumps(doc, indent=2)) + "\n")
    except OSError as exc:
        raise HarnessError(f"cannot write the merged report: {exc.strerror or exc} "
                           f"({exc.filename or ''})", exit_code=2) from None
