"""What the installed plugin costs a pytest run that has nothing to do with llama-orch.

Not a test: figures go to benchmarks/RESULTS_plugin.md (target: the run with the plugin
within 1.1x of the run with `-p no:llorch_harness`), nothing is asserted.
Run:  .venv/bin/python benchmarks/bench_plugin_overhead.py [--repeats 15]

A one-test project in a temp dir runs `python -m pytest -q -p no:cacheprovider` as a user
would, in three variants, interleaved (the order rotates every repeat, so drift on a
shared machine hits each variant alike):
- `without`: `-p no:llorch_harness` (the plugin not loaded at all);
- `plugin`: the plugin of this working tree, as installed;
- `before`: the plugin as of commit 659a365 (before issue 13), from `git archive` into a
  temp dir put first on PYTHONPATH (skipped when git or the commit is missing).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

from benchstats import stats

from llorch_harness.fsutil import atomic_write_text

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BEFORE_COMMIT = "659a365"
TARGET_RATIO = 1.1
RUN_TIMEOUT_S = 300  # guards a hang, not a figure
TEST = "def test_one():\n    assert 1 + 1 == 2\n"


def clean_env(pythonpath: str | None = None) -> dict[str, str]:
    """No gate settings, no addopts: the environment of someone else's project."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLORCH_", "PYTEST_", "PYTHONPATH"))}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def old_tree(dest: Path) -> Path | None:
    """llorch_harness as of BEFORE_COMMIT, unpacked under dest (read-only git use)."""
    res = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_COMMIT, "llorch_harness"],
                         capture_output=True, timeout=RUN_TIMEOUT_S, check=False)
    if res.returncode != 0:
        return None
    with tarfile.open(fileobj=BytesIO(res.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def variants(old: Path | None) -> dict[str, tuple[list[str], dict[str, str]]]:
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    out = {"without": ([*base, "-p", "no:llorch_harness"], clean_env()),
           "plugin": (base, clean_env())}
    if old is not None:
        out["before"] = (base, clean_env(str(old)))
    return out


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    if res.returncode != 0 or "1 passed" not in res.stdout:
        raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout[-2000:]}"
                         f"{res.stderr[-2000:]}")
    return took


def measure(repeats: int) -> tuple[dict[str, dict[str, float]], list[str]]:
    with tempfile.TemporaryDirectory(prefix="bench-plugin-") as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        (project / "test_one.py").write_text(TEST)
        old = old_tree(Path(tmp) / "old")
        runs = variants(old)
        names = list(runs)
        times: dict[str, list[float]] = {n: [] for n in names}
        for name in names:  # one untimed warm-up each (bytecode caches, page cache)
            timed(*runs[name], project)
        for i in range(repeats):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                times[name].append(timed(*runs[name], project))
        return {n: stats(v) for n, v in times.items()}, names


def markdown(figures: dict[str, dict[str, float]], repeats: int, load: tuple[str, str]) -> str:
    without = figures["without"]["median"]
    ratio = figures["plugin"]["median"] / without
    rows = [f"| {name} | {f['median']:.3f} | {f['p95']:.3f} | {f['min']:.3f} | "
            f"{f['median'] / without:.2f} |" for name, f in figures.items()]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    return "\n".join([
        "# Plugin overhead on an unrelated pytest run (issue 13)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({platform.platform()}, {os.cpu_count()} CPUs, load average {load[0]} at start, "
        f"{load[1]} at end), HEAD {commit} plus the working tree.",
        f"Command: `.venv/bin/python benchmarks/bench_plugin_overhead.py --repeats {repeats}`",
        "",
        "A one-test project, `python -m pytest -q -p no:cacheprovider`, wall time of the whole",
        f"process in seconds over {repeats} interleaved repeats (variants rotate each repeat).",
        "",
        "| variant | median s | p95 s | min s | / without |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Target: plugin within {TARGET_RATIO}x of `-p no:llorch_harness`: "
        f"{ratio:.2f}x, {verdict}.",
        "",
        "Before (issue 13's own figures, another machine): 1.28 s with the plugin against",
        "0.69 s without (1.86x): the lab banner, an `nvidia-smi` probe, a process sweep and a",
        "SIGTERM handler on every run. The `before` row is that plugin (commit "
        f"{BEFORE_COMMIT}) measured here.",
        "",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS_plugin.md")
    args = ap.parse_args()
    start = f"{os.getloadavg()[0]:.2f}"
    figures, _ = measure(max(1, args.repeats))
    text = markdown(figures, args.repeats, (start, f"{os.getloadavg()[0]:.2f}"))
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
