"""One embedded gate run and the three pages a person gets from it, shared by the report
tests (tests/test_report_first_screen.py, tests/test_report_browser.py): the per-pool
report (`pytest -m cpu --html=reports/cp3.html`, the README's command), the merged page
of that pool's result under two pool names (`gate merge`), and the history page
(`llorch-harness history --html`). Session-scoped: one gate run per test process."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_plugin_gate import run_gate

CLI_TIMEOUT_S = 300


@dataclass
class GateReports:
    tmp: Path
    gate: subprocess.CompletedProcess
    pool_page: Path
    pool_json: dict[str, Any]
    merged_page: Path
    merged_json: dict[str, Any]
    history_page: Path
    history: subprocess.CompletedProcess


def harness_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "llorch-harness"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=CLI_TIMEOUT_S, check=False,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def gate_reports(tmp_path_factory: pytest.TempPathFactory) -> GateReports:
    tmp = tmp_path_factory.mktemp("gate-reports")
    reports, store = tmp / "reports", tmp / "results.sqlite"
    gate = run_gate(tmp, "--html", str(reports / "cp3.html"),
                    "--gate-json", str(reports / "cp3.json"), "--results-db", str(store))
    assert (reports / "cp3.html").is_file(), gate.stdout[-4000:] + gate.stderr[-2000:]
    merged = harness_cli("gate", "merge", f"mac={reports / 'cp3.json'}",
                         f"workstation={reports / 'cp3.json'}", "--html",
                         reports / "merged.html", "--json", reports / "merged.json", cwd=tmp)
    assert (reports / "merged.html").is_file(), merged.stdout + merged.stderr
    history = harness_cli("history", "--results-db", store, "--html",
                          reports / "history.html", cwd=tmp)
    assert history.returncode == 0, history.stdout + history.stderr
    return GateReports(tmp, gate, reports / "cp3.html",
                       json.loads((reports / "cp3.json").read_text()),
                       reports / "merged.html",
                       json.loads((reports / "merged.json").read_text()),
                       reports / "history.html", history)
