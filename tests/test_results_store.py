"""Issue 28 item 6 (and the gate header of item 5): the embedded lab's results store
outlives pytest's temporary directory, the gate header names the pool root and the store,
and `llorch-harness history` run where the gate ran finds every run.

Real parts: the gate (pytest on tests_hw) in subprocesses, its reference worker, the real
`llorch-harness` entry point; the user's data directory is a temp dir via XDG_DATA_HOME
(platformdirs honours it, as on any Linux desktop).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HARNESS = Path(sys.executable).parent / "llorch-harness"


def gate(cwd: Path, env: dict[str, str], basetemp: Path) -> subprocess.CompletedProcess[str]:
    """The README's gate command (no --pool-root), only the performance item, judged with
    the CPU criterion off (this machine is busy on purpose)."""
    argv = [sys.executable, "-m", "pytest", str(REPO / "tests_hw"), "-m", "cpu", "-k",
            "performance", "-p", "no:cacheprovider", "--basetemp", str(basetemp),
            "--perf-busy-share=1"]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900, check=False)


@pytest.mark.slow
def test_history_finds_every_embedded_gate_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "PYTEST_"))}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # no llorch binaries
    store = tmp_path / "data" / "llorch-harness" / "embedded" / "results.sqlite"
    work = tmp_path / "work"
    work.mkdir()
    basetemp = tmp_path / "bt"
    for n in (1, 2):
        res = gate(work, env, basetemp)  # the same --basetemp: pytest wipes it each run
        out = res.stdout + res.stderr
        assert res.returncode in (0, 1), out[-4000:]
        assert f"  pool root: {basetemp / 'pool'} (a fresh directory of this run)" in out
        assert f"  results store: {store}" in out, out[:3000]
        assert store.is_file(), n
    history = subprocess.run([str(HARNESS), "history"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=300, check=False)
    assert history.returncode == 0, history.stderr
    assert f"results store: {store} (2 record(s) shown)" in history.stdout
    assert re.search(r"^#1 ", history.stdout, re.M) and re.search(r"^#2 ", history.stdout, re.M)
