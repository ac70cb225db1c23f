"""Type checks for performance records where they are loaded: a store's rows, an export's
runs, a gate JSON's `performance` section.

Why here and not where they are rendered: a pool's store and its gate JSON are exactly what
`gate merge --perf` takes from another machine. A string where a number belongs, a `check`
that is not an object or an id that is not an integer must be refused as it is read, with
one line naming the field (`BadRecord`; the loader adds the file and exits 2), and never
reach a page, a plot or arithmetic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

MAX_TEXT = 4096  # a field of a record is a name, a note or a line, never a log
MAX_DOC = 1 << 20  # a JSON column (fingerprint, check with its samples and host) is a document


class BadRecord(ValueError):
    """One field of one record is not what it must be (the message names it)."""


def _show(value: Any) -> str:
    return repr(value)[:40] if isinstance(value, str) else type(value).__name__


def text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRecord(f"{where} must be a string, got {_show(value)}")
    if len(value) > MAX_TEXT:
        raise BadRecord(f"{where} is longer than {MAX_TEXT} characters")
    return value


def opt_text(value: Any, where: str) -> str | None:
    return None if value is None else text(value, where)


def integer(value: Any, where: str, minimum: int | None = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) \
            or (minimum is not None and value < minimum):
        at_least = f" >= {minimum}" if minimum is not None else ""
        raise BadRecord(f"{where} must be an integer{at_least}, got {_show(value)}")
    return value


def number(value: Any, where: str) -> float | None:
    """null, or a finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRecord(f"{where} must be a finite number or null, got {_show(value)}")
    return float(value)


def obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRecord(f"{where} must be an object, got {_show(value)}")
    return value


def json_obj(raw: Any, where: str, *, optional: bool) -> dict[str, Any] | None:
    """A JSON object stored as text in a column (None for SQL NULL when optional)."""
    if raw is None and optional:
        return None
    if not isinstance(raw, str):
        raise BadRecord(f"{where} must be a string, got {_show(raw)}")
    if len(raw) > MAX_DOC:
        raise BadRecord(f"{where} is longer than {MAX_DOC} characters")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRecord(f"{where} is not valid JSON") from None
    return obj(doc, where)


def comparison(raw: Any, where: str) -> dict[str, Any]:
    """One entry of a check's `comparisons` (perf.baseline.Comparison.to_json)."""
    c = obj(raw, where)
    runs = c.get("runs") or []
    if not isinstance(runs, list):
        raise BadRecord(f"{where}.runs must be a list of run ids")
    return {**c, "name": text(c.get("name"), f"{where}.name"),
            "label": opt_text(c.get("label"), f"{where}.label"),
            "verdict": text(c.get("verdict"), f"{where}.verdict"),
            "note": opt_text(c.get("note"), f"{where}.note"),
            "runs": [integer(r, f"{where}.runs[{i}]") for i, r in enumerate(runs)],
            **{k: number(c.get(k), f"{where}.{k}")
               for k in ("value", "baseline", "band", "mad", "change")}}


def check(raw: Any, where: str) -> dict[str, Any] | None:
    """A record's check (perf.baseline.PerfVerdict.to_json): null, or an object whose
    message is text and whose comparisons are typed."""
    if raw is None:
        return None
    c = obj(raw, where)
    comps = c.get("comparisons") or []
    if not isinstance(comps, list):
        raise BadRecord(f"{where}.comparisons must be a list")
    samples = obj(c.get("samples") or {}, f"{where}.samples")
    for name, values in samples.items():
        if not isinstance(values, list):
            raise BadRecord(f"{where}.samples.{str(name)[:40]} must be a list of numbers")
        for i, v in enumerate(values):
            if number(v, f"{where}.samples.{str(name)[:40]}[{i}]") is None:
                raise BadRecord(f"{where}.samples.{str(name)[:40]}[{i}] must be a number")
    return {**c, "message": opt_text(c.get("message"), f"{where}.message"),
            "status": opt_text(c.get("status"), f"{where}.status"),
            "comparisons": [comparison(x, f"{where}.comparisons[{i}]")
                            for i, x in enumerate(comps)]}


def figure(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A figure's fields: name, value, spread, n, note (typed)."""
    name = text(raw.get("name"), f"{where}.name")
    at = f"{where} {name[:40]!r}"
    return {"name": name, "value": number(raw.get("value"), f"{at}.value"),
            "spread": number(raw.get("spread"), f"{at}.spread"),
            "n": integer(raw.get("n") or 0, f"{at}.n"),
            "note": opt_text(raw.get("note") or None, f"{at}.note")}


def run_fields(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The scalar fields every record has, typed (the caller adds figures and flags)."""
    return {"id": integer(raw.get("id"), f"{where}.id"),
            **{k: text(raw.get(k), f"{where}.{k}") for k in (
                "run_key", "recorded_at", "pool", "model", "backend", "baseline_key",
                "status")},
            "binary_sha256": opt_text(raw.get("binary_sha256"), f"{where}.binary_sha256"),
            "gate_verdict": opt_text(raw.get("gate_verdict"), f"{where}.gate_verdict")}


def trend(raw: Any, where: str) -> list[dict[str, Any]]:
    """A record's `trend` in a gate JSON: null, or a list of {id, recorded_at, status,
    figures: {name: number or null}}."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRecord(f"{where} must be a list")
    out = []
    for i, t in enumerate(raw):
        at = f"{where}[{i}]"
        t = obj(t, at)
        figs = obj(t.get("figures") or {}, f"{at}.figures")
        out.append({"id": integer(t.get("id"), f"{at}.id"),
                    "recorded_at": text(t.get("recorded_at") or "", f"{at}.recorded_at"),
                    "status": text(t.get("status") or "", f"{at}.status"),
                    "figures": {text(k, f"{at}.figures key"): number(v, f"{at}.figures.{k}")
                                for k, v in figs.items()}})
    return out
