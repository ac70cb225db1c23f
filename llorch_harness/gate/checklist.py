"""The CP3 gate checklist as data, and the roll-up of test results into item verdicts.

Why: the seed's "Checkpoint Gate" is what people sign off; the report and the gate JSON
must show it item by item, in the seed's order, with the seed's words. Tests point at an
item with `@pytest.mark.gate(section, item)`; an unknown pair is a collection error, so a
typo can never make an item silently "not run".
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import atomic_write_text, refuse_non_regular_target
from llorch_harness.gate import labcause
from llorch_harness.gate.modelruns import model_runs
from llorch_harness.pool.backends import BACKEND_NAMES

CHECKPOINT = "CP3"
GATE_JSON_SCHEMA = 1
# A test that could not check its item (cargo offline, no git range) fails its setup with this
# user property holding the reason: the item is an "error", not a failure of the code.
COULD_NOT_CHECK = "gate_could_not_check"
# A test's measurements (a JSON object) that its item in the gate JSON carries as "details"
# (issue 15: memory per worker life, device health).
GATE_DETAILS = "gate_details"


@dataclass(frozen=True)
class GateItem:
    section: str
    item: str
    backends: tuple[str, ...] = BACKEND_NAMES  # which pools it concerns (all)
    seed: bool = True  # False: an extra instance the seed does not list (e.g. the CPU twin)


def _items(section: str, *texts: str | tuple[str, tuple[str, ...]]) -> list[GateItem]:
    out = []
    for t in texts:
        if isinstance(t, tuple):
            out.append(GateItem(section, t[0], t[1]))
        else:
            out.append(GateItem(section, t))
    return out


# The seed's "Checkpoint Gate: CP3 Verification", verbatim and in order.
SEED_CHECKLIST: tuple[GateItem, ...] = (
    *_items(
        "Model Downloads",
        "`llorch-pool models download` works",
        ("Qwen downloaded on mac.home.arpa", ("metal",)),
        ("Qwen downloaded on workstation.home.arpa", ("cuda",)),
        "Catalog updated correctly",
        "File sizes are accurate",
    ),
    *_items(
        "Worker Spawning",
        "`llorch-pool worker spawn` works",
        "Workers spawn as background processes",
        "Logs are written to files",
        "Worker info is saved",
    ),
    *_items(
        "Worker Management",
        "`llorch-pool worker list` shows workers",
        "`llorch-pool worker stop` stops workers",
        "Process status is accurate",
        "Cleanup works correctly",
    ),
    *_items(
        "Qwen Testing",
        ("Qwen works on Metal (mac)", ("metal",)),
        ("Qwen works on CUDA (workstation)", ("cuda",)),
        "No broadcasting errors",
        "Inference completes successfully",
        "Tokens are generated",
    ),
    *_items(
        "Remote Operations",
        "`llorch pool models download --host mac` works",
        "`llorch pool worker spawn --host mac` works",
        "SSH commands execute correctly",
    ),
    *_items(
        "Code Quality",
        "`cargo fmt --all` clean",
        "`cargo clippy --all` clean",
        "Team signatures added",
        "Documentation updated",
    ),
)

# CPU twins of the per-pool items: they let any machine (and CI) exercise the same checks.
EXTRA_ITEMS: tuple[GateItem, ...] = (
    GateItem("Model Downloads", "Qwen downloaded on this pool (cpu)", ("cpu",), seed=False),
    GateItem("Qwen Testing", "Qwen works on CPU (this pool)", ("cpu",), seed=False),
    # A worker that is deterministic but wrong passes every self-comparison: this one holds
    # each greedy token against an independent implementation on the same files.
    GateItem("Qwen Testing", "Output agrees with the reference implementation", seed=False),
    # A build that answers correctly but loads or decodes much slower passes everything else:
    # this one compares each figure with the pool's history (llorch_harness.perf).
    GateItem("Qwen Testing", "No performance regression", seed=False),
    # A bad card must not be blamed on the worker, nor a bad worker on the card (issue 15).
    GateItem("Qwen Testing", "Device healthy", ("cuda", "metal"), seed=False),
    # "No broadcasting errors"' sibling: CP4 asks for no memory leaks.
    GateItem("Qwen Testing", "No memory growth per request", seed=False),
)

# CP4's success criteria (04_CP4_MULTI_MODEL.md, WU4.3), per model of --gate-models and
# backend of this pool: each model passes every inference check, no out-of-memory or
# allocation error, every worker life starts and ends cleanly.
CP4_SECTION = "Multi-Model Testing (CP4)"
CP4_ITEMS: tuple[GateItem, ...] = (
    GateItem(CP4_SECTION, "Every model works on every backend of this pool", seed=False),
    GateItem(CP4_SECTION, "No VRAM errors", seed=False),
    GateItem(CP4_SECTION, "All workers spawn and stop cleanly", seed=False),
)
EXTRA_ITEMS = (*EXTRA_ITEMS, *CP4_ITEMS)

SECTIONS: tuple[str, ...] = (*dict.fromkeys(i.section for i in SEED_CHECKLIST), CP4_SECTION)


def checklist() -> list[GateItem]:
    """Seed items in seed order, each section followed by its extra (non-seed) items."""
    out: list[GateItem] = []
    for section in SECTIONS:
        out += [i for i in SEED_CHECKLIST if i.section == section]
        out += [i for i in EXTRA_ITEMS if i.section == section]
    return out


def find_item(section: str, item: str) -> GateItem | None:
    return next((i for i in checklist() if i.section == section and i.item == item), None)


def gate_marker_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[str, str]:
    """(section, item) from `gate(section, item)` or `gate(section=..., item=...)`."""
    section = kwargs.get("section", args[0] if args else None)
    item = kwargs.get("item", args[1] if len(args) > 1 else None)
    if not isinstance(section, str) or not isinstance(item, str):
        raise ValueError("gate marker needs two strings: gate(section, item)")
    if find_item(section, item) is None:
        raise ValueError(
            f"gate({section!r}, {item!r}) is not a CP3 gate item; "
            "see llorch_harness/gate/checklist.py"
        )
    return section, item


# --------------------------------------------------------------------------- results


@dataclass
class TestResult:
    """One test's outcome over its phases (setup failure and teardown error count as fail,
    except a setup failure that says it could not check: status error)."""

    nodeid: str
    section: str
    item: str
    backend: str | None
    scope: str  # "backend" (per-backend instance) | "pool" (pool-level item)
    status: str = "pass"  # pass | fail | error | skip | xfail
    reason: str | None = None
    duration: float = 0.0
    phases: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # user property "gate_details"
    model: str | None = None  # user property "gate_model": the model a model test ran on
    lab_cause: dict[str, Any] | None = None  # the lab's failure, not the worker's (labcause)
    retries: list[dict[str, Any]] = field(default_factory=list)  # transient causes retried


def _skip_reason(longrepr: Any) -> str | None:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
        return text.removeprefix("Skipped: ")
    return None


def _fail_reason(longrepr: Any) -> str:
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return (_actual_and_expected(str(crash.message))
                or str(crash.message).splitlines()[0])[:500]
    text = str(longrepr) if longrepr is not None else "failed"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "failed")[:500]


def _actual_and_expected(message: str) -> str | None:
    """A gatehelpers.expect failure (`expected: X` / `got: Y` / `look at: Z` lines) as one
    sentence with the actual value beside the expected one, not only the expected half."""
    fields: dict[str, str] = {}
    for line in message.removeprefix("Failed: ").splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in ("expected", "got") and key not in fields:
            fields[key] = value.strip()
    if "expected" not in fields or "got" not in fields:
        return None
    return f"got {fields['got']}; expected {fields['expected']}"


class GateCollector:
    """Rolls pytest reports up into per-test and per-item results (controller side)."""

    def __init__(self) -> None:
        self.results: dict[str, TestResult] = {}
        self._props: dict[str, dict[str, Any]] = {}  # xdist's crash report carries none

    def add_report(
        self, nodeid: str, when: str, outcome: str, props: Mapping[str, Any], longrepr: Any,
        duration: float, wasxfail: bool = False,
    ) -> None:
        props = labcause.remember_item(self._props, nodeid, props, longrepr)
        section, item = props.get("gate_section"), props.get("gate_item")
        if not section or not item:
            return
        res = self.results.get(nodeid)
        if res is None:
            res = TestResult(
                nodeid=nodeid, section=str(section), item=str(item),
                backend=props.get("gate_backend") or None,
                scope=str(props.get("gate_scope", "pool")),
                model=str(props["gate_model"]) if props.get("gate_model") else None,
            )
            self.results[nodeid] = res
        res.duration += float(duration or 0.0)
        res.phases[when] = outcome
        if isinstance(props.get(GATE_DETAILS), str):  # measurements for the gate JSON
            res.details.update(json.loads(props[GATE_DETAILS]))
        res.retries += labcause.read_retries(props)
        lab = labcause.read_cause(props, longrepr) if outcome == "failed" else None
        if lab is not None and res.status != "fail":  # the lab's failure: not the worker's
            res.status, res.lab_cause = "error", lab
            res.reason = labcause.could_not_check(lab)
        elif outcome == "failed" and props.get(COULD_NOT_CHECK) and res.status != "fail":
            res.status = "error"
            res.reason = f"could not check: {props[COULD_NOT_CHECK]}"
        elif outcome == "failed":
            if res.status != "fail":
                res.reason = (f"{when} error: " if when != "call" else "") + _fail_reason(longrepr)
            res.status = "fail"
        elif outcome == "skipped" and res.status != "fail":
            res.status = "xfail" if wasxfail else "skip"
            res.reason = _skip_reason(longrepr) or ("xfail" if wasxfail else "skipped")

    def item_rollup(self) -> list[dict[str, Any]]:
        """Every checklist item with its status: fail > error > pass > skip > not run."""
        out = []
        several = len({r.model for r in self.results.values() if r.model}) > 1
        for gi in checklist():
            tests = [r for r in self.results.values()
                     if r.section == gi.section and r.item == gi.item]
            statuses = {r.status for r in tests}
            if "fail" in statuses:
                status = "fail"
            elif "error" in statuses:  # could not check: not a pass, not a failure of the code
                status = "error"
            elif "pass" in statuses:
                status = "pass"
            elif tests:
                status = "skip"
            else:
                status = "not run"
            reasons = sorted({f"{_where(r, several)}: {r.reason}" for r in tests
                              if r.status in ("fail", "error", "skip", "xfail") and r.reason})
            if not tests:
                reasons = [not_run_reason(gi)]
            per_backend: dict[str, str] = {}
            per_model: dict[str, str] = {}
            for r in tests:
                key = r.backend or "pool"
                per_backend[key] = _worse(per_backend.get(key), r.status)
                if r.model:
                    per_model[r.model] = _worse(per_model.get(r.model), r.status)
            causes = sorted({r.lab_cause["cause"] for r in tests
                             if r.lab_cause and r.status == "error"})
            out.append({
                "section": gi.section, "item": gi.item, "seed": gi.seed,
                "concerns": list(gi.backends), "status": status, "reasons": reasons,
                "backends": per_backend, "tests": len(tests),
                **({"models": per_model} if per_model else {}),
                **({"lab_causes": causes} if causes and status == "error" else {}),
            })
        return out

    def model_runs(self, lab: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One line per (model, backend): `gate.modelruns`."""
        return model_runs(self.results.values(),
                          list(lab.get("gate_models") or [lab.get("gate_model")]),
                          lab.get("backends", {}), [i.item for i in checklist()])

    def verdict(self) -> str:
        """fail if anything failed; pass if every run item passed; else incomplete (an item
        that could not be checked makes the run incomplete, never a pass)."""
        statuses = [r["status"] for r in self.item_rollup()]
        if "fail" in statuses:
            return "fail"
        if statuses and all(s == "pass" for s in statuses):
            return "pass"
        return "incomplete" if {"pass", "error"} & set(statuses) else "not run"

    def verdict_line(self) -> str:
        """`FAIL (worker: 2 items)` / `INCOMPLETE (lab: hub unreachable)` (labcause)."""
        return labcause.rollup_verdict_line(self.verdict(), self.item_rollup())


def _where(r: TestResult, with_model: bool) -> str:
    """Where a reason comes from: the backend, and the model when several ran."""
    where = r.backend or "pool"
    return f"{where} {r.model}" if with_model and r.model else where


def not_run_reason(gi: GateItem) -> str:
    """Say which run covers an item this selection left out, so NOT RUN is never a mystery."""
    if len(gi.backends) == 1:
        return (f"not selected in this run: it concerns the {gi.backends[0]} pool "
                f"(run pytest -m {gi.backends[0]} there)")
    return "not selected in this run (-m/-k deselected every test of this item)"


_RANK = {None: -1, "not run": 0, "skip": 1, "xfail": 1, "pass": 2, "error": 3, "fail": 4}


def _worse(a: str | None, b: str) -> str:
    return b if _RANK.get(b, 0) >= _RANK.get(a, -1) else str(a)


def gate_document(
    collector: GateCollector, lab: Mapping[str, Any], *, started_at: str, finished_at: str,
    exitstatus: int | None,
) -> dict[str, Any]:
    """The `--gate-json` payload that `llorch-harness gate merge` consumes."""
    backends = lab.get("backends", {})
    binaries = {
        name: {"path": st.get("binary"), "sha256": st.get("binary_sha256"),
               "worker": st.get("worker") or None, "engine": st.get("engine") or None}
        for name, st in backends.items() if st.get("binary") or st.get("worker")
    }
    return {
        "schema": GATE_JSON_SCHEMA,
        "checkpoint": CHECKPOINT,
        "harness_version": lab.get("harness_version"),
        "pool": lab.get("hostname"),
        "hostname": lab.get("hostname"),
        "lab": lab.get("lab"),
        "banner": lab.get("banner"),
        "gate_model": lab.get("gate_model"),
        "gate_models": list(lab.get("gate_models") or [lab.get("gate_model")]),
        "backends_available": sorted(n for n, st in backends.items() if st.get("reason") is None),
        "backends_selected": sorted(n for n, st in backends.items() if st.get("selected")),
        "backends_required": sorted(n for n, st in backends.items() if st.get("required")),
        "backend_reasons": {n: st.get("reason") for n, st in backends.items()
                            if st.get("reason")},
        "worker_binaries": binaries,
        "started_at": started_at,
        "finished_at": finished_at,
        "exitstatus": exitstatus,
        "verdict": collector.verdict(),
        "verdict_line": collector.verdict_line(),
        "lab_failures": labcause.lab_failures(collector.results.values()),
        "retries": labcause.retries(collector.results.values()),
        "checklist": collector.item_rollup(),
        "model_runs": collector.model_runs(lab),
        "items": [
            {"section": r.section, "item": r.item, "backend": r.backend, "scope": r.scope,
             "model": r.model, "status": r.status, "reason": r.reason, "nodeid": r.nodeid,
             "duration": round(r.duration, 3), **({"details": r.details} if r.details else {}),
             **({"lab_cause": r.lab_cause["cause"]} if r.lab_cause else {})}
            for r in collector.results.values()
        ],
    }


def check_gate_json_target(path: str | Path) -> Path:
    """Refuse a `--gate-json`/`$LLORCH_GATE_JSON` target before the run, not after it.

    The target must be a regular file or absent, and its directory must take a new file
    (a probe is created and removed there: `/proc/version` is a regular file that cannot
    be replaced). Raises HarnessError (exit 2) naming the path and the fix.
    """
    target = Path(path).expanduser()
    hint = "--gate-json or LLORCH_GATE_JSON must name a file in a writable directory"
    refuse_non_regular_target(target, "gate JSON target", hint)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise HarnessError(f"gate JSON target {target}: cannot create a file in {parent}: "
                           f"{exc.strerror or exc}", hint, 2) from None
    return target


def write_gate_json(path: str | Path, text: str) -> None:
    """Write the results atomically (readers never see half a file); one HarnessError line
    on failure, the previous file left as it was."""
    target = check_gate_json_target(path)
    try:
        atomic_write_text(target, text)
    except OSError as exc:
        raise HarnessError(f"cannot write gate JSON {target}: {exc.strerror or exc}",
                           "free space or fix permissions; the previous file is unchanged") \
            from None


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def checklist_as_dicts(items: Iterable[GateItem] | None = None) -> list[dict[str, Any]]:
    return [asdict(i) for i in (items if items is not None else checklist())]
