"""Which failures are the lab's, not the worker's: an exception or a lost test process
mapped to a lab cause, carried on the test's report, and the verdict line that names the
class (`FAIL (worker: 2 items)` vs `INCOMPLETE (lab: hub unreachable)`).

Why apart: a verdict blames the worker only on evidence. The places that meet the lab
(hub, disk, ssh, leases, device tools) raise `errors.LabFailure` with a cause; this module
is the one reading of those failures that the plugin, the gate JSON and the merge share.
Only such deliberate causes, a full disk and a lost xdist worker count: any other failure
stays a FAIL, so nothing here can turn a broken worker into a pass.
"""

from __future__ import annotations

import errno
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from llorch_harness.errors import LabFailure

LAB_CAUSE = "gate_lab_cause"  # user property: JSON {cause, detail, retried}
LAB_RETRIES = "gate_lab_retries"  # user property: JSON list of the retries a test made
DISK_FULL = "disk full"
WORKER_LOST = "xdist worker lost"
_CRASH_RE = re.compile(r"worker '([^']+)' crashed while running")


def classify(exc: BaseException | None) -> LabFailure | None:
    """The lab failure an exception is or was caused by (its chain walked), else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, LabFailure):
            return exc
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return LabFailure(DISK_FULL, f"{exc.strerror or exc}: {exc.filename or ''}".strip())
        exc = exc.__cause__ or exc.__context__
    return None


def crashed_worker(longrepr: Any) -> str | None:
    """xdist's own report for a test whose process died: `worker 'gw0' crashed while
    running 'NODEID'` (the pytest process, not the worker under test)."""
    text = longrepr if isinstance(longrepr, str) else str(longrepr or "")
    m = _CRASH_RE.search(text[:2000])
    return m.group(1) if m else None


def remember_item(memory: dict[str, dict[str, Any]], nodeid: str, props: Mapping[str, Any],
                  longrepr: Any) -> Mapping[str, Any]:
    """A test's gate properties kept from its earlier reports, and given back to xdist's
    lost-worker report (which carries none), so the lost test's item is known."""
    if props.get("gate_section"):
        memory[nodeid] = {k: v for k, v in props.items() if str(k).startswith("gate_")
                          and k not in (LAB_CAUSE, LAB_RETRIES)}
    elif crashed_worker(longrepr) and nodeid in memory:
        return {**memory[nodeid], **props}
    return props


def report_properties(exc: BaseException | None, retries: list[dict[str, Any]]
                      ) -> list[tuple[str, str]]:
    """User properties for a test report: its lab cause (when its failure is the lab's) and
    the retries made while it ran."""
    props = []
    lab = classify(exc)
    if lab is not None:
        props.append((LAB_CAUSE, json.dumps({"cause": lab.cause, "detail": lab.detail[:500],
                                             "retried": lab.retried})))
    if retries:
        props.append((LAB_RETRIES, json.dumps(retries)))
    return props


def read_cause(props: Mapping[str, Any], longrepr: Any) -> dict[str, Any] | None:
    """A report's lab cause: its property, else xdist's lost-worker report."""
    raw = props.get(LAB_CAUSE)
    if isinstance(raw, str):
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("cause"), str):
            return data
    gw = crashed_worker(longrepr)
    if gw is not None:
        return {"cause": WORKER_LOST, "retried": False,
                "detail": f"pytest worker {gw} died while running the test (the test "
                          "process, not the worker under test)"}
    return None


def read_retries(props: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = props.get(LAB_RETRIES)
    try:
        data = json.loads(raw) if isinstance(raw, str) else []
    except ValueError:
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def could_not_check(cause: Mapping[str, Any]) -> str:
    """The reason text of a lab-caused item."""
    retried = " (retried once)" if cause.get("retried") else ""
    return f"could not check (lab: {cause['cause']}){retried}: {cause.get('detail') or ''}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def verdict_line(verdict: str, worker_failures: int, lab_causes: Iterable[str],
                 others: Iterable[str] = ()) -> str:
    """`FAIL (worker: 2 items)`, `INCOMPLETE (lab: hub unreachable)`, or both classes and
    any other reason an item was not checked (`others`, e.g. cargo offline)."""
    parts = [f"worker: {_plural(worker_failures, 'item')}"] if worker_failures else []
    parts += list(others)
    causes = list(dict.fromkeys(lab_causes))
    if causes:
        parts.append(f"lab: {', '.join(causes)}")
    return verdict.upper() + (f" ({'; '.join(parts)})" if parts else "")


def rollup_verdict_line(verdict: str, rollup: list[dict[str, Any]]) -> str:
    """The verdict line of one pool's item roll-up (`checklist.GateCollector`)."""
    others = [f"{r['item']}: {r['reasons'][0] if r['reasons'] else 'could not check'}"
              for r in rollup if r["status"] == "error" and not r.get("lab_causes")]
    return verdict_line(verdict, sum(r["status"] == "fail" for r in rollup),
                        [c for r in rollup if r["status"] == "error"
                         for c in r.get("lab_causes", [])], others)


def lab_failures(results: Iterable[Any]) -> list[dict[str, Any]]:
    """Every test the lab kept from checking its item: cause, detail, where."""
    return [{"cause": r.lab_cause["cause"], "detail": r.lab_cause.get("detail"),
             "retried": bool(r.lab_cause.get("retried")), "section": r.section,
             "item": r.item, "backend": r.backend, "model": r.model, "nodeid": r.nodeid}
            for r in results if r.lab_cause and r.status == "error"]


def retries(results: Iterable[Any]) -> list[dict[str, Any]]:
    """Every retry of a transient lab cause, with the test it happened in."""
    return [{**t, "nodeid": r.nodeid} for r in results for t in r.retries]
