"""ruff over the repository and mypy over the package, as the lead runs them before a merge.

Both read their settings from pyproject.toml ([tool.ruff], [tool.mypy]); a failure shows
the tool's own report.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # a guard against a hang, not a speed requirement


def tool(name: str) -> str:
    """The tool next to this interpreter (the venv's), else on PATH; skip when absent."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: pip install -e '.[test]'")
    return found


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False, stdin=subprocess.DEVNULL)


def test_ruff_is_clean() -> None:
    res = run([tool("ruff"), "check", "."])
    assert res.returncode == 0, res.stdout[-20000:] + res.stderr[-4000:]


def test_mypy_is_clean() -> None:
    res = run([tool("mypy")])  # files, overrides and flags: [tool.mypy] in pyproject.toml
    assert res.returncode == 0, res.stdout[-20000:] + res.stderr[-4000:]
