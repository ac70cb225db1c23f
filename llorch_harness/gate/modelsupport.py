"""CP4's model support matrix (MODEL_SUPPORT.md) built from the merged gate results.

Why generated: a hand-typed matrix says whatever its author believed; this one says only
what the pools' `model_runs` say (status, figures, failed items), names the results it
came from, and puts a model a pool did not run in a "not run" cell, never a silent gap.
The column labels are the only text typed here. Markdown and HTML: `gate.supportrender`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from llorch_harness.gate.results import ALL_BACKENDS, ModelRun, PoolResult

if TYPE_CHECKING:  # the merge imports render, render imports this: the type only
    from llorch_harness.gate.merge import MergedGate

BACKEND_LABELS = {"metal": "Metal", "cuda": "CUDA", "cpu": "CPU"}
STATUS_MARKS = {"pass": "✅", "fail": "❌", "error": "⚠️", "skip": "⏭️", "not run": "⛔"}
UNKNOWN = "—"
_GIB, _MIB, _KIB = 1024 ** 3, 1024 ** 2, 1024


@dataclass(frozen=True)
class Column:
    """One backend one pool plays (or ran models on without playing it)."""

    pool: str
    backend: str
    played: bool  # False: the pool ran models there but was not run for that backend
    embedded: bool  # the pool's result came from the embedded lab

    @property
    def label(self) -> str:
        return f"{BACKEND_LABELS.get(self.backend, self.backend)} ({self.pool})"


@dataclass(frozen=True)
class SupportCell:
    """One model on one column: the pool's run, or why there is none."""

    column: Column
    status: str  # pass | fail | error | skip | not run
    run: ModelRun | None
    reason: str | None  # the run's reason, or why no run is there


@dataclass
class ModelEntry:
    """One model's row: what the pools reported about it, and its cells."""

    model: str
    name: str | None
    architecture: str | None
    repo: str | None
    sizes: dict[str, int]  # pool -> size on disk
    revisions: dict[str, str]  # pool -> revision
    cells: list[SupportCell]


@dataclass
class ModelSupport:
    """The matrix with the merged verdict it belongs to."""

    merged: MergedGate
    columns: list[Column]
    models: list[ModelEntry]

    @property
    def cells(self) -> list[SupportCell]:
        return [c for e in self.models for c in e.cells]

    @property
    def runs_passed(self) -> int:
        return sum(c.status == "pass" for c in self.cells)

    @property
    def embedded_pools(self) -> list[PoolResult]:
        return [p for p in self.merged.pools if p.lab != "real"]


def has_model_runs(pools: Sequence[PoolResult]) -> bool:
    return any(p.model_runs for p in pools)


def model_order(pools: Sequence[PoolResult]) -> list[str]:
    """Each pool's `--gate-models` order (first pool listing a model places it), then the
    models the runs name that no pool lists, sorted."""
    order = list(dict.fromkeys(m for p in pools for m in p.gate_models))
    rest = sorted({r.model for p in pools for r in p.model_runs} - set(order))
    return order + rest


def columns(pools: Sequence[PoolResult]) -> list[Column]:
    """Per pool, the backends it plays, then any other backend it ran models on."""
    out = []
    for p in pools:
        ran = {r.backend for r in p.model_runs}
        for b in ALL_BACKENDS:
            if b in p.roles or b in ran:
                out.append(Column(p.name, b, b in p.roles, p.lab != "real"))
    return out


def _cell(pool: PoolResult, column: Column, model: str) -> SupportCell:
    run = next((r for r in pool.model_runs if r.model == model and r.backend == column.backend),
               None)
    if run is not None:
        return SupportCell(column, run.status, run, run.reason)
    if not pool.model_runs:
        why = "this result has no model_runs (run the gate with --gate-models)"
    elif pool.gate_models and model not in pool.gate_models:
        why = f"not in pool {pool.name}'s --gate-models"
    else:
        why = f"pool {pool.name} reported no run of it on {column.backend}"
    return SupportCell(column, "not run", None, why)


def _first(runs: Sequence[ModelRun], key: str) -> Any:
    return next((getattr(r, key) for r in runs if getattr(r, key) is not None), None)


def build(merged: MergedGate) -> ModelSupport | None:
    """The matrix of the merged pools; None when no pool reported model runs."""
    pools = merged.pools
    if not has_model_runs(pools):
        return None
    cols = columns(pools)
    by_name = {p.name: p for p in pools}
    entries = []
    for model in model_order(pools):
        runs = [r for p in pools for r in p.model_runs if r.model == model]
        sizes = {p.name: s for p in pools if (s := _first(
            [r for r in p.model_runs if r.model == model], "size_bytes")) is not None}
        revisions = {p.name: v for p in pools if (v := _first(
            [r for r in p.model_runs if r.model == model], "revision")) is not None}
        entries.append(ModelEntry(
            model, _first(runs, "name"), _first(runs, "architecture"), _first(runs, "repo"),
            sizes, revisions, [_cell(by_name[c.pool], c, model) for c in cols]))
    return ModelSupport(merged, cols, entries)


# --------------------------------------------------------------------------- figures


def fmt_bytes(n: int) -> str:
    if n >= _GIB:
        return f"{n / _GIB:.2f} GiB"
    if n >= _MIB:
        return f"{n / _MIB:.1f} MiB"
    if n >= _KIB:
        return f"{n / _KIB:.1f} KiB"
    return f"{n} B"


def fmt_seconds(s: float) -> str:
    return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"


def unknown(cell: SupportCell) -> str:
    """The dash for a figure a cell lacks, with why."""
    if cell.run is None:
        return f"{UNKNOWN} (not run)"
    if cell.status in ("skip", "not run", "error"):
        return f"{UNKNOWN} ({cell.status})"
    return f"{UNKNOWN} (not reported)"


def figures(cell: SupportCell) -> dict[str, str]:
    """startup, memory at ready, tokens/s of a cell as text ("—" with why when unknown)."""
    run = cell.run
    dash = unknown(cell)
    if run is None:
        return {"startup": dash, "memory": dash, "tokens": dash}
    memory = (f"{fmt_bytes(run.memory_bytes)} {(run.memory_kind or '').upper()}".strip()
              if run.memory_bytes is not None else dash)
    return {
        "startup": fmt_seconds(run.startup_s) if run.startup_s is not None else dash,
        "memory": memory,
        "tokens": f"{run.tokens_per_sec:.1f} tok/s" if run.tokens_per_sec is not None else dash,
    }


def size_text(entry: ModelEntry) -> str:
    """One size when the pools agree, else each pool's."""
    distinct = set(entry.sizes.values())
    if not distinct:
        return f"{UNKNOWN} (not reported)"
    if len(distinct) == 1:
        return fmt_bytes(distinct.pop())
    return ", ".join(f"{fmt_bytes(s)} ({p})" for p, s in entry.sizes.items())


def status_text(cell: SupportCell) -> str:
    """`✅ pass`, `❌ fail: item; item`, `⛔ not run`, ..."""
    mark = STATUS_MARKS.get(cell.status, "?")
    items = cell.run.failed_items if cell.run else ()
    return f"{mark} {cell.status}" + (f": {'; '.join(items)}" if items else "")


def iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") \
        if when else None


# --------------------------------------------------------------------------- JSON


def _cell_json(cell: SupportCell) -> dict[str, Any]:
    run = cell.run
    return {
        "pool": cell.column.pool, "backend": cell.column.backend, "status": cell.status,
        "reason": cell.reason,
        "failed_items": list(run.failed_items) if run else [],
        "startup_s": run.startup_s if run else None,
        "memory_at_ready": ({"bytes": run.memory_bytes, "kind": run.memory_kind}
                            if run and run.memory_bytes is not None else None),
        "tokens_per_sec": run.tokens_per_sec if run else None,
        "worker_lives": run.worker_lives if run else None,
        "tests": run.tests if run else None,
    }


def to_json(ms: ModelSupport) -> dict[str, Any]:
    """The matrix as data (the merged `--json`'s `model_support`)."""
    return {
        "columns": [{"pool": c.pool, "backend": c.backend, "label": c.label,
                     "played": c.played, "lab": "embedded" if c.embedded else "real"}
                    for c in ms.columns],
        "models": [{"model": e.model, "name": e.name, "architecture": e.architecture,
                    "repo": e.repo, "revisions": e.revisions, "size_bytes": e.sizes,
                    "cells": [_cell_json(c) for c in e.cells]} for e in ms.models],
        "runs": {"total": len(ms.cells), "passed": ms.runs_passed},
        "embedded_pools": [p.name for p in ms.embedded_pools],
    }


def no_model_runs_problem(pools: Sequence[PoolResult]) -> str:
    """The one line for `--model-support` when nothing can fill it."""
    files = ", ".join(f"{p.name}: {p.source}" for p in pools) or "no results given"
    return f"no merged gate result carries model_runs ({files})"

