"""Performance history end to end: real gate runs on one pool build a history, a build
slower by a known factor (per generated token) fails "No performance regression" naming
the figure, an intended change is accepted; ten healthy measurements of the real reference
worker in a row raise no false alarm; the history command reads what the gate wrote."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from llorch_harness.perf.baseline import Rule
from llorch_harness.perf.fingerprint import DEFAULT_PROTOCOL, fingerprint
from llorch_harness.perf.measure import measure
from llorch_harness.perf.session import record_and_check
from llorch_harness.perf.store import ResultsStore

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 900  # anti-hang only
SLOW_FACTOR = 3
PERF_ITEM = "Qwen Testing / No performance regression"


def run_perf_gate(pool: Path, tmp: Path, *extra: str, faults: str | None = None
                  ) -> tuple[subprocess.CompletedProcess[str], dict]:
    """The embedded cpu gate with only the performance item selected, on a kept pool root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "PYTEST_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # no llorch binaries: embedded
    if faults:
        env["LLORCH_REF_FAULTS"] = faults
    tmp.mkdir(parents=True, exist_ok=True)
    gate_json = tmp / "g.json"
    argv = [sys.executable, "-m", "pytest", str(REPO / "tests_hw"), "-m", "cpu",
            "-k", "test_no_performance_regression", "-p", "no:cacheprovider",
            "--pool-root", str(pool), "--basetemp", str(tmp / "bt"),
            "--gate-json", str(gate_json), "-rA", *extra]
    res = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp,
                         timeout=RUN_TIMEOUT_S, check=False)
    doc = json.loads(gate_json.read_text()) if gate_json.is_file() else {}
    return res, doc


def _item(doc: dict) -> str:
    return {f"{r['section']} / {r['item']}": r["status"] for r in doc["checklist"]}[PERF_ITEM]


@pytest.mark.slow
def test_a_build_that_decodes_slower_fails_the_item_after_a_healthy_history(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    statuses, per_token = [], []
    # This test is about the history (record, compare, fail, accept), not the host: the CPU
    # criterion of a busy host is off (share 1), as on a pool that is known to be dedicated;
    # tests/test_perf_busy.py tests the busy host.
    dedicated = ("--perf-busy-share", "1")
    for i in range(Rule().min_runs + 1):  # 3 runs only record, the 4th is compared
        res, doc = run_perf_gate(pool, tmp_path / f"healthy{i}", *dedicated)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-6000:]
        assert _item(doc) == "pass" and doc["verdict"] == "incomplete"
        (rec,) = doc["performance"]
        assert rec["gate_verdict"] == "incomplete"  # set by the run's end
        statuses.append(rec["status"])
        per_token += [f["value"] for f in rec["figures"] if f["name"] == "s_per_token"]
    assert statuses == ["recorded", "recorded", "recorded", "pass"]  # no false alarm
    (rec,) = doc["performance"]
    ttft = next(f for f in rec["figures"] if f["name"] == "ttft_s")
    assert ttft["value"] is None and "at once" in ttft["note"]  # CP3 wire: not a number

    # a build 3x slower by the judged figure: (3 - 1) x the healthy median more per token
    delay = (SLOW_FACTOR - 1) * statistics.median(per_token)
    res, doc = run_perf_gate(pool, tmp_path / "slow", *dedicated, faults=f"token_delay={delay!r}")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-6000:]
    assert "CP3 gate verdict: FAIL" in out and _item(doc) == "fail"
    assert "performance regression: request time per generated token" in out, out[-6000:]
    assert "baseline runs: #1" in out and "--accept" in out
    (rec,) = doc["performance"]
    assert rec["status"] == "fail" and rec["check"]["measurements"] == 2  # confirmed
    assert len(rec["check"]["host"]) == 2 and rec["check"]["host"][0]["host"]["cores"] >= 1
    (reg,) = [c for c in rec["check"]["comparisons"] if c["verdict"] == "regression"]
    assert reg["name"] == "s_per_token" and reg["runs"] == [1, 2, 3, 4]
    assert reg["value"] / reg["baseline"] > 2, reg  # a build 3x slower shows as such

    db = pool / ".runtime" / "gate" / "results.sqlite"
    hist = subprocess.run([sys.executable, "-m", "llorch_harness.cli.harness_main", "history",
                           "--results-db", str(db), "--html", str(tmp_path / "h.html")],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert hist.returncode == 0, hist.stderr
    assert "REGRESSION" in hist.stdout and "request time per generated token" in hist.stdout
    page = (tmp_path / "h.html").read_text()
    assert page.count("<svg") >= 5 and "http://" not in page.replace(
        "http://www.w3.org/2000/svg", "")  # self-contained: nothing to fetch
    acc = subprocess.run([sys.executable, "-m", "llorch_harness.cli.harness_main", "history",
                          "--results-db", str(db), "--accept", str(rec["id"]),
                          "--reason", "slower but exact"],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert acc.returncode == 0 and f"accepted run #{rec['id']}" in acc.stdout, acc.stderr
    with ResultsStore.open(db) as store:  # the next run's baseline starts at the accepted one
        assert [r.id for r in store.baseline_runs(rec["baseline_key"], "next", 5)] == [rec["id"]]


@pytest.mark.slow
def test_no_perf_gate_skips_the_item_visibly_and_records_nothing(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    res, doc = run_perf_gate(pool, tmp_path / "run", "--no-perf-gate")
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    assert _item(doc) == "skip" and "performance" not in doc
    assert "--no-perf-gate: performance not measured" in res.stdout
    assert not (pool / ".runtime" / "gate" / "results.sqlite").exists()


@pytest.fixture
def tiny_pool(tmp_path):
    from llorch_harness.lab.tinymodel import build_tiny_model
    from llorch_harness.pool import procs, workers
    from llorch_harness.pool.catalog import ModelEntry, update_catalog
    from llorch_harness.pool.paths import PoolPaths

    paths = PoolPaths.at(tmp_path / "pool")
    build_tiny_model(paths.models_dir / "tiny-qwen")
    entry = ModelEntry(id="tiny-qwen", name="Tiny Qwen2", path=".test-models/tiny-qwen",
                       downloaded=True, backends=["cpu"], architecture="qwen")
    update_catalog(paths, lambda c: c.upsert(entry))
    yield paths
    workers.stop_all(paths, grace=1.0)
    assert not procs.marked_processes(procs.pool_key(paths.root))


@pytest.mark.slow
def test_ten_healthy_runs_in_a_row_raise_no_false_alarm(tiny_pool):
    """The gate's own measurement (fresh reference workers, the protocol's requests, the
    store, the rule and its confirmation) ten times on one unchanged build."""
    from llorch_harness.pool import workers

    def spawn(i: int):
        return workers.spawn_worker(tiny_pool, "cpu", "tiny-qwen", worker="reference", port=0,
                                    worker_id=f"perf{i}", die_with_parent=True)

    def again():
        return measure(spawn, lambda h: h.stop(), "cpu", DEFAULT_PROTOCOL).figures()

    fp = fingerprint(pool="p", lab="embedded", model="tiny-qwen", backend="cpu",
                     device={"name": "cpu"}, worker_kind="reference", binary_sha256="b" * 64,
                     model_revision=None, model_files={}, harness_version="t",
                     protocol=DEFAULT_PROTOCOL.label())
    db = tiny_pool.root / "results.sqlite"
    outcomes = []
    for i in range(10):
        out = record_and_check(db, f"run-{i}", fp, again(), remeasure=again)
        with ResultsStore.open(db) as store:
            store.set_gate_verdict(f"run-{i}", "pass")
        outcomes.append(out)
    statuses = [o.verdict.status for o in outcomes]
    assert statuses == ["recorded"] * 3 + ["pass"] * 7, [o.verdict.message() for o in outcomes]
    judged = {c.name for o in outcomes[3:] for c in o.verdict.comparisons
              if c.verdict in ("ok", "improvement")}
    assert {"load_s", "s_per_token", "memory_ready", "memory_peak"} <= judged


def test_a_results_db_that_is_not_a_file_is_one_usage_error(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    (tmp_path / "adir").mkdir()
    res, _ = run_perf_gate(pool, tmp_path / "run", "--results-db", str(tmp_path / "adir"))
    assert res.returncode == 4, (res.stdout + res.stderr)[-3000:]
    assert "--results-db: results store" in res.stderr and "is a directory" in res.stderr
    assert "Traceback" not in res.stderr
