"""The harness's own tests on a busy machine (issue 26 item 4): run test files repeatedly
with a CPU hog on every core beside them, and record what failed.

Not a test and not a timing: it counts passes and failures. Each file runs `--count` times
in one pytest process (pytest-repeat, a dev tool: `pip install pytest-repeat`; without it,
a shell-style loop of separate runs). The hogs are this script's children, killed at the
end whatever happens. Results are appended as rows to benchmarks/RESULTS_load.md.

Run:  .venv/bin/python benchmarks/under_load.py --count 3 tests/test_leftovers.py ...
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS_load.md"
HOG = "while True: pass"
RUN_TIMEOUT_S = 3600  # a hang guard for one file's runs


@contextmanager
def hogs(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`n` busy-looping processes, killed on the way out."""
    procs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def run_file(path: str, count: int, extra: list[str]) -> tuple[int, int, list[str], float]:
    """(passed, failed, failed test ids, seconds) of `count` runs of one test file."""
    base = [sys.executable, "-m", "pytest", path, "-p", "no:cacheprovider", "-q", "-rfE",
            *extra]
    repeat = importlib.util.find_spec("pytest_repeat") is not None
    rounds = [[*base, f"--count={count}"]] if repeat else [base] * count
    passed = failed = 0
    ids: list[str] = []
    t0 = time.monotonic()
    for argv in rounds:
        res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                             timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
        tail = res.stdout.strip().splitlines()[-1:] or [""]
        ran = sum(int(n) for n in re.findall(r"(\d+) passed", tail[0]))
        bad = sum(int(n) for n in re.findall(r"(\d+) (?:failed|errors?)", tail[0]))
        if ran + bad == 0:  # pytest did not get to the tests (e.g. a collection error)
            last = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or ["?"]
            ids.append(f"did not run (exit {res.returncode}): {last[0][:120]}")
        passed, failed = passed + ran, failed + bad
        ids += [ln.split(" - ", 1)[0].split()[1] + (f" ({ln.split(' - ', 1)[1][:100]})"
                                                     if " - " in ln else "")
                for ln in res.stdout.splitlines()
                if ln.startswith(("FAILED ", "ERROR ")) and len(ln.split()) > 1]
    return passed, failed, ids, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--count", type=int, default=3, help="runs of each file (default 3)")
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 1,
                    help="busy processes beside the tests (default: one per core)")
    ap.add_argument("--note", default="", help="a word on what this run checks")
    ap.add_argument("-k", default=None, help="pytest -k expression for every file")
    args = ap.parse_args()
    # a SIGTERM (e.g. from `timeout`) unwinds, so the hogs are killed on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    extra = ["-k", args.k] if args.k else []
    rows = []
    with hogs(args.hogs):
        for f in args.files:
            load = os.getloadavg()[0]
            passed, failed, ids, secs = run_file(f, args.count, extra)
            unique = sorted(set(ids))
            fails = ", ".join(unique[:6]) + (f", +{len(unique) - 6} more" if unique[6:] else "")
            fails = fails.replace("|", "/") or "-"
            what = f"`{f}`" + (f" -k `{args.k}`" if args.k else "")
            row = (f"| {datetime.now(UTC):%Y-%m-%d %H:%M} | {what}"
                   f" | {args.count} | {args.hogs} | {load:.1f} | {passed} | {failed} | "
                   f"{fails} | {secs:.0f} | {args.note} |")
            print(row, flush=True)
            rows.append(row)
    if not RESULTS.exists():
        RESULTS.write_text(
            "# The harness's tests under load\n\nWritten by `benchmarks/under_load.py`.\n\n"
            "| date (UTC) | file | runs | hogs | load at start | passed | failed | "
            "failed tests | s | note |\n| --- | --- | --- | --- | --- | --- | --- | --- | "
            "--- | --- |\n")
    with RESULTS.open("a") as fh:
        fh.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
