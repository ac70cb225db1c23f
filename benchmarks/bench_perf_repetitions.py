"""The embedded gate's wall time before and after issue 26's performance repetitions.

Why: the performance item now measures 5 worker lives (each a warm-up and 2 measured
requests) instead of 3 loads and 5 requests on the last one, watches the host, and ranks
its samples against the baseline's (scipy). The issue allows at most +25 % on the embedded
gate's wall time. Both trees are built from git: `--before REV` (the commit before the
change) and the same commit with the changes of `--commits C1 C2 ...` to the measured paths
applied (the change alone, nothing else that landed meanwhile). Each repeat runs
`pytest -m cpu tests_hw` from each tree in turn (interleaved, fresh pool root each time),
on its own `PYTHONPATH`, and reads the wall time and the performance item's own duration.

The busy-host wait is not a repetition: the "after" runs pass `--perf-busy-share 1` (the CPU
criterion off) so that a busy benchmark host measures the repetitions, not the waiting; the
wait's own bound (30 s plus one more measurement) is reported beside.

Run:  .venv/bin/python benchmarks/bench_perf_repetitions.py --before REV --commits C1 [C2 ...]
      [--repeats 3] [--md benchmarks/RESULTS_perf_repetitions.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchstats import stats

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("llorch_harness/perf", "llorch_harness/plugin/options.py", "tests_hw/test_performance.py")
GATE_TIMEOUT_S = 1800


def _tree(rev: str, dest: Path, commits: tuple[str, ...] = ()) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    for c in commits:
        diff = subprocess.run(["git", "diff", f"{c}^", c, "--", *PATHS], cwd=ROOT,
                              capture_output=True, check=True).stdout
        if diff:
            subprocess.run(["git", "apply", "-"], cwd=dest, input=diff, check=True)
    return dest


def _gate(tree: Path, work: Path, extra: list[str]) -> dict[str, Any]:
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "PYTEST_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    env["PYTHONPATH"] = str(tree)  # this tree's llorch_harness before the installed one
    gate_json = work / "g.json"
    argv = [sys.executable, "-m", "pytest", str(tree / "tests_hw"), "-m", "cpu",
            "-p", "no:cacheprovider", "--pool-root", str(work / "pool"),
            "--basetemp", str(work / "bt"), "--gate-json", str(gate_json), *extra]
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                         timeout=GATE_TIMEOUT_S, check=False)
    wall = time.perf_counter() - t0
    doc = json.loads(gate_json.read_text()) if gate_json.is_file() else {}
    perf = [t for t in doc.get("items", []) if t.get("item") == "No performance regression"]
    return {"wall_s": wall, "exit": res.returncode, "verdict": doc.get("verdict"),
            "perf_item_s": sum(float(t.get("duration") or 0.0) for t in perf),
            "perf_status": [t.get("status") for t in perf],
            "tail": (res.stdout + res.stderr)[-400:]}


def _load() -> str:
    with open("/proc/loadavg", encoding="ascii") as fh:
        return " ".join(fh.read().split()[:3])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--commits", nargs="+", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-perf-rep-"))
    try:
        before = _tree(args.before, tmp / "before")
        after = _tree(args.before, tmp / "after", tuple(args.commits))
        load0 = _load()
        runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for i in range(args.repeats):
            for name, tree, extra in (("before", before, []),
                                      ("after", after, ["--perf-busy-share", "1"])):
                r = _gate(tree, tmp / f"{name}{i}", extra)
                runs[name].append(r)
                print(name, i, json.dumps({k: v for k, v in r.items() if k != "tail"}),
                      flush=True)
        load1 = _load()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    walls = {k: stats([r["wall_s"] for r in v]) for k, v in runs.items()}
    items = {k: stats([r["perf_item_s"] for r in v]) for k, v in runs.items()}
    ratio = walls["after"]["median"] / walls["before"]["median"]
    pairs = [a["wall_s"] / b["wall_s"] for a, b in zip(runs["after"], runs["before"],
                                                      strict=True)]
    lines = [
        "# Issue 26: the embedded gate's wall time with the performance repetitions",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `python benchmarks/bench_perf_repetitions.py --before {args.before} "
        f"--commits {' '.join(args.commits)} --repeats {args.repeats}`",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs (shared with other jobs)",
        f"- load average at start {load0}, at end {load1}",
        "- before: perf/1 (3 loads, a warm-up and 5 requests on the last); after: perf/2 "
        "(5 worker lives, each a warm-up and 2 requests; host watch; rank test), run with "
        "`--perf-busy-share 1` so that a busy benchmark host measures the repetitions, "
        "not the wait for quiet",
        "",
        "| | embedded gate wall (`pytest -m cpu tests_hw`) | the performance item's duration |",
        "| --- | --- | --- |",
    ]
    for k in ("before", "after"):
        w, it = walls[k], items[k]
        lines.append(f"| {k} | median {w['median']:.1f} s (min {w['min']:.1f}, max "
                     f"{w['max']:.1f}, n={w['n']}) | median {it['median']:.1f} s (min "
                     f"{it['min']:.1f}, max {it['max']:.1f}) |")
    lines += [
        "",
        f"- **after / before, medians: {ratio:.3f} ({(ratio - 1):+.1%})** (limit +25 %); "
        f"per interleaved pair: {', '.join(f'{p:.3f}' for p in pairs)}",
        f"- the item's own time grew by {items['after']['median'] - items['before']['median']:.1f}"
        " s (median)",
        "- exit statuses: " + "; ".join(f"{k} {[r['exit'] for r in v]} verdicts "
                                        f"{[r['verdict'] for r in v]}" for k, v in runs.items()),
        "- on a busy host (not in these figures) the item adds at most the wait for quiet "
        "(`--perf-quiet-wait`, default 30 s) and one more measurement, then could not check",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
