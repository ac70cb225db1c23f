"""One gate run of the chosen items against one built binary: the gate's own pytest suite,
in the real lab, with its verdicts read back from the gate JSON.

Why the gate's pytest and not a re-implementation: an item must mean in a bisect exactly
what it means in the gate (same checks, same reference, same lab rules, same "could not
check"). The run is `pytest TESTS_HW -m BACKEND --lab=real --llorch-bin-dir=DIR` with the
chosen items selected (select.py) in the bisect's pool root, joined option values only (a
value after a space can move pytest's rootdir). The device lease the bisect holds reaches
the run through the lease run token in its environment, so the run's workers use the
device the bisect holds, for the whole bisect.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llorch_harness import redaction
from llorch_harness.bisect.child import run_child
from llorch_harness.bisect.select import ITEMS_ENV
from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import loads_json_strict, read_regular_text

STEP_TIMEOUT_S = 3600.0
SELECT_PLUGIN = "llorch_harness.bisect.select"


def gate_suite(explicit: str | None = None) -> Path:
    """The gate's tests: --gate-suite, else `tests_hw` beside the installed package (the
    harness checkout the README installs)."""
    import llorch_harness

    path = Path(explicit) if explicit else Path(llorch_harness.__file__).parents[1] / "tests_hw"
    if not (path / "conftest.py").is_file():
        raise HarnessError(f"no gate suite at {path}",
                           "run from a llorch-harness checkout, or pass --gate-suite DIR "
                           "(its tests_hw)", exit_code=2)
    return path.resolve()


@dataclass(frozen=True)
class GateConfig:
    """What every gate run of one bisect shares."""

    suite: Path
    backend: str
    pool_root: Path
    gate_model: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = STEP_TIMEOUT_S


@dataclass
class ItemRun:
    """One item in one gate run: pass | fail | error (could not check) | skip | not run."""

    status: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason}


@dataclass
class GateRun:
    """One pytest run: each chosen item's status, where its files are."""

    items: dict[str, ItemRun]
    exitstatus: int | None
    gate_json: Path
    log: Path
    seconds: float
    performance: list[dict[str, Any]] = field(default_factory=list)


def pytest_argv(cfg: GateConfig, bin_dir: Path, out: Path,
                results_db: Path | None) -> list[str]:
    argv = [sys.executable, "-m", "pytest", str(cfg.suite), "-p", "no:cacheprovider",
            "-p", SELECT_PLUGIN, "-m", cfg.backend, "--lab=real", "--color=no", "-q", "-rfE",
            f"--llorch-bin-dir={bin_dir}", f"--pool-root={cfg.pool_root}",
            f"--gate-json={out / 'gate.json'}", f"--basetemp={out / 'basetemp'}"]
    if cfg.gate_model:
        argv.append(f"--gate-model={cfg.gate_model}")
    if results_db is not None:
        argv.append(f"--results-db={results_db}")
    return argv


def run_gate(cfg: GateConfig, bin_dir: Path, items: Sequence[str] | None, out: Path,
             results_db: Path | None = None) -> GateRun:
    """pytest once; `items` None runs the whole gate of the backend (finding the items)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in cfg.env.items() if not k.startswith("PYTEST_")}
    env.pop(ITEMS_ENV, None)
    if items is not None:
        env[ITEMS_ENV] = json.dumps(list(items))
    log = out / "pytest.log"
    argv = pytest_argv(cfg, bin_dir, out, results_db)
    log.write_text(redaction.redact(f"$ {' '.join(argv)}\n"))
    try:
        res = run_child(argv, cwd=cfg.suite.parent, env=env, log=log, timeout=cfg.timeout)
    finally:
        stop_leftover_workers(cfg.pool_root)
    doc = _read_json(out / "gate.json")
    why = (f"the gate ran past {cfg.timeout:g} s" if res.timed_out else
           f"pytest exited {res.returncode} and wrote no gate JSON (see {log})")
    statuses = _statuses(doc, items, why)
    _add_details(statuses, doc, log)
    perf = doc.get("performance") if isinstance(doc, dict) else None
    return GateRun(statuses, None if res.timed_out else res.returncode, out / "gate.json",
                   log, res.seconds, perf if isinstance(perf, list) else [])


def stop_leftover_workers(pool_root: Path) -> int:
    """Workers of this pool whose gate session has ended (a pytest stopped mid-teardown),
    proven as the gate's own start-up sweep proves them: the bisect's runs leave nothing
    alive, and a worker of a live session (a person's, another gate run's) is left alone."""
    from llorch_harness.plugin.sweep import sweep_dead_sessions

    return len(sweep_dead_sessions([str(pool_root)], grace=10.0))


def _add_details(statuses: dict[str, ItemRun], doc: dict[str, Any] | None, log: Path) -> None:
    """A failed item's reason is the first line of its message; the gate's messages say
    what came on the next lines (`got: ...`), which is what a developer reads first: it is
    taken from the failure section of the test in pytest's output."""
    if doc is None:
        return
    try:
        text = redaction.redact(log.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return
    for row in doc.get("items") or []:
        if not isinstance(row, dict) or row.get("status") != "fail":
            continue
        run = statuses.get(str(row.get("item")))
        name = str(row.get("nodeid") or "").rsplit("::", 1)[-1]
        got = failure_got(text, name) if run is not None and name else ""
        if run is not None and got and got not in run.reason:
            run.reason = f"{run.reason} | {got}"[:2000]


def failure_got(text: str, test_name: str) -> str:
    """The `got:` line of a test's failure section (`____ name ____`), with the line after
    it when the message goes on; '' when there is none."""
    lines = text.splitlines()
    head = re.compile(r"^_{3,} " + re.escape(test_name) + r" _{3,}$")
    for i, line in enumerate(lines):
        if not head.match(line):
            continue
        for j in range(i + 1, min(i + 40, len(lines))):
            if re.match(r"^[_=-]{3,}", lines[j]):
                break
            if lines[j].startswith("got: "):
                more = lines[j + 1] if j + 1 < len(lines) and not lines[j + 1].startswith(
                    ("look at: ", "---", "===", "___")) else ""
                return " ".join(p.strip() for p in (lines[j], more) if p.strip())[:1500]
    return ""


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = loads_json_strict(read_regular_text(path, "gate JSON"))
    except (OSError, ValueError, HarnessError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("checklist"), list) else None


def _statuses(doc: dict[str, Any] | None, items: Sequence[str] | None,
              missing: str) -> dict[str, ItemRun]:
    """Each item's status from the checklist; no gate JSON makes every item 'error'."""
    if doc is None:
        return {i: ItemRun("error", f"could not check: {missing}") for i in items or ()}
    rows = {str(r.get("item")): r for r in doc["checklist"] if isinstance(r, dict)}
    names = list(items) if items is not None else list(rows)
    out: dict[str, ItemRun] = {}
    for name in names:
        row = rows.get(name)
        if row is None:
            out[name] = ItemRun("error", "could not check: not in the gate's checklist")
            continue
        reasons = [str(x) for x in row.get("reasons") or []]
        out[name] = ItemRun(str(row.get("status")), "; ".join(reasons)[:1000])
    return out
