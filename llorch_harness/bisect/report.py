"""The bisect's answer as people and tools read it: the answer, the step table on the
terminal, and the JSON document (`--json`), all from one `BisectResult`.

Why the answer carries the parent's statuses: "commit X broke it" is believed when the
failing reason at X stands next to the same item passing at X's parent, both measured in
this bisect by the same rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llorch_harness import __version__
from llorch_harness.bisect import rule
from llorch_harness.bisect.driver import BisectResult
from llorch_harness.bisect.history import commit_info
from llorch_harness.bisect.steps import StepRecord
from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import atomic_write_text, refuse_non_regular_target
from llorch_harness.redaction import redact

SCHEMA = 1
RULE_TEXT = ("an item is bad at a commit when it fails in more than half of the K runs, good "
             "when it passes in more than half, undecided otherwise; a commit is bad when any "
             "chosen item is bad, good when every one is good, and skipped (like git bisect "
             "skip) when it does not build or an item is undecided")
PATH_TEXT = ("the first-parent path of --bad back to --good (a merge that brought the fault "
             "in is named as the merge)")


def tested(result: BisectResult, index: int) -> StepRecord | None:
    """The record that judged the commit at `index` (-1: the good commit)."""
    return next((s for s in result.steps if s.index == index and s.phase != "discover"
                 and (s.runs or not s.build.ok)), None)


def answer(result: BisectResult) -> dict[str, Any]:
    """Exact (first bad commit with its reason next to the parent's pass), or the range."""
    rng = result.range
    if result.first == result.last:
        bad = tested(result, result.last)
        parent = tested(result, result.last - 1)
        info = commit_info(rng.root, rng.commits[result.last])
        items = {}
        for item in result.items:
            if bad is None or bad.item_decisions.get(item) != rule.BAD:
                continue
            items[item] = {
                "at_first_bad": bad.statuses(item), "reason": bad.reason(item, "fail"),
                "at_parent": parent.statuses(item) if parent else [],
                "parent_decision": parent.item_decisions.get(item) if parent else None}
        return {"exact": True, "first_bad": info.to_json(),
                "parent": (parent.commit.to_json() if parent else None), "items": items,
                "text": f"first bad commit: {info.sha} {info.subject}"}
    commits = []
    for i in range(result.first, result.last + 1):
        rec = tested(result, i)
        commits.append({**commit_info(rng.root, rng.commits[i]).to_json(),
                        "decision": rec.decision if rec else "untested",
                        "note": rec.note if rec else ""})
    n = len(commits)
    return {"exact": False, "range": commits,
            "text": f"the first bad commit is one of {n} commits "
                    f"{rng.commits[result.first][:12]}..{rng.commits[result.last][:12]}: the "
                    f"commits before the last of them were skipped, so the search cannot "
                    f"tell which"}


def to_json(result: BisectResult) -> dict[str, Any]:
    opts = result.options
    return {
        "schema": SCHEMA, "kind": "llorch-harness bisect", "harness_version": __version__,
        "repo": str(result.range.root), "backend": opts.backend,
        "good": {"ref": opts.good, "sha": result.range.good},
        "bad": {"ref": opts.bad, "sha": result.range.bad},
        "path": "first-parent", "path_text": PATH_TEXT, "range_size": result.range.size,
        "items": result.items,
        "items_from": "found: failing at --bad, passing at --good" if result.found_items
        else "--item", "runs": opts.runs, "rule": RULE_TEXT,
        "build_command": result.build_command, "gate_model": opts.gate_model,
        "pool_root": str(opts.pool_root), "run_dir": str(result.run_dir),
        "started_at": result.started_at, "finished_at": result.finished_at,
        "test_steps": result.test_steps, "answer": answer(result),
        "steps": [s.to_json() for s in result.steps],
    }


def build_cell(rec: StepRecord) -> str:
    if rec.build.cached:
        return "cached"
    if rec.build.ok:
        return f"{rec.build.seconds:.1f} s"
    return "FAILED"


def runs_cell(rec: StepRecord, items: list[str]) -> str:
    """Per item, one letter per run: P pass, F fail, E could not check, S skip, - not run."""
    letters = {"pass": "P", "fail": "F", "error": "E", "skip": "S", "xfail": "S"}
    if rec.phase == "discover":
        failing = sorted(i for r in rec.runs for i, v in r.items() if v.status == "fail")
        return "whole gate: " + (f"{len(failing)} failing" if failing else "no failure")
    parts = []
    for item in items:
        st = rec.statuses(item)
        parts.append("".join(letters.get(s, "-") for s in st) or "-")
    return " ".join(parts)


def terminal_lines(result: BisectResult) -> list[str]:
    rows = [("STEP", "COMMIT", "SUBJECT", "BUILD", "RUNS", "DECISION")]
    for s in result.steps:
        decision = "-" if s.phase == "discover" else s.decision.upper()
        rows.append((s.label, s.commit.short, s.commit.subject[:40], build_cell(s),
                     runs_cell(s, result.items), decision))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.append(f"items: {'; '.join(f'{n}. {i}' for n, i in enumerate(result.items, 1))} "
                 f"(RUNS: one letter per run, P pass, F fail, E could not check, S skip)")
    lines.append(f"rule: {RULE_TEXT}")
    lines.append(f"path: {PATH_TEXT}; {result.test_steps} test step(s) for "
                 f"{result.range.size} commit(s)")
    lines += answer_lines(answer(result))
    return [redact(ln) for ln in lines]


def answer_lines(ans: dict[str, Any]) -> list[str]:
    if not ans["exact"]:
        out = [ans["text"] + ":"]
        for c in ans["range"]:
            out.append(f"  {c['sha'][:12]} {c['subject']} ({c['decision']}"
                       + (f": {c['note']}" if c["note"] else "") + ")")
        return out
    fb = ans["first_bad"]
    out = [f"first bad commit: {fb['sha']}", f"  subject: {fb['subject']}",
           f"  author:  {fb['author']}", f"  date:    {fb['date']}",
           f"  files:   {', '.join(fb['files']) or '(none)'}"]
    parent = ans.get("parent") or {}
    for item, v in ans["items"].items():
        out.append(f"  {item}: {' '.join(s.upper() for s in v['at_first_bad'])} here: "
                   f"{v['reason'] or 'failed'}")
        out.append(f"    at the parent {str(parent.get('sha', ''))[:12]}: "
                   f"{' '.join(s.upper() for s in v['at_parent']) or 'good (--good)'}")
    return out


def check_target(path: Path, flag: str) -> Path:
    refuse_non_regular_target(path, f"{flag} target", f"{flag} must name a file to write")
    if not path.parent.is_dir():
        raise HarnessError(f"{flag} {path}: directory {path.parent} does not exist",
                           "create it or name another file", exit_code=2)
    return path


def write_json(result: BisectResult, path: Path) -> None:
    atomic_write_text(path, redact(json.dumps(to_json(result), indent=2)) + "\n")
