"""Run the fault-injection suite at the issue's full counts and write tests/faults/RESULTS.md.

Usage (from the repository root):  .venv/bin/python tests/faults/run_full.py [pytest args]
                                   .venv/bin/python tests/faults/run_full.py --only FILE...

`--only` runs just those test files at full counts and rewrites only the sections whose
figures they record, leaving the rest of RESULTS.md (and its header) as it was, with a
line saying which sections were updated, when and how.

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
    ("Issue 20: one redaction (secrets #1, #2)",
     ["redaction_gate", "redaction_cli", "redaction_corpus", "redaction_fuzz"],
     "redaction_gate: the gate (tests_hw -m cpu, real lab) with a worker that prints "
     "HF_TOKEN, a password in HF_ENDPOINT and an hf_ token under a plain name, then exits 1; "
     "-l -vv -rA, serial and -n 2; terminal, HTML (and its base64), JUnit XML, gate JSON and "
     "every file under the pool root and basetemp except the worker's own logs scanned "
     "(those must hold the canaries). redaction_cli: `llorch pool/pools --dry-run`, `pools "
     "list` and `models download` with credentials in HF_ENDPOINT. redaction_corpus: each "
     "carrier of corpus/secrets.json; redaction_fuzz: random secrets in every escaped form "
     "and as NAME=value, URL userinfo and query parameters."),
    ("Issue 20: only proven-ours processes are signalled (#3, #4, #5)",
     ["forged_markers", "stop_all"],
     "forged_markers: a pytest session's start-up sweep beside forged-marker processes of "
     "every kind (per kind: LLORCH_FAULT_SCALE) and one genuine leftover of a dead session; "
     "records pointing at `env -i`/unrelated-environment processes in every record format "
     "through worker list/stop/stop --all/reap. Signal-trapping canaries count signals. "
     "stop_all: `worker stop --all` with bad records sorted before live workers."),
    ("Issue 20: paths and trusted input (#6, #7, #8, #9)",
     ["path_escapes", "untrusted_config", "remote_argv"],
     "path_escapes: forged marker ids and pool roots beside every command that reads "
     "markers, and a symbolic link at each place under the pool root a command writes; "
     "the tree outside the pool root (or behind the link) is snapshotted, 0 changes allowed. "
     "untrusted_config: planted pools files (cwd, relative XDG_CONFIG_HOME) and pools/ssh "
     "config files writable by others or owned by another user, with a fake ssh and a "
     "canary. remote_argv: every option prefix of every parser of the three CLIs, unknown "
     "arguments to `llorch pool`/`pools` (ssh never started) and to `llorch-pool`."),
    ("Issue 20: one deadline rule for everything read from outside (#10, #11)",
     ["deadline_health", "deadline_spawn", "deadline_list", "deadline_hub"],
     "deadline_health: `readiness.ask_health` (1 s whole-call deadline) against a raw socket "
     "that trickles the body, trickles the headers, never answers, never reads, sends "
     "chunks forever, answers 500 or garbage; elapsed per round, then a healthy answer on "
     "the same server. deadline_spawn: `worker spawn --ready-timeout 3` (library and CLI) "
     "on a worker whose /health trickles, trickles its headers or stays silent. "
     "deadline_list: `worker list`, `--json`, `status`, `status --json` and list_workers() "
     "on a live worker whose /health stops answering (the real worker while it generates): "
     "seconds per command, health `no answer`. deadline_hub: `models download "
     "--stall-timeout 2` against a hub that trickles a file, the weights, the revision or "
     "the tree answer, withholds a file or its body, or links its tree listing to itself, "
     "in a two-page cycle, or endlessly (page bound 30 in that test); the model lock must be "
     "free, nothing recorded, and the next download must succeed."),
    ("Issue 20: only regular files are read (#12)", ["special_files"],
     "A FIFO, a symlink to a FIFO, a socket, a directory and a symlink to /dev/zero as the "
     "catalog, a worker record, a worker log, a gate result and the gate JSON target, "
     "through every command that reads that place (CI: three kinds; full: all five); "
     "the slowest command per row (each must end with one line, or an `invalid` row)."),
    ("Issue 20: linear log tail (#13)", ["log_tail", "log_tail_cli"],
     "workers.tail_lines on a 1 MB and a 20 MB log of the same shape (no line break at all, "
     "`\\r`-redrawn progress, a 20 MB last line, CRLF lines), best of 7 (full: 15) runs "
     "each; the ratio must stay below 5 (the old tail: 1 MB 0.17 s, 5 MB 3.2 s). "
     "log_tail_cli: `worker logs -n 3` on the 20 MB progress log, whole command."),
    ("Issue 20: no tracebacks, one usage error (#14, #15, #16)",
     ["corpus_plugin_option", "corpus_plugin_rootdir"],
     "The hostile corpus (section 5) also feeds corpus/cli_values.json to every option of "
     "every llorch-pool and llorch-harness command (found by walking the parsers), "
     "hub_endpoints.json to `models download`, gate_times.json to `gate merge`, and null or "
     "lone-surrogate catalogs and odd ports/uris in records to their commands; those runs "
     "count in corpus_case. corpus_plugin_option: each case of plugin_options.json through "
     "`pytest tests_hw -m cpu` (exit 4, one ERROR line, no setup errors). "
     "corpus_plugin_rootdir: every value-taking gate option and pytest-html's --html, "
     "spelled `--opt VALUE` with an existing VALUE, run from the checkout: runs whose "
     "rootdir moved (collected outside tests_hw/ or failed)."),
    ("Issue 27: outputs escape by construction, shared files read within bounds",
     ["output_payloads", "output_types", "output_bounds", "output_terminal"],
     "test_output_payloads.py. output_payloads: HTML/SVG script, attribute breakouts, "
     "`javascript:` URLs (tests/browser.py) in every outside value of each page, each page "
     "opened in headless Chromium (Debian's chromium): payloads executed and live elements "
     "made from a value counted; Markdown links, images, autolinks, backticks, entities and "
     "cell splits in MODEL_SUPPORT.md parsed by markdown-it-py (GFM-like, linkify). "
     "output_types: wrong types in a gate JSON's `performance` and in a tampered store, "
     "each one line naming the file and the field (exit 2). output_bounds: a 200 MB holder "
     "record (peak RSS of `llorch-pool leases`) and one nested 100000 deep. "
     "output_terminal: terminal escapes in six fields of a holder record."),
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
    ("fixed in f4ff433", "issue 27 #1: a worker binary's path ran script in the per-pool "
     "report (pytest-html fills the environment table with innerHTML; "
     "test_pool_report_binary_path)"),
    ("fixed in f4ff433", "issue 27 #2, #4: a figure's `n` from a store ran script in "
     "`history --html` and `gate merge --perf --html`; wrong types in a gate JSON's "
     "`performance` or a store and an extra `runs` column ended with exit 70 "
     "(test_history_page_from_a_store, TestWrongTypesAreOneLine)"),
    ("fixed in 94ed20b", "issue 27 #3, #5: a 200 MB holder record was read whole (421 MiB "
     "peak RSS), a deeply nested one was a RecursionError, terminal escapes in one were "
     "printed raw, `acquired_at: 9e99` and records owned by another user won "
     "(TestHolderRecords)"),
    ("fixed in 96d8b52", "issue 27 #6: a model name `[click](javascript:...)` was a live link "
     "in MODEL_SUPPORT.md, backticks broke code spans (test_markdown_values_stay_text)"),
    ("fixed in d48a9c1", "issue 27 #7: a lease directory others may write without the sticky "
     "bit, or owned by another user, was trusted (test_a_lease_dir_*_is_refused)"),
]


def corpus_totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{
        "cases_with_cli_runs": sum(1 for r in rows if r.get("runs")),
        "cli_runs": sum(int(r.get("runs", 0)) for r in rows),
        "tracebacks": sum(int(r.get("tracebacks", 0)) for r in rows),
        "files_written_outside_pool_root": sum(int(r.get("outside_writes", 0)) for r in rows),
        "commands_injected": sum(int(r.get("injected", 0)) for r in rows),
    }]


def output_totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 27's summary: payloads x inputs x outputs tried, executed, crashed."""
    return [{
        "outputs": len({r.get("output") for r in rows}),
        "inputs": len({r.get("input") for r in rows}),
        "payloads_tried": sum(int(r.get("payloads", 0)) for r in rows),
        "executed": sum(int(r.get("executed", 0)) for r in rows),
        "crashed": sum(int(r.get("crashed", 0)) for r in rows),
    }]


def section_rows(key: str, rows: list[dict[str, Any]]) -> list[str]:
    if key == "corpus_case":
        return fmt(corpus_totals(rows))
    if key == "output_payloads" and rows:
        return fmt(rows) + ["total:", "", *fmt(output_totals(rows))]
    return fmt(rows)


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
            lines += section_rows(key, rows)
    lines += ["## Bugs this suite found", ""]
    lines += [f"- {state}: {text}" for state, text in FINDINGS] + [""]
    lines += ["## Not passed (known bugs are strict xfails until the lead fixes them)", ""]
    if notes:
        lines += ["| test | outcome | message |", "|---|---|---|"]
        lines += [f"| {n} | {o} | {m.replace('|', '/')} |" for n, o, m in notes]
    else:
        lines.append("Everything passed.")
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")


def update_sections(cmd: list[str], started: datetime, seconds: float, rc: int,
                    figures: list[dict[str, Any]], notes: list[tuple[str, str, str]]) -> None:
    """`--only`: rewrite the sections these figures belong to, keep everything else."""
    figs = by_test(figures)
    text = RESULTS.read_text(encoding="utf-8")
    updated = []
    for title, keys, what in SECTIONS:
        if not any(k in figs for k in keys):
            continue
        body = [f"## {title}", "", what, ""]
        for key in keys:
            body += [f"**{key}**", "", *section_rows(key, figs.get(key, []))]
        block = "\n".join(body)
        head = f"## {title}\n"
        if head in text:
            start = text.index(head)
            end = text.find("\n## ", start + len(head))
            text = text[:start] + block + ("\n" + text[end + 1:] if end != -1 else "")
        else:
            at = text.index("## Bugs this suite found")
            text = text[:at] + block + "\n" + text[at:]
        updated.append(title)
    bugs = "## Bugs this suite found\n"
    if bugs in text:  # the findings are this script's data: always the current list
        start = text.index(bugs)
        end = text.find("\n## ", start + len(bugs))
        found = "\n".join([bugs, *[f"- {state}: {what}" for state, what in FINDINGS], ""])
        text = text[:start] + found + ("\n" + text[end + 1:] if end != -1 else "")
    stamp = (f"- Updated {', '.join(updated) or 'nothing'} on "
             f"{started.isoformat(timespec='seconds').replace('+00:00', 'Z')} ({machine()}): "
             f"`{shlex.join(cmd)}`, {seconds:.0f} s, pytest exit status {rc}"
             + (f"; not passed: {'; '.join(n for n, _, _ in notes)}" if notes else ""))
    again = f"- Updated {', '.join(updated) or 'nothing'} on "  # the newest stamp only
    lines = [ln for ln in text.split("\n") if not ln.startswith(again)]
    first = next(i for i, ln in enumerate(lines) if ln.startswith("## "))
    lines.insert(first - 1, stamp)
    RESULTS.write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str]) -> int:
    only = argv[:1] == ["--only"]
    if only:
        argv = argv[1:]
    with tempfile.TemporaryDirectory(prefix="llorch-faults-") as tmp:
        figures_path = Path(tmp) / "figures.jsonl"
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", *([] if only else ["tests/faults"]), "-p",
               "no:cacheprovider", "-q", "-rxXfE", f"--junitxml={junit}", *argv]
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
        shown = [".venv/bin/python", "tests/faults/run_full.py", *(["--only"] if only else []),
                 *argv]
        if only:
            update_sections(shown, started, seconds, rc, figures, notes)
        else:
            write_results(shown, started, seconds, rc, figures, counts, notes)
    print(f"wrote {RESULTS} (pytest exit status {rc})")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
