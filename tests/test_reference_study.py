"""The reference-check study (benchmarks/study_reference.py) on its small grid: correct
reduced-precision workers (bfloat16 through torch, float32 with bfloat16-scale noise on its
logits) all pass, and every wrong worker (garbage, shifted and CP3 decode positions, swapped
layers, wrong RoPE base, a cache never cleared) fails on its first request. The full grid's
figures are in benchmarks/RESULTS_reference_study.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_study_passes_correct_workers_and_catches_wrong_ones(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs the oracle extra")
    pytest.importorskip("transformers", reason="needs the oracle extra")
    out, raw = tmp_path / "study.md", tmp_path / "study.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "study_reference.py"), "--quick",
         "--work", str(tmp_path / "work"), "--out", str(out), "--json", str(raw)],
        capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads(raw.read_text(encoding="utf-8"))
    correct, wrong = data["correct"], data["wrong"]
    assert len(correct) >= 4 and {r["variant"] for r in correct} >= {
        "bf16, default ISA, all threads", "fp32 + bf16-scale noise x2"}
    assert all(r["ok"] for r in correct), [r["message"] for r in correct if not r["ok"]]
    faults = {r["fault"] for r in wrong}
    assert len(faults) == 6
    assert all(not r["ok"] for r in wrong if r["first_request"]), \
        [(r["fault"], r["model"]) for r in wrong if r["first_request"] and r["ok"]]
    table = out.read_text(encoding="utf-8")
    assert "false failures" in table and "caught on the first request" in table
