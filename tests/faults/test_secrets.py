"""Item 6: a canary HF_TOKEN never reaches a report, a log, the terminal or the catalog.

The CP3 gate (tests_hw -m cpu, embedded lab: local hub + reference workers) runs in a
subprocess with the canary set, serially and with `-n 2`, writing the HTML report, the
JUnit XML and the gate JSON. Then every byte it produced is scanned: terminal output,
the three reports, every file under the pool root (catalog, worker records and logs)
and pytest's basetemp, for the canary itself and its base64 forms. The scanner is proven
able to find a planted canary first, so a clean result is not a blind one.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from .common import ANTI_HANG_S, PYTHON, REPO_ROOT, clean_env, figure

CANARY = "hf_LLORCHcanary7Qx2Zr9WkT4mN8vB3"


def needles(secret: str) -> list[bytes]:
    """The secret, and how it looks base64-encoded at each of the three alignments."""
    raw = secret.encode()
    out = [raw]
    for shift in range(3):
        enc = base64.b64encode(b"\0" * shift + raw)
        out.append(enc[4 if shift else 0:-4])  # the stable middle part
    return out


def scan(paths: list[Path], texts: dict[str, str], secret: str) -> list[str]:
    """Where the secret shows up: file paths and named texts."""
    ns = needles(secret)
    hits = [name for name, text in texts.items() if any(n in text.encode() for n in ns)]
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            try:
                data = f.read_bytes()
            except OSError:
                continue
            if any(n in data for n in ns):
                hits.append(str(f))
    return hits


def test_scanner_finds_a_planted_canary(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(f"token={CANARY}\n")
    (tmp_path / "b.b64").write_bytes(base64.b64encode(b"xy" + CANARY.encode()))
    (tmp_path / "c.txt").write_text("clean\n")
    hits = scan([tmp_path], {"term": f"...{CANARY}..."}, CANARY)
    assert sorted(hits) == sorted(["term", str(tmp_path / "a.txt"), str(tmp_path / "b.b64")])


@pytest.mark.parametrize("mode", ["serial", "xdist"])
def test_canary_token_never_leaks(mode: str, tmp_path: Path) -> None:
    pool, out = tmp_path / "pool", tmp_path / "reports"
    out.mkdir()
    argv = [PYTHON, "-m", "pytest", "tests_hw", "-m", "cpu", "--lab", "embedded",
            "--pool-root", str(pool), "--html", str(out / "report.html"),
            "--self-contained-html", "--junitxml", str(out / "junit.xml"),
            "--gate-json", str(out / "gate.json"), "--basetemp", str(tmp_path / "bt"),
            "-p", "no:cacheprovider", "-rA"]
    if mode == "xdist":
        argv += ["-n", "2"]
    # the whole gate must pass here, so its performance item judges the build whatever else
    # runs on this machine (that rule has its own tests: tests/test_perf_busy.py)
    env = clean_env(HF_TOKEN=CANARY, LLORCH_PERF_BUSY_SHARE="1")
    r = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                       timeout=ANTI_HANG_S * 3, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    # the scan must not be vacuous: the run produced reports, a catalog and worker logs
    html = (out / "report.html").read_text()
    junit = (out / "junit.xml").read_text()
    gate = json.loads((out / "gate.json").read_text())
    logs = [p for p in (pool / ".runtime" / "workers").glob("*.log*") if p.stat().st_size]
    assert "CP3" in html and "<testcase" in junit and gate
    assert (pool / ".test-models" / "catalog.json").is_file()
    assert logs, "no worker logs to scan"
    hits = scan([out, pool, tmp_path / "bt"], {"stdout": r.stdout, "stderr": r.stderr}, CANARY)
    assert hits == [], f"canary HF_TOKEN found in: {hits}"
    files = sum(1 for root in (out, pool, tmp_path / "bt") for p in root.rglob("*")
                if p.is_file())
    figure("secrets", mode=mode, files_scanned=files, worker_logs=len(logs),
           terminal_bytes=len(r.stdout) + len(r.stderr), canary_hits=len(hits))
