"""Run the fault-injection suite at the issue's full counts and write tests/faults/RESULTS.md.

Usage (from the repository root):  .venv/bin/python tests/faults/run_full.py [pytest args]

CI runs `pytest tests/faults` with reduced counts; this script sets
LLORCH_FAULT_SCALE=full, collects the figures every test records (one JSON line each,
via LLORCH_FAULT_FIGURES), and writes them with the machine, the date and the exact
command into RESULTS.md. The exit status is pytest's.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = HERE / "RESULTS.md"
TIMEOUT_S = 3 * 3600


def machine() -> str:
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        mem = "RAM unknown"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.node()}: {platform.system()} {platform.release()}, {cpu}, "
            f"{os.cpu_count()} CPUs, {mem}, Python {platform.python_version()}")


def junit_summary(path: Path) -> tuple[dict[str, int], list[tuple[str, str, str]]]:
    """Counts per outcome and (test, outcome, message) for everything not plainly passed."""
    counts: dict[str, int] = defaultdict(int)
    notes: list[tuple[str, str, str]] = []
    if not path.exists():
        return counts, notes
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        outcome = "passed"
        msg = ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, msg = child.tag, child.get("message", "")
            elif child.tag == "skipped":
                kind = child.get("type", "")
                outcome = "xfailed" if "xfail" in kind else "skipped"
                msg = child.get("message", "")
        counts[outcome] += 1
        if outcome != "passed":
            notes.append((name, outcome, msg.splitlines()[0][:200] if msg else ""))
    return counts, notes


def by_test(figures: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in figures:
        out[f["test"]].append({k: v for k, v in f.items() if k not in ("test", "time")})
    return out


def fmt(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(no figures recorded: the test did not get that far)", ""]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            text = json.dumps(v) if isinstance(v, list | dict) else str(v)
            cells.append(text.replace("|", "\\|")[:160])
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


SECTIONS = [
    ("1. No orphans", ["orphans"],
     "Cycles per ending (failing test, SIGINT, SIGKILL, killed xdist worker); marked worker "
     "processes and held ports counted afterwards. SIGKILL cycles also spawn a worker without "
     "the parent-death signal, which must survive the kill and be reaped by the next "
     "session's start-up sweep."),
    ("2. Process identity", ["stale_records"],
     "Stale records pointing at live unrelated processes (signal-trapping canaries); "
     "`worker list`, `worker stop ID`, `worker stop --all`, `worker reap`."),
    ("3. Catalog", ["catalog_concurrent", "catalog_sigkill"],
     "Concurrent writer processes; a lock-free reader process parsing the file throughout; "
     "SIGKILL of a writer (half aimed inside the atomic write, half at random)."),
    ("4. Downloads", ["download_drops", "download_corruption", "download_sigkill",
                      "download_full_disk"],
     "Real huggingface_hub client, local hub with injected faults, real tmpfs for the full "
     "disk."),
    ("5. Hostile input corpus", ["corpus_case", "corpus_sse"],
     "Every case in tests/faults/corpus/ through the real CLIs (sandboxed tree snapshot, "
     "fake ssh that would execute accepted commands, canary file) and SSE cases through "
     "workerclient.execute against a raw-socket server."),
    ("6. Secrets", ["secrets"],
     "The CP3 gate (tests_hw -m cpu, embedded lab) with a canary HF_TOKEN; every output "
     "scanned for the canary and its base64 forms."),
    ("7. Hangs", ["hang", "hang_reference_worker"],
     "Each hostile scenario's first request must fail at its deadline; the next request on "
     "the same server must succeed."),
]


FINDINGS = [
    ("fixed in bc74087", "a worker record with neither `create_time` nor a parseable "
     "`started_at` counted as alive: `worker stop` sent SIGINT, SIGTERM, SIGKILL to whatever "
     "process owned the pid (test_process_identity)"),
    ("fixed in bc74087", "`{\"pid\": true}` passed the pid check (a bool is an int): the "
     "record named pid 1 (test_record_with_boolean_pid_is_refused)"),
    ("fixed in bc74087", "`worker stop` on a dead record without `worker_id`: KeyError "
     "traceback (corpus worker_records/dead-no-worker-id)"),
    ("fixed in bc74087", "a deeply nested catalog or worker record: RecursionError traceback "
     "instead of one error line (corpus */deep-nesting)"),
    ("fixed in bc74087", "ENOSPC while writing the catalog: OSError traceback instead of one "
     "error line (test_full_disk_while_writing_catalog_gives_one_line)"),
    ("fixed in bc74087", "a writer SIGKILLed inside the atomic write left a full-size "
     "`.catalog.json.*.tmp` forever (test_stale_temp_file_from_killed_writer_is_cleaned)"),
    ("fixed in 03b5bee", "workerclient: a deeply nested `data:` JSON escapes "
     "`_Collector.add` as RecursionError, is reported as a `request`/client error and ends "
     "the read (test_deep_json_event_is_the_workers_fault)"),
]


def corpus_totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{
        "cases_with_cli_runs": sum(1 for r in rows if r.get("runs")),
        "cli_runs": sum(int(r.get("runs", 0)) for r in rows),
        "tracebacks": sum(int(r.get("tracebacks", 0)) for r in rows),
        "files_written_outside_pool_root": sum(int(r.get("outside_writes", 0)) for r in rows),
        "commands_injected": sum(int(r.get("injected", 0)) for r in rows),
    }]


def write_results(cmd: list[str], started: datetime, seconds: float, rc: int,
                  figures: list[dict[str, Any]], counts: dict[str, int],
                  notes: list[tuple[str, str, str]]) -> None:
    figs = by_test(figures)
    corpus_files = sorted((HERE / "corpus").glob("*.json"))
    n_cases = sum(len(json.loads(p.read_text())) for p in corpus_files)
    lines = [
        "# Fault-injection suite: full-count results",
        "",
        "Written by `tests/faults/run_full.py`; do not edit by hand.",
        "",
        f"- Date: {started.isoformat(timespec='seconds').replace('+00:00', 'Z')}",
        f"- Machine: {machine()}",
        f"- Command: `{shlex.join(cmd)}` (from `{REPO}`, LLORCH_FAULT_SCALE=full)",
        f"- Duration: {seconds:.0f} s; pytest exit status {rc}",
        "- Outcomes: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
        f"- Corpus: {n_cases} cases in {len(corpus_files)} files "
        f"({', '.join(p.name for p in corpus_files)})",
        "",
    ]
    for title, keys, what in SECTIONS:
        lines += [f"## {title}", "", what, ""]
        for key in keys:
            rows = figs.get(key, [])
            lines.append(f"**{key}**")
            lines.append("")
            if key == "corpus_case":
                lines += fmt(corpus_totals(rows))
            else:
                lines += fmt(rows)
    lines += ["## Bugs this suite found", ""]
    lines += [f"- {state}: {text}" for state, text in FINDINGS] + [""]
    lines += ["## Not passed (known bugs are strict xfails until the lead fixes them)", ""]
    if notes:
        lines += ["| test | outcome | message |", "|---|---|---|"]
        lines += [f"| {n} | {o} | {m.replace('|', '/')} |" for n, o, m in notes]
    else:
        lines.append("Everything passed.")
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="llorch-faults-") as tmp:
        figures_path = Path(tmp) / "figures.jsonl"
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "tests/faults", "-p", "no:cacheprovider",
               "-q", "-rxXfE", f"--junitxml={junit}", *argv]
        env = dict(os.environ, LLORCH_FAULT_SCALE="full",
                   LLORCH_FAULT_FIGURES=str(figures_path))
        started = datetime.now(UTC)
        t0 = time.monotonic()
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=env, timeout=TIMEOUT_S, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = 124
        seconds = time.monotonic() - t0
        figures = []
        if figures_path.exists():
            figures = [json.loads(ln) for ln in figures_path.read_text().splitlines() if ln]
        counts, notes = junit_summary(junit)
        shown = [".venv/bin/python", "tests/faults/run_full.py", *argv]
        write_results(shown, started, seconds, rc, figures, counts, notes)
    print(f"wrote {RESULTS} (pytest exit status {rc})")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
