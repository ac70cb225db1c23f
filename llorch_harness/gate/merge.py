"""One CP3 verdict across pools: merge per-pool `--gate-json` results and judge them
(loading in `gate.results`, the page, JSON and terminal lines in `gate.render`).

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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from llorch_harness import __version__
from llorch_harness.errors import HarnessError
from llorch_harness.gate.checklist import GateItem, checklist
from llorch_harness.gate.labcause import verdict_line
from llorch_harness.gate.render import (
    MERGE_SCHEMA,
    find_report,
    link_for,
    render_html,
    summary_lines,
    to_json,
    write_outputs,
)
from llorch_harness.gate.results import (
    ALL_BACKENDS,
    GPU_BACKENDS,
    ModelRun,
    PoolResult,
    TestOutcome,
    load_result,
    parse_pool_list,
    parse_result,
    parse_time,
    pool_roles,
    split_named,
)

__all__ = [  # loading lives in results, output in render; callers take all from here
    "ALL_BACKENDS", "DEFAULT_MAX_AGE_H", "GPU_BACKENDS", "MERGE_SCHEMA", "Cell",
    "MergedGate", "ModelRun", "PoolResult", "Row", "TestOutcome", "find_report", "link_for",
    "load_result", "merge", "parse_pool_list", "parse_result", "parse_time", "pool_roles",
    "render_html", "split_named", "summary_lines", "to_json", "write_outputs",
]

DEFAULT_MAX_AGE_H = 24.0
FUTURE_SKEW_S = 300.0  # a result "from the future" beyond this is a clock problem: stale


@dataclass
class Cell:
    """One item on one pool."""

    status: str  # pass | fail | error | skip | xfail | not run | n/a
    required: bool
    reason: str | None = None
    lab_cause: str | None = None  # an error the lab caused (hub, ssh, disk): not the worker


@dataclass
class Row:
    """One checklist item across the pools, and whether it holds."""

    section: str
    item: str
    seed: bool
    concerns: tuple[str, ...]
    cells: dict[str, Cell]
    ok: bool
    note: str | None = None  # e.g. "no pool ran metal"


@dataclass
class MergedGate:
    """The verdict with every problem named, the rows, and what was missing or stale.

    Lab failures (a required item the lab kept from being checked) are listed apart in
    `lab_problems`: alone they make the verdict "incomplete", never "pass" nor "fail"."""

    verdict: str  # "pass" | "fail" | "incomplete"
    pools: list[PoolResult]
    rows: list[Row]
    problems: list[str]
    missing_pools: dict[str, str]  # name -> why
    stale: dict[str, str]  # name -> why
    expected: list[str]
    max_age_h: float
    generated_at: datetime
    lab_problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict == "pass" else 1

    @property
    def verdict_line(self) -> str:
        """`FAIL (worker: 2 items)`, `INCOMPLETE (lab: hub unreachable)` (labcause)."""
        failed = sum(any(c.status == "fail" for c in r.cells.values()) for r in self.rows)
        others = sum(not p.startswith("FAILED ") for p in self.problems)
        causes = [c.lab_cause for r in self.rows for c in r.cells.values()
                  if c.lab_cause and c.required and c.status == "error"]
        return verdict_line(self.verdict, failed, causes,
                            [f"{others} other problem{'s' if others != 1 else ''}"]
                            if others else [])


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
        return Cell(o.status, required, f"{o.backend or 'pool'}: {o.reason or o.status}",
                    o.lab_cause if o.status == "error" else None)
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
    stale = _pool_problems(pools, now, max_age_h, harness_version, problems)
    lab: list[str] = []
    rows = _rows(pools, list(items if items is not None else checklist()), problems, lab)
    problems += _model_run_problems(pools)
    verdict = "fail" if problems else "incomplete" if lab else "pass"
    return MergedGate(verdict, list(pools), rows, problems, missing, stale, expected,
                      max_age_h, now, lab)


def _pool_problems(pools: Sequence[PoolResult], now: datetime, max_age_h: float,
                   harness_version: str, problems: list[str]) -> dict[str, str]:
    """What is wrong with the pools themselves (problems appended); -> stale pool -> why."""
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
        if p.exitstatus not in (None, 0) and not _only_lab_failed(p):
            problems.append(f"pytest on pool {p.name} exited {p.exitstatus}")
    played = {b for p in pools for b in p.roles}
    for backend in GPU_BACKENDS:
        if backend not in played:
            problems.append(f"no pool ran the {backend} backend (CP3 needs a {backend} pool)")
    return stale


def _only_lab_failed(pool: PoolResult) -> bool:
    """pytest's "tests failed" status whose every failure the lab caused: named per item
    among the lab failures, not again as a failure of the pool."""
    bad = [o for o in pool.outcomes if o.status in ("fail", "error")]
    return pool.exitstatus == 1 and bool(bad) and all(o.lab_cause for o in bad)


def _model_run_problems(pools: Sequence[PoolResult]) -> list[str]:
    """A failed model run that no failed test of that model and backend shows (a document
    at odds with itself) still fails the verdict. A failure its tests carry is already a
    failed item: named once, there, not twice. Skipped tests fail through their items; a
    run with no test ("not run") shows in MODEL_SUPPORT.md, it judges nothing here."""
    out = []
    for p in pools:
        for run in p.model_runs:
            if run.status != "fail":
                continue
            if any(o.status == "fail" and o.model == run.model
                   and o.backend in (run.backend, None) for o in p.outcomes):
                continue
            why = "; ".join(run.failed_items) or run.reason or "no reason given"
            out.append(f"MODEL FAILED {run.model} on {run.backend} on pool {p.name}, "
                       f"though no test of it failed there: {why}")
    return out


def _rows(pools: Sequence[PoolResult], gate_items: list[GateItem],
          problems: list[str], lab: list[str]) -> list[Row]:
    """The checklist's rows in order, then items the pools ran that it does not know."""
    known = {(gi.section, gi.item) for gi in gate_items}
    extra_keys: list[tuple[str, str]] = []
    for p in pools:
        for o in p.outcomes:
            key = (o.section, o.item)
            if key not in known and key not in extra_keys:
                extra_keys.append(key)
    rows = [_row(gi.section, gi.item, gi.seed, gi.backends, pools, problems, lab)
            for gi in gate_items]
    for section, item in extra_keys:
        concerns = next((p.concerns[(section, item)] for p in pools
                         if (section, item) in p.concerns), ALL_BACKENDS)
        row = _row(section, item, False, concerns, pools, problems, lab)
        row.note = "not in this harness's checklist"
        rows.append(row)
    return rows


def _row(section: str, item: str, seed: bool, concerns: Sequence[str],
         pools: Sequence[PoolResult], problems: list[str], lab: list[str]) -> Row:
    cells = {p.name: _cell(p, section, item, concerns) for p in pools}
    ok = True
    label = f"{section} / {item}"
    for name, c in cells.items():
        if c.status == "fail":
            ok = False
            problems.append(f"FAILED {label} on pool {name}: {c.reason}")
        elif c.required and c.lab_cause:  # the lab's failure: its own list, not the worker's
            ok = False
            lab.append(f"COULD NOT CHECK (lab: {c.lab_cause}) {label} on pool {name}: "
                       f"{c.reason or c.status}")
        elif c.required and c.status != "pass":
            ok = False
            why = c.reason or c.status
            problems.append(f"{c.status.upper()} {label} on pool {name} (required there; "
                            f"{'an' if c.status == 'error' else 'a'} {c.status} is not a "
                            f"pass): {why}")
    note = None
    if seed and not any(c.required for c in cells.values()):
        gpu = [b for b in concerns if b in GPU_BACKENDS]
        if gpu and len(gpu) == len(concerns):
            ok = False
            note = f"no {' or '.join(gpu)} pool"
            problems.append(f"NOT VERIFIED {label}: {note} among the results")
    return Row(section, item, seed, tuple(concerns), cells, ok, note)

