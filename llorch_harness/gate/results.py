"""Per-pool `--gate-json` results, loaded and validated (the input of `gate merge`).

Why apart: reading a file a pool produced is where bad input arrives; every problem is
one HarnessError line naming the file (exit 2), and only a regular file is ever read.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import NotRegularFileError, loads_json_strict, read_regular_bytes
from llorch_harness.gate.checklist import CHECKPOINT

GPU_BACKENDS: tuple[str, ...] = ("metal", "cuda")  # CP3 needs a pool for each
ALL_BACKENDS: tuple[str, ...] = ("cpu", "cuda", "metal")
_MAX_RESULT_BYTES = 64 * 1024 * 1024
POOL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_STATUS_ALIASES = {
    "pass": "pass", "passed": "pass",
    "fail": "fail", "failed": "fail",
    "error": "error",  # could not check (e.g. cargo offline): not a pass, not a code failure
    "skip": "skip", "skipped": "skip",
    "xfail": "xfail", "xfailed": "xfail",
}


@dataclass(frozen=True)
class TestOutcome:
    """One test's result as a pool reported it."""

    section: str
    item: str
    backend: str | None
    status: str  # pass | fail | error | skip | xfail
    reason: str | None
    nodeid: str | None
    model: str | None = None  # the model of a model-parametrized test (CP4), else None
    lab_cause: str | None = None  # an error the lab caused (gate.labcause), not the worker


@dataclass(frozen=True)
class ModelRun:
    """One (model, backend) run a pool selected (`model_runs`, CP4): its outcome and figures.

    Why typed: MODEL_SUPPORT.md is written from these alone, so a wrong type in a pool's
    document is bad input here, not a blank cell later."""

    model: str
    backend: str
    status: str  # pass | fail | error | skip | not run
    failed_items: tuple[str, ...] = ()
    reason: str | None = None
    name: str | None = None
    architecture: str | None = None
    repo: str | None = None
    revision: str | None = None
    size_bytes: int | None = None
    startup_s: float | None = None
    memory_bytes: int | None = None
    memory_kind: str | None = None  # vram | rss
    tokens_per_sec: float | None = None
    worker_lives: int | None = None
    tests: int | None = None


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
    performance: list[dict[str, Any]] = field(default_factory=list)  # llorch_harness.perf
    gate_models: tuple[str, ...] = ()  # --gate-models order (CP4); () in older results
    model_runs: list[ModelRun] = field(default_factory=list)  # () in older results


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
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad(source, f"{where}.model must be a string or null")
    lab = raw.get("lab_cause")
    if lab is not None and (not isinstance(lab, str) or status != "error"):
        raise _bad(source, f"{where}.lab_cause must be a string on an error item, or null")
    return TestOutcome(raw["section"], raw["item"], backend, status,
                       str(reason) if reason is not None else None,
                       str(nodeid) if nodeid is not None else None, model or None,
                       lab[:100] if lab else None)


_RUN_STATUSES = {**{k: v for k, v in _STATUS_ALIASES.items() if v != "xfail"},
                 "not run": "not run"}


def _run_num(raw: Mapping[str, Any], key: str, where: str, source: Path,
             integer: bool = False) -> Any:
    """An optional figure: null, or a finite number >= 0 (an integer where it counts)."""
    value = raw.get(key)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) \
            or value < 0:
        what = "an integer" if integer else "a number"
        raise _bad(source, f"{where}.{key} must be {what} >= 0 or null, got {str(value)[:30]!r}")
    return value


def _run_str(raw: Mapping[str, Any], key: str, where: str, source: Path) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise _bad(source, f"{where}.{key} must be a string or null")
    return value or None


def _run_memory(raw: Mapping[str, Any], where: str, source: Path) -> tuple[int | None, str | None]:
    mem = raw.get("memory_at_ready")
    if mem is None:
        return None, None
    if not isinstance(mem, dict) or mem.get("kind") not in ("vram", "rss"):
        raise _bad(source, f"{where}.memory_at_ready must be {{bytes, kind: vram|rss}} or null")
    return _run_num(mem, "bytes", f"{where}.memory_at_ready", source, integer=True), mem["kind"]


def _model_run(raw: Any, index: int, source: Path) -> ModelRun:
    where = f"model_runs[{index}]"
    if not isinstance(raw, dict):
        raise _bad(source, f"{where} must be an object")
    for key in ("model", "backend", "status"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _bad(source, f"{where}.{key} missing or not a string")
    if raw["backend"] not in ALL_BACKENDS:
        raise _bad(source, f"{where}.backend {raw['backend'][:30]!r} is not one of "
                           f"{', '.join(ALL_BACKENDS)}")
    status = _RUN_STATUSES.get(raw["status"])
    if status is None:
        raise _bad(source, f"{where}.status {raw['status'][:30]!r} is not one of "
                           "pass, fail, error, skip, not run")
    failed = raw.get("failed_items") or []
    if not isinstance(failed, list) or not all(isinstance(f, str) for f in failed):
        raise _bad(source, f"{where}.failed_items must be a list of strings")
    mem_bytes, mem_kind = _run_memory(raw, where, source)
    return ModelRun(
        model=raw["model"], backend=raw["backend"], status=status, failed_items=tuple(failed),
        reason=_run_str(raw, "reason", where, source), name=_run_str(raw, "name", where, source),
        architecture=_run_str(raw, "architecture", where, source),
        repo=_run_str(raw, "repo", where, source),
        revision=_run_str(raw, "revision", where, source),
        size_bytes=_run_num(raw, "size_bytes", where, source, integer=True),
        startup_s=_run_num(raw, "startup_s", where, source), memory_bytes=mem_bytes,
        memory_kind=mem_kind, tokens_per_sec=_run_num(raw, "tokens_per_sec", where, source),
        worker_lives=_run_num(raw, "worker_lives", where, source, integer=True),
        tests=_run_num(raw, "tests", where, source, integer=True))


def model_runs(doc: Mapping[str, Any], source: Path) -> list[ModelRun]:
    """The document's `model_runs` (none in older results); one per (model, backend)."""
    raw = doc.get("model_runs")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad(source, "'model_runs' must be a list of objects")
    runs = [_model_run(r, i, source) for i, r in enumerate(raw)]
    seen: set[tuple[str, str]] = set()
    for run in runs:
        if (run.model, run.backend) in seen:
            raise _bad(source, f"two model_runs for {run.model[:40]!r} on {run.backend}")
        seen.add((run.model, run.backend))
    return runs


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
    if not pool_name or not POOL_NAME_RE.fullmatch(pool_name):
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
        performance=performance_section(doc.get("performance"), source),
        gate_models=_str_list(doc, "gate_models", source) or (),
        model_runs=model_runs(doc, source),
    )


def performance_section(raw: Any, source: Path) -> list[dict[str, Any]]:
    """The document's `performance` records (llorch_harness.perf), each type-checked here
    as a store's rows are: a string where a number belongs, a `check` that is not an
    object or a trend id that is not an integer is one line naming the field."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad(source, "'performance' must be a list of records")
    from llorch_harness.perf import checked
    from llorch_harness.perf.store import StoredRun

    for i, rec in enumerate(raw):
        try:
            StoredRun.from_json(rec, f"performance[{i}]")
            checked.trend(rec.get("trend"), f"performance[{i}].trend")
        except checked.BadRecord as exc:
            raise _bad(source, str(exc)) from None
    return list(raw)


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
    if sep and POOL_NAME_RE.fullmatch(name) and not Path(arg).exists():
        return name, Path(rest)
    return None, Path(arg)


def parse_pool_list(text: str | None) -> list[str]:
    if not text:
        return []
    names = [p.strip() for p in text.split(",") if p.strip()]
    for n in names:
        if not POOL_NAME_RE.fullmatch(n):
            raise HarnessError(f"invalid pool name {n[:40]!r} in pool list",
                               "use letters, digits, '.', '_' and '-'", exit_code=2)
    return list(dict.fromkeys(names))
