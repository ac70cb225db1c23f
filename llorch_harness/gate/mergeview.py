"""The merged verdict as a person reads it first: one word per item (the same in the table
and in "Why not a pass"), counts of those words, and each problem once with its pools.

Why apart from the merge: `MergedGate.problems` stays one string per pool and item (the
JSON's shape, which tools read); a page listing a skip once per pool (24 bullets for 12
items on two pools) and calling it NOT VERIFIED where its table said FAIL is what issue 28
item 2 found. Grouping here reads only the merged rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the merge imports render, render imports this: the types only
    from llorch_harness.gate.merge import MergedGate, Row

WORDS = ("PASS", "FAIL", "COULD NOT CHECK", "NOT VERIFIED")
WORD_COLOR = {"PASS": "#1a7f37", "FAIL": "#cf222e", "COULD NOT CHECK": "#bc4c00",
              "NOT VERIFIED": "#9a6700"}
_STATUS_WORDS = {"fail": "failed", "skip": "skipped", "error": "could not check",
                 "xfail": "xfailed"}
_ROW_PREFIXES = ("FAILED ", "NOT VERIFIED ", "SKIP ", "ERROR ", "XFAIL ", "NOT RUN ", "N/A ")


def item_word(row: Row) -> str:
    """PASS; FAIL when a pool failed it; COULD NOT CHECK when only the lab kept a required
    pool from checking it; else NOT VERIFIED (required somewhere and not passed there, or
    no pool of the backend it concerns)."""
    if row.ok:
        return "PASS"
    cells = row.cells.values()
    if any(c.status == "fail" for c in cells):
        return "FAIL"
    if all(c.lab_cause for c in cells if c.required and c.status != "pass") and \
            any(c.lab_cause for c in cells):
        return "COULD NOT CHECK"
    return "NOT VERIFIED"


def word_counts(m: MergedGate) -> dict[str, int]:
    counts = dict.fromkeys(WORDS, 0)
    for r in m.rows:
        counts[item_word(r)] += 1
    return counts


def counts_text(m: MergedGate) -> str:
    """`20 pass · 1 fail · 0 could not check · 5 not verified`."""
    return " · ".join(f"{n} {w.lower()}" for w, n in word_counts(m).items())


def needs_pool(m: MergedGate) -> list[str]:
    """Items no merged pool could check (`X (no cuda pool)`), in checklist order."""
    return [f"{r.item} ({r.note})" for r in m.rows if r.note and r.note.startswith("no ")]


def grouped_problems(m: MergedGate) -> list[str]:
    """Pool-level problems as the merge wrote them, then each item's problem once: its
    word, the item, and per distinct reason the pools that gave it."""
    labels = {f"{r.section} / {r.item}" for r in m.rows}
    out = [p for p in m.problems
           if not (p.startswith(_ROW_PREFIXES) and any(lbl in p for lbl in labels))]
    for r in m.rows:
        word = item_word(r)
        if word in ("PASS", "COULD NOT CHECK"):  # the lab's own list says those
            continue
        out.append(f"{word} {r.item} ({r.section}): {_why(r)}")
    return out


def _why(row: Row) -> str:
    """`skip on pools mac, workstation (required there): REASON; fail on pool mac: ...`."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name, c in row.cells.items():
        bad = c.status == "fail" or (c.required and c.status != "pass" and not c.lab_cause)
        if bad:
            key = (c.status, c.reason or "no reason given")
            groups.setdefault(key, []).append(name)
    parts = []
    for (status, reason), pools in groups.items():
        status = _STATUS_WORDS.get(status, status)
        where = f"pool{'s' if len(pools) > 1 else ''} {', '.join(pools)}"
        required = "" if status == "failed" else " (required there)"
        parts.append(f"{status} on {where}{required}: {reason}")
    if row.note:
        parts.append(f"{row.note} among the results")
    return "; ".join(parts) or "not passed"
