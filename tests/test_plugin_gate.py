"""The embedded gate end to end, in subprocesses: a healthy reference worker passes (serial
and -n 2, same verdict, one download), the reports hold the checklist and the lab banner and
never a secret, and each fault switch of the reference worker makes the gate fail."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS_HW = REPO / "tests_hw"
CANARY = "hf_CANARYgateTOKENabcdefghijklmnop0123"
RUN_TIMEOUT_S = 900


def run_gate(tmp: Path, *args: str, faults: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLORCH_", "PYTEST_"))}
    env["HF_TOKEN"] = CANARY
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # no llorch binaries
    # these runs are about the gate, not the host: a busy test machine must not make the
    # performance item "could not check" (tests/test_perf_busy.py covers the busy host)
    env["LLORCH_PERF_BUSY_SHARE"] = "1"
    if faults:
        env["LLORCH_REF_FAULTS"] = faults
    argv = [sys.executable, "-m", "pytest", str(TESTS_HW), "-m", "cpu", "-p", "no:cacheprovider",
            "--pool-root", str(tmp / "pool"), "--basetemp", str(tmp / "bt"), "-rA", *args]
    (tmp / "pool").mkdir(parents=True, exist_ok=True)
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp,
                          timeout=RUN_TIMEOUT_S, check=False)


def _decoded_extras(html: str) -> str:
    """pytest-html stores extras as base64 data URIs: a secret could hide there."""
    out = []
    for chunk in re.findall(r"base64,([A-Za-z0-9+/=]+)", html):
        try:
            out.append(base64.b64decode(chunk).decode("utf-8", "replace"))
        except ValueError:
            continue
    return "\n".join(out)


def _item_statuses(doc: dict) -> dict[str, str]:
    return {f"{r['section']} / {r['item']}": r["status"] for r in doc["checklist"]}


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> dict:
    """One serial and one -n 2 run of the embedded cpu gate, shared by several assertions."""
    out = {}
    for name, extra in (("serial", []), ("xdist", ["-n", "2"])):
        tmp = tmp_path_factory.mktemp(name)
        res = run_gate(tmp, "--html", str(tmp / "r.html"), "--self-contained-html",
                       "--junitxml", str(tmp / "j.xml"), "--gate-json", str(tmp / "g.json"),
                       *extra)
        out[name] = {"res": res, "tmp": tmp}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("run", ["serial", "xdist"])
def test_healthy_embedded_gate_passes(healthy, run):
    res = healthy[run]["res"]
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    doc = json.loads((healthy[run]["tmp"] / "g.json").read_text())
    assert doc["lab"] == "embedded" and doc["checkpoint"] == "CP3"
    assert doc["gate_model"] == "tiny-qwen" and doc["backends_available"] == ["cpu"]
    for key in ("harness_version", "pool", "started_at", "finished_at", "worker_binaries"):
        assert doc[key], key
    statuses = _item_statuses(doc)
    assert statuses["Qwen Testing / No broadcasting errors"] == "pass"
    assert statuses["Worker Management / Cleanup works correctly"] == "pass"
    assert statuses["Code Quality / `cargo fmt --all` clean"] == "skip"
    assert "fail" not in statuses.values()


@pytest.mark.slow
def test_xdist_gives_the_same_verdict_and_downloads_once(healthy):
    docs = {n: json.loads((healthy[n]["tmp"] / "g.json").read_text()) for n in healthy}
    assert _item_statuses(docs["serial"]) == _item_statuses(docs["xdist"])
    assert docs["serial"]["verdict"] == docs["xdist"]["verdict"]
    # every worker life on the one device came from one xdist worker (its device group):
    # pytest 9 drops xdist 3.8's own group suffix, the plugin schedules the groups itself
    lives = docs["xdist"]["memory"]
    assert lives and len({r["xdist_worker"] for r in lives}) == 1, lives
    log = healthy["xdist"]["tmp"] / "pool" / ".runtime" / "gate" / "downloads.jsonl"
    entries = [json.loads(ln) for ln in log.read_text().splitlines()]
    fetched = [e for e in entries if not e["already_downloaded"]]
    assert len(fetched) == 1, entries
    assert fetched[0]["hub_weight_bytes"] > 0


@pytest.mark.slow
def test_reports_hold_checklist_and_banner(healthy):
    html = (healthy["serial"]["tmp"] / "r.html").read_text()
    assert "EMBEDDED LAB: reference worker, not llorch-candled" in html
    assert "llorch-cp3-checklist" in html and "CP3 gate checklist" in html
    assert "CP3 gate — pool" in html
    junit = (healthy["serial"]["tmp"] / "j.xml").read_text()
    assert '<property name="gate_section" value="Worker Spawning"' in junit
    assert "CP3 gate checklist" in healthy["serial"]["res"].stdout


@pytest.mark.slow
@pytest.mark.parametrize("run", ["serial", "xdist"])
def test_canary_token_never_leaks(healthy, run):
    tmp, res = healthy[run]["tmp"], healthy[run]["res"]
    html = (tmp / "r.html").read_text()
    places = {
        "html": html, "html extras": _decoded_extras(html),
        "junit": (tmp / "j.xml").read_text(), "gate json": (tmp / "g.json").read_text(),
        "terminal": res.stdout + res.stderr,
        "catalog": (tmp / "pool" / ".test-models" / "catalog.json").read_text(),
    }
    for log in (tmp / "pool" / ".runtime" / "workers").glob("*.log*"):
        places[f"log {log.name}"] = log.read_text(errors="replace")
    leaked = [name for name, text in places.items() if CANARY in text]
    assert not leaked


FAULTS = [
    ("broadcast", "interleaved or no_error_patterns", r"cannot broadcast|broadcast_add"),
    ("qwen_cache_bug", "greedy_repeat or no_error_patterns",
     r"the KV cache is never cleared for Qwen: every prompt of two or more tokens fails"),
    ("drift", "greedy_repeat", r"request 2 identical to request 1"),
    ("panic_after_first", "greedy_repeat", r"greedy request 2 of 3"),
    ("ignore_signals", "worker_stop_stops", r"graceful stop"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "select", "diagnosis"), FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_fails_the_gate(tmp_path, fault, select, diagnosis):
    res = run_gate(tmp_path, "-k", select, faults=fault)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-6000:]
    assert re.search(diagnosis, out), out[-6000:]
    assert "CP3 gate verdict: FAIL" in out


@pytest.mark.slow
def test_never_ready_fails_with_ready_timeout(tmp_path):
    res = run_gate(tmp_path, "-k", "qwen_works", "--ready-timeout", "3", faults="never_ready")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-6000:]
    assert re.search(r"ready", out) and "CP3 gate verdict: FAIL" in out, out[-6000:]


QWEN_DIAGNOSIS = ("the KV cache is never cleared for Qwen: every prompt of two or more tokens "
                  "fails once the cache holds anything")
ALL_BACKENDS = ("cpu", "cuda", "metal")


def run_real_gate(tmp: Path, faults: str, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The gate against the reference worker installed under all three real binary names
    (cuda and metal play their binaries: device flag, warm-up), every backend selected."""
    from tests.test_gaterun import install_worker

    bin_dir = tmp / "bin"
    for backend in ALL_BACKENDS:
        install_worker(bin_dir, backend)
    res = run_gate(tmp, "-m", "cpu or cuda or metal", "--llorch-bin-dir", str(bin_dir),
                   "--backend-available", "cuda", "--backend-available", "metal",
                   "--gate-model", "tiny-qwen", "--gate-json", str(tmp / "g.json"), *args,
                   faults=faults)
    doc = json.loads((tmp / "g.json").read_text()) if (tmp / "g.json").is_file() else {}
    return res, doc


def _failed(doc: dict, test_name: str) -> dict[str, str]:
    """backend -> failure reason of each failed instance of a test in the gate JSON."""
    return {r["backend"]: r["reason"] or "" for r in doc.get("items", [])
            if test_name in (r.get("nodeid") or "") and r.get("status") == "fail"}


@pytest.mark.slow
def test_qwen_cache_bug_is_diagnosed_on_every_backend(tmp_path):
    """The real CP3 bug fails the gate with the diagnosis in words on cpu, cuda and metal;
    on cuda and metal (warm-up filled the cache) even the first request fails."""
    res, doc = run_real_gate(tmp_path, "qwen_cache_bug", "-k", "qwen_works or greedy_repeat")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-6000:]
    assert "REAL LAB" in out and "CP3 gate verdict: FAIL" in out
    assert QWEN_DIAGNOSIS in out
    assert set(_failed(doc, "test_greedy_repeat_identical")) == set(ALL_BACKENDS), out[-6000:]
    statuses = _item_statuses(doc)
    assert statuses["Qwen Testing / No broadcasting errors"] == "fail"
    assert statuses["Qwen Testing / Qwen works on CUDA (workstation)"] == "fail"
    assert statuses["Qwen Testing / Qwen works on Metal (mac)"] == "fail"
    assert statuses["Qwen Testing / Qwen works on CPU (this pool)"] == "pass"  # 1st request


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["decode_positions", "swapped_layers"])
def test_wrong_but_deterministic_worker_fails_the_reference_item(tmp_path, fault):
    """Deterministic but wrong output passes every self-comparison and fails the reference
    item on every backend name, with position, expected and got."""
    res, doc = run_real_gate(tmp_path, fault,
                             "-k", "greedy_repeat or output_agrees or qwen_works")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-6000:]
    statuses = _item_statuses(doc)
    assert statuses["Qwen Testing / Output agrees with the reference implementation"] == "fail"
    assert statuses["Qwen Testing / No broadcasting errors"] == "pass"  # repeats agree
    assert set(_failed(doc, "test_output_agrees_with_reference")) == set(ALL_BACKENDS), \
        out[-6000:]
    assert "outside the reference's margin: expected" in out and "(id " in out
    assert "text so far" in out


@pytest.mark.slow
def test_reference_off_is_explicit_in_header_and_verdict(tmp_path):
    res = run_gate(tmp_path, "-k", "output_agrees or qwen_works", "--reference", "off",
                   "--gate-json", str(tmp_path / "g.json"))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert out.count("REFERENCE CHECK OFF") >= 2, out[-4000:]  # header and summary
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["verdict"] != "pass"
    statuses = _item_statuses(doc)
    assert statuses["Qwen Testing / Output agrees with the reference implementation"] == "skip"
