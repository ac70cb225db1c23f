"""One commit judged: moved to in the worktree, built (or taken from the cache), its chosen
items run K times through the gate, and the rule's decision (rule.py).

Why the performance stores: "No performance regression" compares a build with earlier
passing runs of the same fingerprint. In a bisect the only fair baseline is the good
commit measured in this bisect, on this device, so the good commit's runs record into a
store private to the bisect, and every later run gets a fresh copy of exactly that store:
each commit is compared with the good commit, never with the pool's history or with other
commits of the range.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llorch_harness.bisect import rule
from llorch_harness.bisect.build import Builder, BuildOutcome
from llorch_harness.bisect.gatestep import GateConfig, ItemRun, run_gate
from llorch_harness.bisect.history import Commit
from llorch_harness.bisect.worktree import Worktree
from llorch_harness.perf.baseline import DEFAULT_RULE
from llorch_harness.perf.runkey import PERF_ITEM

Say = Callable[[str], None]


@dataclass
class StepRecord:
    """A row of the step table."""

    label: str  # "good", "bad", "find items at good", "1", "2", ...
    phase: str  # "endpoint" | "discover" | "step"
    index: int  # position in the range (oldest 0); -1 for the good commit
    commit: Commit
    build: BuildOutcome
    runs: list[dict[str, ItemRun]] = field(default_factory=list)
    decision: str = rule.SKIP
    item_decisions: dict[str, str] = field(default_factory=dict)
    test_seconds: float = 0.0
    note: str = ""  # why a skip is a skip

    def statuses(self, item: str) -> list[str]:
        return [r[item].status for r in self.runs if item in r]

    def reason(self, item: str, status: str) -> str:
        """The reason of the first run of `item` with `status`."""
        return next((r[item].reason for r in self.runs
                     if item in r and r[item].status == status and r[item].reason), "")

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "phase": self.phase, "index": self.index,
                "commit": self.commit.to_json(),
                "build": {"ok": self.build.ok, "cached": self.build.cached,
                          "seconds": round(self.build.seconds, 3), "detail": self.build.detail,
                          "crate_dir": self.build.crate_dir,
                          "log": str(self.build.log) if self.build.log else None},
                "runs": [{k: v.to_json() for k, v in r.items()} for r in self.runs],
                "item_decisions": self.item_decisions, "decision": self.decision,
                "test_seconds": round(self.test_seconds, 3), "note": self.note}


class PerfStores:
    """The good commit's private results store, and a fresh copy of it for every other run."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.baseline = directory / "good.sqlite"

    def for_run(self, label: str, run: int, baseline: bool) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        if baseline:
            return self.baseline
        copy = self.directory / f"{label}-run{run}.sqlite"
        copy.unlink(missing_ok=True)
        if self.baseline.is_file():
            src = sqlite3.connect(self.baseline)
            dst = sqlite3.connect(copy)
            try:
                src.backup(dst)  # consistent even with the write-ahead log in use
            finally:
                src.close()
                dst.close()
        return copy


class Evaluator:
    """Judges commits of one bisect: one worktree, one builder, one gate configuration."""

    def __init__(self, worktree: Worktree, builder: Builder, gate: GateConfig, run_dir: Path,
                 say: Say) -> None:
        self.worktree = worktree
        self.builder = builder
        self.gate = gate
        self.run_dir = run_dir
        self.say = say
        self.perf = PerfStores(run_dir / "perf")

    def build(self, commit: Commit, head: str) -> BuildOutcome:
        hit = self.builder.cached(commit.sha)
        if hit is not None:
            self.say(f"{head}: build cached")
            return hit
        self.say(f"{head}: building")
        self.worktree.checkout(commit.sha)
        out = self.builder.build(commit.sha, self.worktree.path,
                                 self.run_dir / "builds" / f"{commit.short}.log")
        self.say(f"{head}: built in {out.seconds:.1f} s" if out.ok else
                 f"{head}: build failed, skipped: {out.detail}")
        return out

    def judge(self, rec: StepRecord, items: Sequence[str] | None, runs: int, head: str,
              perf_baseline: bool = False) -> StepRecord:
        """Run the gate `runs` times (items None: the whole gate once, to find items)."""
        if not rec.build.ok or rec.build.binary is None:
            rec.note = rec.build.detail
            return rec
        bin_dir = rec.build.binary.parent
        uses_perf = items is not None and PERF_ITEM in items
        if uses_perf and perf_baseline:
            runs = max(runs, DEFAULT_RULE.min_runs)  # a baseline needs that many runs
        t0 = time.monotonic()
        for j in range(1, runs + 1):
            what = "the whole gate" if items is None else f"{len(items)} item(s)"
            self.say(f"{head}: testing {what}, run {j} of {runs}")
            db = self.perf.for_run(rec.label, j, perf_baseline) if uses_perf else None
            out = self.run_dir / "steps" / _safe(rec.label) / f"run{j}"
            got = run_gate(self.gate, bin_dir, items, out, results_db=db)
            rec.runs.append(got.items)
            shown = [f"{name} {r.status.upper()}" for name, r in got.items.items()
                     if items is not None or r.status in ("fail", "error")]
            self.say(f"{head}: run {j}: {', '.join(shown) or 'no item failed'}")
        rec.test_seconds = time.monotonic() - t0
        if items is not None:
            per_item = {i: rec.statuses(i) for i in items}
            rec.item_decisions = {i: rule.item_decision(s) for i, s in per_item.items()}
            rec.decision = rule.commit_decision(per_item)
            if rec.decision == rule.SKIP:
                rec.note = "could not decide: " + "; ".join(
                    f"{i}: {' '.join(per_item[i]) or 'no run'}" for i, d in
                    rec.item_decisions.items() if d != rule.GOOD)
        return rec


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in label)
