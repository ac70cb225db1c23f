"""`llorch-harness bisect`: the search, from checked input to the answer.

Order, so that bad input costs nothing: item names, backend and outputs are checked, then
the range (one line, exit 2, before any build); then the device lease is taken for the whole
bisect and the worktree made; then (without --item) the whole gate runs once at --good and
at --bad to find the items that fail at bad and pass at good; then --good and --bad are
judged with the chosen items K times (a good commit that fails them, or a bad one that
passes, is one line, exit 2, before anything between them is built); then the binary
search. The worktree is removed and the lease released however this ends.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TextIO, cast

from llorch_harness.bisect import history, rule
from llorch_harness.bisect.build import Builder, parse_build_command
from llorch_harness.bisect.gatestep import STEP_TIMEOUT_S, GateConfig
from llorch_harness.bisect.steps import Evaluator, Say, StepRecord
from llorch_harness.bisect.worktree import Worktree, sweep_stale
from llorch_harness.choices import EXIT_CODES
from llorch_harness.errors import HarnessError
from llorch_harness.gate.checklist import checklist
from llorch_harness.pool import leases
from llorch_harness.pool.leaseholders import start_run
from llorch_harness.pool.paths import PoolPaths


@dataclass(frozen=True)
class BisectOptions:
    repo: Path
    good: str
    bad: str
    backend: str
    pool_root: Path
    suite: Path
    items: tuple[str, ...] = ()  # () finds them: fail at bad, pass at good
    runs: int = 3
    build_cmd: str | None = None
    gate_model: str | None = None
    gpu: int = 0
    build_timeout: float = 3600.0
    step_timeout: float = STEP_TIMEOUT_S
    lease_dir: str | None = None
    lease_wait: float | None = None


@dataclass
class BisectResult:
    """Everything the report shows."""

    options: BisectOptions
    range: history.Range
    items: list[str]
    found_items: bool  # True when the items were found by the discovery runs
    build_command: list[str]
    steps: list[StepRecord] = field(default_factory=list)
    first: int = -1  # the first bad commit is one of range.commits[first..last]
    last: int = -1
    started_at: str = ""
    finished_at: str = ""
    run_dir: Path | None = None

    @property
    def test_steps(self) -> int:
        return sum(1 for s in self.steps if s.phase == "step" and s.runs)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_items(names: Sequence[str], backend: str) -> list[str]:
    """Checklist item names, exactly; one line with "did you mean" otherwise."""
    known = {i.item: i for i in checklist()}
    out: list[str] = []
    for name in names:
        gi = known.get(name)
        if gi is None:
            close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.5)
            hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close else
                    "an item's text as the gate checklist shows it, e.g. 'No broadcasting "
                    "errors'")
            raise HarnessError(f"--item {name!r} is not a gate checklist item", hint,
                               exit_code=EXIT_CODES["checklist item"])
        if backend not in gi.backends:
            raise HarnessError(f"--item {name!r} concerns {', '.join(gi.backends)}, not "
                               f"{backend}", f"pass --backend {gi.backends[0]}", exit_code=2)
        if name not in out:
            out.append(name)
    return out


@contextlib.contextmanager
def device_lease(opts: BisectOptions, out: IO[str]) -> Iterator[None]:
    """The device for the whole bisect; the gate runs share it through the run token."""
    start_run()  # this process and the gate runs it starts are one run for the leases
    lease = leases.lease_for_spawn(opts.backend, opts.gpu, os.environ, opts.lease_dir,
                                   opts.lease_wait, str(opts.pool_root), "bisect",
                                   cast(TextIO, out))
    try:
        yield
    finally:
        if lease is not None:
            lease.release()


def run_dir_for(pool_root: Path) -> Path:
    paths = PoolPaths.at(pool_root)
    runs = paths.writable_dir(paths.runtime_dir / "bisect" / "runs")
    sweep_stale(runs)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return paths.writable_dir(runs / f"{stamp}-{os.getpid()}")


def run_bisect(opts: BisectOptions, out: IO[str] | None = None) -> BisectResult:
    stream = out or sys.stdout

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    items = check_items(opts.items, opts.backend)
    command = parse_build_command(opts.build_cmd, opts.backend)
    root = history.repo_root(opts.repo)
    rng = history.first_parent_range(root, opts.good, opts.bad)
    result = BisectResult(opts, rng, items, not items, command, started_at=now())
    say(f"bisect: {rng.size} commit(s) after --good {opts.good} ({rng.good[:12]}) up to "
        f"--bad {opts.bad} ({rng.bad[:12]}) on the first-parent path; backend "
        f"{opts.backend}; {opts.runs} run(s) per commit")
    run_dir = run_dir_for(opts.pool_root)
    result.run_dir = run_dir
    paths = PoolPaths.at(opts.pool_root)
    builder = Builder(paths.writable_dir(paths.runtime_dir / "bisect" / "builds"),
                      paths.runtime_dir / "bisect" / "target" / opts.backend, opts.backend,
                      command, dict(os.environ), opts.build_timeout)
    with device_lease(opts, stream), \
            Worktree.create(root, run_dir / f"llorch-bisect-{run_dir.name}", rng.good) as wt:
        gate = GateConfig(opts.suite, opts.backend, opts.pool_root, opts.gate_model,
                          dict(os.environ), opts.step_timeout)
        ev = Evaluator(wt, builder, gate, run_dir, say)
        if not result.items:
            result.items = _discover(ev, result, say)
        _endpoints(ev, result, say)
        _search(ev, result, say)
    result.finished_at = now()
    return result


def _commit(result: BisectResult, index: int) -> history.Commit:
    sha = result.range.good if index < 0 else result.range.commits[index]
    return history.commit_info(result.range.root, sha)


def _judge(ev: Evaluator, result: BisectResult, index: int, label: str, phase: str,
           head: str, items: Sequence[str] | None, runs: int,
           baseline: bool = False) -> StepRecord:
    commit = _commit(result, index)
    head = f"{head} {commit.short} {commit.subject[:60]!r}"
    rec = StepRecord(label, phase, index, commit, ev.build(commit, head))
    ev.judge(rec, items, runs, head, perf_baseline=baseline)
    result.steps.append(rec)
    return rec


def _discover(ev: Evaluator, result: BisectResult, say: Say) -> list[str]:
    """The whole gate once at good and at bad: the items failing at bad, passing at good."""
    last = result.range.size - 1
    good = _judge(ev, result, -1, "find items at good", "discover", "[find items] good", None, 1)
    bad = _judge(ev, result, last, "find items at bad", "discover", "[find items] bad", None, 1)
    for rec, flag in ((good, "--good"), (bad, "--bad")):
        if not rec.build.ok:
            raise HarnessError(f"{flag} {rec.commit.short} does not build: {rec.build.detail}",
                               f"see {rec.build.log}", exit_code=2)
    at_good = good.runs[0] if good.runs else {}
    at_bad = bad.runs[0] if bad.runs else {}
    found = [i for i, r in at_bad.items()
             if r.status == "fail" and at_good.get(i) is not None and at_good[i].status == "pass"]
    if not found:
        failing = [i for i, r in at_bad.items() if r.status == "fail"] or ["none"]
        raise HarnessError(f"no gate item fails at --bad and passes at --good (failing at "
                           f"--bad: {', '.join(failing)})",
                           "name the item with --item NAME", exit_code=2)
    say(f"[find items] failing at bad, passing at good: {', '.join(found)}")
    return found



def _endpoints(ev: Evaluator, result: BisectResult, say: Say) -> None:
    """--good must pass the items and --bad fail them, each by the rule, before any commit
    between them is built."""
    runs, items = result.options.runs, result.items
    good = _judge(ev, result, -1, "good", "endpoint", "[good]", items, runs, baseline=True)
    if good.decision != rule.GOOD:
        raise HarnessError(f"--good {result.options.good} ({good.commit.short}) is not good: "
                           f"{_why(good, items)}", "pass a --good commit where the items pass",
                           exit_code=2)
    last = result.range.size - 1
    bad = _judge(ev, result, last, "bad", "endpoint", "[bad]", items, runs)
    if bad.decision != rule.BAD:
        raise HarnessError(f"--bad {result.options.bad} ({bad.commit.short}) is not bad: "
                           f"{_why(bad, items)}", "pass a --bad commit where an item fails "
                           "in most runs", exit_code=2)


def _why(rec: StepRecord, items: Sequence[str]) -> str:
    if not rec.build.ok:
        return f"it does not build ({rec.build.detail})"
    parts = []
    for item in items:
        st = rec.statuses(item)
        bits = f"{item}: {' '.join(s.upper() for s in st)}"
        reason = rec.reason(item, "fail") or rec.reason(item, "error")
        parts.append(bits + (f" ({reason[:200]})" if reason else ""))
    return "; ".join(parts)


def _search(ev: Evaluator, result: BisectResult, say: Say) -> None:
    """Binary search between the newest good and the oldest bad commit (rule.Search)."""
    search = rule.Search(result.range.size)
    step = 0
    while (index := search.next_index()) is not None:
        step += 1
        most = step - 1 + search.steps_left()
        t0 = time.monotonic()
        rec = _judge(ev, result, index, str(step), "step", f"[step {step} of at most {most}]",
                     result.items, result.options.runs)
        search.record(index, rec.decision)
        say(f"[step {step}] {rec.commit.short}: {rec.decision.upper()}"
            + (f" ({rec.note})" if rec.note else "") + f" in {time.monotonic() - t0:.0f} s")
    result.first, result.last = search.answer()
