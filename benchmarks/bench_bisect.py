"""What one bisect step costs on the embedded stand-in (issue 29): a build of a commit, a
build found in the cache, one gate run of one item, and a whole step (cached build + K gate
runs), all measured in this one run and interleaved, so the ratios hold on a busy machine.

Not a test: figures go to benchmarks/RESULTS_bisect.md, nothing is asserted.
Run:  .venv/bin/python benchmarks/bench_bisect.py [--repeats 3] [--runs 3] [--md PATH]

The stand-in is tests/bisect_standin.py: a llama-orch repository and a `cargo` that builds
a launcher of the reference worker. A real llorch-candled release build takes minutes; the
stand-in's build measures only what the bisect adds around cargo (worktree checkout, crate
lookup, the copy into the cache). A gate run is the real one: pytest on tests_hw in the real
lab, one item ("Qwen works on CPU (this pool)"), the smallest embedded model (tiny-llama).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchstats import stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llorch_harness.bisect.build import Builder, default_build_command  # noqa: E402
from llorch_harness.bisect.gatestep import GateConfig, gate_suite, run_gate  # noqa: E402
from llorch_harness.bisect.worktree import Worktree  # noqa: E402
from tests.bisect_standin import build_repo, install_cargo  # noqa: E402

ITEM = "Qwen works on CPU (this pool)"


def measure(base: Path, repeats: int, runs: int) -> dict[str, dict[str, float]]:
    main, _ = build_repo(base / "llama-orch", 20)
    tools = install_cargo(base / "tools").parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "PYTEST_"))}
    env["PATH"] = f"{tools}:{Path(sys.executable).parent}:/usr/bin:/bin"
    env["LLORCH_LEASE_DIR"] = str(base / "leases")
    (base / "pool").mkdir()
    cfg = GateConfig(gate_suite(), "cpu", base / "pool", "tiny-llama", env)
    builder = Builder(base / "cache", base / "target", "cpu", default_build_command("cpu"), env)
    times: dict[str, list[float]] = {"build": [], "cached build": [], "gate run (1 item)": [],
                                     f"step (cached build + {runs} gate runs)": []}
    (base / "run").mkdir()
    with Worktree.create(base / "llama-orch", base / "run" / "wt", main[0]) as wt:
        run_gate(cfg, builder.build(main[0], wt.path, base / "warm.log").binary.parent,  # type: ignore[union-attr]
                 [ITEM], base / "warm")  # the model's download, once per pool, not counted
        for i in range(repeats):
            sha = main[5 + i]
            t0 = time.monotonic()
            wt.checkout(sha)
            built = builder.build(sha, wt.path, base / f"b{i}.log")
            times["build"].append(time.monotonic() - t0)
            t0 = time.monotonic()
            hit = builder.cached(sha)
            times["cached build"].append(time.monotonic() - t0)
            assert built.ok and hit is not None and hit.binary is not None
            t0 = time.monotonic()
            run_gate(cfg, hit.binary.parent, [ITEM], base / f"g{i}")
            times["gate run (1 item)"].append(time.monotonic() - t0)
            t0 = time.monotonic()
            again = builder.cached(sha)
            for j in range(runs):
                run_gate(cfg, again.binary.parent, [ITEM], base / f"s{i}-{j}")  # type: ignore[union-attr]
            times[f"step (cached build + {runs} gate runs)"].append(time.monotonic() - t0)
    return {k: stats(v) for k, v in times.items()}


def markdown(figs: dict[str, dict[str, float]], args: argparse.Namespace,
             load: tuple[float, float]) -> str:
    commit = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    gate = figs["gate run (1 item)"]["median"]
    rows = ["| what | median s | p95 s | min s | n | / one gate run |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, f in figs.items():
        rows.append(f"| {name} | {f['median']:.4f} | {f['p95']:.4f} | {f['min']:.4f} | "
                    f"{f['n']:.0f} | {f['median'] / gate:.4f} |")
    return "\n".join([
        "# What a bisect step costs (issue 29)", "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPUs, load {load[0]:.1f} at start, {load[1]:.1f} at end), "
        f"harness commit {commit}, by `python benchmarks/bench_bisect.py --repeats "
        f"{args.repeats} --runs {args.runs}`.", "",
        "The embedded stand-in (tests/bisect_standin.py): the stand-in cargo's build, the "
        "cache lookup, one real gate run of one item in the real lab with tiny-llama, and a "
        "whole step. Ratios are to one gate run, measured in the same run.", "",
        *rows, "",
        "Reading: a step of the bisect costs its build (nothing when cached) plus K gate "
        "runs; on the stand-in the gate runs are nearly all of it (pytest's start, the "
        "lab's set-up, one worker life, the reference check). With a real llorch-candled "
        "the build is the large part (a release build of the crate, incremental in the "
        "shared target directory) and a cached build costs what the table shows: a "
        "lookup.", ""])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--md", default=str(HERE / "RESULTS_bisect.md"))
    args = p.parse_args()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-bisect-") as tmp:
        figs = measure(Path(tmp), args.repeats, args.runs)
    text = markdown(figs, args, (load0, os.getloadavg()[0]))
    Path(args.md).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
