"""`llorch-harness gate merge` with performance records: the pools' gate JSONs carry their
records, `--perf` adds a store's or an export's history, the merged page shows every pool's
figures and trends, and a bad source writes nothing."""

from __future__ import annotations

import json

import pytest

from llorch_harness.perf.figures import Figure
from llorch_harness.perf.render import panels_for_run, summary_json
from llorch_harness.perf.session import record_and_check
from llorch_harness.perf.store import ResultsStore
from tests.test_gatemerge import harness, pool_doc


def _record(db, pool: str, backend: str, key: str, per_token: float) -> list[dict]:
    fp = {"pool": f"{pool}.host", "lab": "real", "model": "qwen-0.5b", "backend": backend,
          "device": f"{backend} dev", "worker_binary_sha256": "ab" * 32, "protocol": "perf/1"}
    five = (0.98, 0.99, 1.0, 1.01, 1.02)  # samples for the rank test
    figs = {"load_s": Figure("load_s", 2.0, 0.1, 5, samples=tuple(2.0 * k for k in five)),
            "s_per_token": Figure("s_per_token", per_token, 0.0001, 5,
                                  samples=tuple(per_token * k for k in five))}
    record_and_check(db, key, fp, figs)
    with ResultsStore.open(db) as store:
        store.set_gate_verdict(key, "pass")
        return [summary_json(p) for p in panels_for_run(store, key)]


@pytest.fixture
def pools(tmp_path):
    """mac (metal) and workstation (cuda) gate JSONs, each with this run's record; the
    workstation's store also holds four earlier runs."""
    out = {}
    for pool, backend, runs in (("mac", "metal", [0.02]), ("ws", "cuda", [0.01] * 4 + [0.03])):
        db = tmp_path / f"{pool}.sqlite"
        perf = []
        for i, v in enumerate(runs):
            perf = _record(db, pool, backend, f"{pool}-{i}", v)
        doc = pool_doc(pool, backend)
        doc["performance"] = perf  # what the plugin writes for the run's last record
        (tmp_path / f"{pool}.json").write_text(json.dumps(doc))
        out[pool] = db
    return out


def test_merged_report_shows_every_pools_figures_and_trends(tmp_path, pools):
    res = harness("gate", "merge", "mac.json", "ws.json", "--html", "m.html", "--json", "m.json",
                  cwd=tmp_path)
    assert res.returncode in (0, 1), res.stderr
    page = (tmp_path / "m.html").read_text()
    assert 'id="llorch-perf"' in page and page.count('class="llorch-perf-panel"') == 2
    assert "qwen-0.5b on metal, pool mac.host" in page and "on cuda, pool ws.host" in page
    assert "REGRESSION" in page  # the workstation's last run: 3x its baseline
    doc = json.loads((tmp_path / "m.json").read_text())
    assert sorted(r["pool"] for r in doc["performance"]) == ["mac.host", "ws.host"]
    ws = next(r for r in doc["performance"] if r["pool"] == "ws.host")
    assert ws["status"] == "fail" and len(ws["trend"]) == 5


def test_perf_sources_add_history_and_exports_work_too(tmp_path, pools):
    exp = tmp_path / "mac-export.json"
    hist = harness("history", "--results-db", pools["mac"], "--export", exp, cwd=tmp_path)
    assert hist.returncode == 0, hist.stderr
    res = harness("gate", "merge", "mac.json", "ws.json", "--perf", pools["ws"], "--perf", exp,
                  "--json", "m.json", cwd=tmp_path)
    assert res.returncode in (0, 1), res.stderr
    doc = json.loads((tmp_path / "m.json").read_text())
    assert len(doc["performance"]) == 2  # a source replaces the gate JSON's panel
    assert {r["pool"] for r in doc["performance"]} == {"mac.host", "ws.host"}


def test_a_bad_perf_source_is_one_line_and_writes_nothing(tmp_path, pools):
    (tmp_path / "bad.json").write_text("{}")
    res = harness("gate", "merge", "mac.json", "ws.json", "--perf", "bad.json",
                  "--html", "m.html", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("error: performance records bad.json")
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.html").exists()


def test_merge_without_performance_has_no_section(tmp_path):
    (tmp_path / "mac.json").write_text(json.dumps(pool_doc("mac", "metal")))
    res = harness("gate", "merge", "mac.json", "--html", "m.html", "--json", "m.json",
                  cwd=tmp_path)
    assert res.returncode in (0, 1), res.stderr
    assert "llorch-perf" not in (tmp_path / "m.html").read_text()
    assert "performance" not in json.loads((tmp_path / "m.json").read_text())
