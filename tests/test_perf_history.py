"""`llorch-harness history` as users run it (a subprocess on a real store), the trend plots
as well-formed SVG, exports read back, and bad input as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from llorch_harness.perf.figures import Figure
from llorch_harness.perf.plots import TrendPoint, trend_svg
from llorch_harness.perf.session import record_and_check
from llorch_harness.perf.store import ResultsStore

TIMEOUT_S = 120  # anti-hang only


def _fp(backend: str = "cpu", binary: str = "a" * 64) -> dict:
    return {"pool": "pool-a", "lab": "real", "model": "qwen-0.5b", "backend": backend,
            "device": "dev", "worker_binary_sha256": binary, "protocol": "perf/1"}


def _five(v: float) -> tuple[float, ...]:
    return tuple(v * k for k in (0.98, 0.99, 1.0, 1.01, 1.02))  # the rank test's samples


def _figs(per_token: float, load: float = 2.0) -> dict[str, Figure]:
    return {"load_s": Figure("load_s", load, 0.01, 5, samples=_five(load)),
            "ttft_s": Figure("ttft_s", None, None, 0, "sent at once"),
            "s_per_token": Figure("s_per_token", per_token, 0.0001, 5, samples=_five(per_token)),
            "tokens_per_sec": Figure("tokens_per_sec", 1 / per_token, 1.0, 5)}


@pytest.fixture
def store_path(tmp_path) -> Path:
    """Five passing cpu runs, then a build 3x slower; one cuda run."""
    db = tmp_path / "results.sqlite"
    for i, v in enumerate([0.010, 0.011, 0.010, 0.0105, 0.0102, 0.030]):
        out = record_and_check(db, f"run-{i}", _fp(binary=f"{i:x}" * 64), _figs(v))
        with ResultsStore.open(db) as store:
            store.set_gate_verdict(f"run-{i}", "pass" if out.verdict.status != "fail" else "fail")
    record_and_check(db, "run-cuda", _fp("cuda"), _figs(0.002))
    return db


def history(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llorch_harness.cli.harness_main", "history",
                           *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False, env=env)


def test_table_and_trends(store_path):
    res = history("--results-db", str(store_path))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:8] == ["id", "recorded", "pool", "model", "backend", "binary",
                                    "status", "gate"]
    assert sum(ln.startswith("#") for ln in lines) == 7
    assert "30 ms/token" in res.stdout and "REGRESSION" in res.stdout
    assert "qwen-0.5b on cpu, pool pool-a: latest run #6 fail; 6 run(s)" in res.stdout
    assert "unavailable  time to first token: sent at once" in res.stdout


def test_filters(store_path):
    res = history("--results-db", str(store_path), "--backend", "cuda")
    assert res.returncode == 0 and "#7" in res.stdout and "#6" not in res.stdout
    res = history("--results-db", str(store_path), "--last", "2", "--model", "qwen-0.5b")
    assert [ln.split()[0] for ln in res.stdout.splitlines()[1:3]] == ["#6", "#7"]
    res = history("--results-db", str(store_path), "--since", "2999-01-01")
    assert res.returncode == 0 and "no performance records" in res.stdout
    res = history("--results-db", str(store_path), "--since", "yesterday")
    assert res.returncode == 2 and "expected 7d, 12h, 2026-11-28 or an ISO time" in res.stderr


def test_html_page_plots_each_figure_with_band_and_this_run(store_path, tmp_path):
    page = tmp_path / "h.html"
    res = history("--results-db", str(store_path), "--html", str(page))
    assert res.returncode == 0, res.stderr
    text = page.read_text()
    assert "<script" not in text and "src=" not in text  # self-contained, nothing fetched
    svgs = [ET.fromstring(s[: s.index("</svg>") + 6])
            for s in ("<svg" + part for part in text.split("<svg")[1:])]
    assert len(svgs) >= 6  # load, per-token, tokens/s for two panels
    ns = "{http://www.w3.org/2000/svg}"
    cpu_per_token = next(s for s in svgs if "s_per_token over runs #1..#6" in
                         (s.find(f"{ns}title").text or ""))
    assert cpu_per_token.find(f"{ns}rect[@fill-opacity]") is not None  # the band
    current = [c for c in cpu_per_token.iter(f"{ns}circle") if c.get("r") == "4"]
    assert len(current) == 1 and current[0].get("fill") == "#cf222e"  # this run: regression


def test_export_reads_back_and_accept(store_path, tmp_path):
    exp = tmp_path / "e.json"
    assert history("--results-db", str(store_path), "--export", str(exp)).returncode == 0
    doc = json.loads(exp.read_text())
    assert doc["schema"] == "llorch-perf-export/1" and len(doc["runs"]) == 7
    res = history("--results-db", str(exp), "--backend", "cpu")
    assert res.returncode == 0 and "REGRESSION" in res.stdout
    res = history("--results-db", str(store_path), "--accept", "6", "--reason", "exact")
    assert res.returncode == 0 and "accepted run #6" in res.stdout
    with ResultsStore.open(store_path) as store:
        (run,) = store.runs(ids=[6])
    assert run.accepted


@pytest.mark.parametrize("case", ["missing", "garbage", "accept-unknown", "bad-export"])
def test_bad_input_is_one_line(tmp_path, store_path, case):
    target = tmp_path / "x"
    args = ["--results-db", str(target)]
    if case == "garbage":
        target.write_bytes(b"\x00\x01 not json, not sqlite")
    elif case == "bad-export":
        target.write_text(json.dumps({"schema": "llorch-perf-export/1", "runs": [{"id": 1}]}))
    elif case == "accept-unknown":
        args = ["--results-db", str(store_path), "--accept", "99"]
    res = history(*args)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: ")
    assert "Traceback" not in res.stderr


def test_default_store_is_the_pool_roots(store_path, tmp_path):
    gate_dir = tmp_path / "pool" / ".runtime" / "gate"
    gate_dir.mkdir(parents=True)
    store_path.rename(gate_dir / "results.sqlite")
    env = {k: v for k, v in os.environ.items() if k not in ("LLORCH_RESULTS_DB",
                                                            "LLORCH_POOL_ROOT")}
    res = history("--pool-root", str(tmp_path / "pool"), env=env)
    assert res.returncode == 0 and "#6" in res.stdout


def test_trend_svg_edge_cases_are_well_formed():
    ns = "{http://www.w3.org/2000/svg}"
    for pts in ([TrendPoint(1, 0.5)], [TrendPoint(1, 2.0), TrendPoint(2, 2.0)],
                [TrendPoint(1, None), TrendPoint(2, 1.0, failed=True), TrendPoint(3, 1.5)]):
        svg = ET.fromstring(trend_svg("load_s", pts, current_id=3, baseline=1.0, band=0.2))
        assert svg.find(f"{ns}title") is not None
    empty = ET.fromstring(trend_svg("ttft_s", [TrendPoint(1, None)]))
    assert "no values" in (empty.find(f"{ns}title").text or "")
    tricky = trend_svg('x"<&>', [TrendPoint(1, 1.0)])
    assert ET.fromstring(tricky) is not None and "<&>" not in tricky
