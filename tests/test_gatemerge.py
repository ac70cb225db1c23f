"""`llorch-harness gate merge`: per-pool gate results into one CP3 verdict (issue 9.1).

The command runs as a real subprocess on hand-written per-pool documents (valid,
failing, skipped, stale, other version, missing pool, malformed), and once on documents
the real pytest plugin wrote (`pytest --gate-json`), so the loader is checked against the
producer, not only against our idea of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from llorch_harness import __version__
from llorch_harness.gate import checklist as gate
from llorch_harness.gate import merge as gatemerge

HANG_GUARD_S = 120
REPO = Path(__file__).resolve().parents[1]
METAL_ITEM = ("Qwen Testing", "Qwen works on Metal (mac)")
CUDA_ITEM = ("Qwen Testing", "Qwen works on CUDA (workstation)")
BROADCAST = ("Qwen Testing", "No broadcasting errors")
REMOTE = ("Remote Operations", "SSH commands execute correctly")


# --------------------------------------------------------------------------- helpers


def harness_argv() -> list[str]:
    """`llorch-harness` once the lead wires `gate` in; the standalone module until then."""
    main_src = (REPO / "llorch_harness" / "cli" / "harness_main.py").read_text()
    if "gate_cmd" in main_src:
        return [str(Path(sys.executable).parent / "llorch-harness")]
    return [sys.executable, "-m", "llorch_harness.cli.gate_cmd"]


def harness(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    return subprocess.run([*harness_argv(), *map(str, args)], capture_output=True, text=True,
                          timeout=HANG_GUARD_S, cwd=cwd, env=env, stdin=subprocess.DEVNULL)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def pool_doc(pool: str, backend: str, *, status: dict[tuple[str, str], tuple[str, str]]
             | None = None, finished: datetime | None = None, version: str = __version__,
             lab: str = "real") -> dict[str, Any]:
    """A gate document as the plugin writes it for `pytest -m BACKEND --require-backend
    BACKEND`: every checklist item concerning BACKEND, passed unless `status` says otherwise."""
    status = status or {}
    finished = finished or datetime.now(UTC) - timedelta(minutes=5)
    items = []
    for gi in gate.checklist():
        if backend not in gi.backends:
            continue
        st, reason = status.get((gi.section, gi.item), ("pass", None))
        items.append({"section": gi.section, "item": gi.item, "backend": backend,
                      "scope": "backend" if len(gi.backends) == 1 else "pool",
                      "status": st, "reason": reason,
                      "nodeid": f"tests_hw/test_x.py::test_{len(items)}[{backend}]",
                      "duration": 0.1})
    return {
        "schema": 1, "checkpoint": "CP3", "harness_version": version, "pool": f"{pool}.host",
        "hostname": f"{pool}.host", "lab": lab, "gate_model": "qwen-0.5b",
        "backends_available": [backend, "cpu"], "backends_selected": [backend],
        "backends_required": [backend],
        "worker_binaries": {backend: {"path": f"/opt/llorch-{backend}-candled",
                                      "sha256": "ab" * 32}},
        "started_at": iso(finished - timedelta(minutes=10)), "finished_at": iso(finished),
        "exitstatus": 1 if any(v[0] == "fail" for v in status.values()) else 0,
        "items": items,
    }


def write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


@pytest.fixture
def two_pools(tmp_path: Path) -> tuple[Path, Path]:
    mac = write(tmp_path / "in" / "cp3-mac.json", pool_doc("mac", "metal"))
    ws = write(tmp_path / "in" / "cp3-workstation.json", pool_doc("workstation", "cuda"))
    return mac, ws


def merge_cli(tmp_path: Path, *results: str | Path, extra: tuple[str, ...] = ()
              ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None, str]:
    out = tmp_path / "reports"
    res = harness("gate", "merge", *results, "--html", out / "cp3.html", "--json",
                  out / "cp3.json", *extra, cwd=tmp_path)
    doc = json.loads((out / "cp3.json").read_text()) if (out / "cp3.json").exists() else None
    page = (out / "cp3.html").read_text() if (out / "cp3.html").exists() else ""
    return res, doc, page


# --------------------------------------------------------------------------- verdicts


def test_two_healthy_pools_pass_with_checklist_in_seed_order_and_report_links(
        tmp_path: Path, two_pools: tuple[Path, Path]) -> None:
    mac, ws = two_pools
    write(mac.with_suffix(".html"), "<html>mac report</html>")  # the .html twin is linked
    res, doc, page = merge_cli(tmp_path, f"mac={mac}", f"workstation={ws}",
                               extra=("--expect-pools", "mac,workstation"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "CP3 verdict: PASS" in res.stdout
    assert doc is not None and doc["verdict"] == "pass" and doc["problems"] == []
    assert [p["name"] for p in doc["pools"]] == ["mac", "workstation"]
    assert doc["pools"][0]["report"] == "../in/cp3-mac.html"
    assert doc["pools"][1]["report"] is None  # no twin, no link
    keys = [(r["section"], r["item"]) for r in doc["items"]]
    assert keys == [(g.section, g.item) for g in gate.checklist()]
    metal_row = doc["items"][keys.index(METAL_ITEM)]
    assert metal_row["pools"]["mac"] == {"status": "pass", "required": True, "reason": None}
    assert metal_row["pools"]["workstation"]["required"] is False
    bc = doc["items"][keys.index(BROADCAST)]["pools"]
    assert bc["mac"]["required"] and bc["workstation"]["required"]  # pool-level: every pool
    assert 'href="../in/cp3-mac.html"' in page and "verdict: PASS" in page
    positions = [page.index(f">{gi.item}<") for gi in gate.checklist()
                 if "<" not in gi.item and "&" not in gi.item and "`" not in gi.item]
    assert positions == sorted(positions)  # the checklist in the seed's order


def test_pool_name_comes_from_document_without_name_prefix(tmp_path: Path,
                                                          two_pools: tuple[Path, Path]) -> None:
    res, doc, _ = merge_cli(tmp_path, *two_pools,
                            extra=("--expect-pools", "mac.host,workstation.host"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert doc is not None and [p["name"] for p in doc["pools"]] == ["mac.host",
                                                                     "workstation.host"]


def test_failed_item_fails_naming_item_and_pool(tmp_path: Path) -> None:
    mac = write(tmp_path / "mac.json", pool_doc("mac", "metal"))
    ws = write(tmp_path / "ws.json", pool_doc("workstation", "cuda", status={
        BROADCAST: ("fail", "cannot broadcast [5, 5] to [1, 14, 5, 10]")}))
    res, doc, page = merge_cli(tmp_path, f"mac={mac}", f"workstation={ws}")
    assert res.returncode == 1
    line = "FAILED Qwen Testing / No broadcasting errors on pool workstation: cuda: " \
           "cannot broadcast [5, 5] to [1, 14, 5, 10]"
    assert line in res.stdout
    assert doc is not None and doc["verdict"] == "fail" and line in doc["problems"]
    assert "pytest on pool workstation exited 1" in doc["problems"]
    assert "cannot broadcast [5, 5] to [1, 14, 5, 10]" in page


def test_skipped_required_item_fails_and_says_why(tmp_path: Path) -> None:
    mac = write(tmp_path / "mac.json", pool_doc("mac", "metal", status={
        REMOTE: ("skip", "no pool hosts configured (--pool-host)")}))
    ws = write(tmp_path / "ws.json", pool_doc("workstation", "cuda"))
    res, doc, _ = merge_cli(tmp_path, f"mac={mac}", f"workstation={ws}")
    assert res.returncode == 1
    assert ("SKIP Remote Operations / SSH commands execute correctly on pool mac (required "
            "there; a skip is not a pass): metal: no pool hosts configured (--pool-host)"
            ) in res.stdout
    assert doc is not None and doc["verdict"] == "fail"


def test_metal_item_missing_on_the_metal_pool_is_not_run(tmp_path: Path) -> None:
    d = pool_doc("mac", "metal")
    d["items"] = [i for i in d["items"] if (i["section"], i["item"]) != METAL_ITEM]
    mac = write(tmp_path / "mac.json", d)
    ws = write(tmp_path / "ws.json", pool_doc("workstation", "cuda"))
    res, _, _ = merge_cli(tmp_path, f"mac={mac}", f"workstation={ws}")
    assert res.returncode == 1
    assert "NOT RUN Qwen Testing / Qwen works on Metal (mac) on pool mac" in res.stdout


def test_missing_expected_pool_and_missing_backend_fail(tmp_path: Path,
                                                        two_pools: tuple[Path, Path]) -> None:
    mac, _ = two_pools
    res, doc, page = merge_cli(tmp_path, f"mac={mac}",
                               extra=("--expect-pools", "mac,workstation"))
    assert res.returncode == 1
    assert "missing pool workstation: expected (--expect-pools) but no result was given" \
        in res.stdout
    assert "no pool ran the cuda backend (CP3 needs a cuda pool)" in res.stdout
    assert "NOT VERIFIED Qwen Testing / Qwen works on CUDA (workstation): no cuda pool" \
        in res.stdout
    assert doc is not None and doc["missing_pools"] == {
        "workstation": "expected (--expect-pools) but no result was given"}
    assert "MISSING" in page


def test_no_expect_pools_still_needs_a_metal_and_a_cuda_pool(tmp_path: Path) -> None:
    ws = write(tmp_path / "ws.json", pool_doc("workstation", "cuda"))
    res, _, _ = merge_cli(tmp_path, f"workstation={ws}")
    assert res.returncode == 1
    assert "no pool ran the metal backend" in res.stdout


def test_stale_result_fails_and_max_age_decides(tmp_path: Path) -> None:
    old = datetime.now(UTC) - timedelta(hours=30)
    mac = write(tmp_path / "mac.json", pool_doc("mac", "metal", finished=old))
    ws = write(tmp_path / "ws.json", pool_doc("workstation", "cuda"))
    res, doc, page = merge_cli(tmp_path, f"mac={mac}", f"workstation={ws}")
    assert res.returncode == 1
    assert "stale result from pool mac" in res.stdout
    assert "older than --max-age 24 h" in res.stdout
    assert doc is not None and "mac" in doc["stale_pools"] and "STALE" in page
    res2, _, _ = merge_cli(tmp_path, f"mac={mac}", f"workstation={ws}",
                           extra=("--max-age", "48"))
    assert res2.returncode == 0, res2.stdout


def test_result_from_the_future_is_stale(tmp_path: Path) -> None:
    future = datetime.now(UTC) + timedelta(hours=3)
    mac = write(tmp_path / "mac.json", pool_doc("mac", "metal", finished=future))
    ws = write(tmp_path / "ws.json", pool_doc("workstation", "cuda"))
    res, _, _ = merge_cli(tmp_path, f"mac={mac}", f"workstation={ws}")
    assert res.returncode == 1 and "in the future" in res.stdout


def test_other_harness_version_is_stale(tmp_path: Path) -> None:
    mac = write(tmp_path / "mac.json", pool_doc("mac", "metal", version="0.0.1"))
    ws = write(tmp_path / "ws.json", pool_doc("workstation", "cuda"))
    res, _, _ = merge_cli(tmp_path, f"mac={mac}", f"workstation={ws}")
    assert res.returncode == 1
    assert f"ran harness 0.0.1, this is {__version__}" in res.stdout


def test_embedded_lab_is_not_evidence(tmp_path: Path) -> None:
    mac = write(tmp_path / "mac.json", pool_doc("mac", "metal", lab="embedded"))
    ws = write(tmp_path / "ws.json", pool_doc("workstation", "cuda"))
    res, _, _ = merge_cli(tmp_path, f"mac={mac}", f"workstation={ws}")
    assert res.returncode == 1
    assert "pool mac ran the embedded lab: reference worker, not llorch-candled" in res.stdout


def test_html_escapes_reasons_and_refuses_script_links(tmp_path: Path) -> None:
    d = pool_doc("mac", "metal", status={BROADCAST: ("fail", "<script>alert(1)</script>")})
    d["report"] = "javascript:alert(1)"
    mac = write(tmp_path / "mac.json", d)
    ws = write(tmp_path / "ws.json", pool_doc("workstation", "cuda"))
    res, _, page = merge_cli(tmp_path, f"mac={mac}", f"workstation={ws}")
    assert res.returncode == 1
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "javascript:" not in page


def test_report_option_links_given_path(tmp_path: Path, two_pools: tuple[Path, Path]) -> None:
    mac, ws = two_pools
    report = write(tmp_path / "elsewhere" / "mac report.html", "x")
    res, doc, page = merge_cli(tmp_path, f"mac={mac}", f"workstation={ws}",
                               extra=("--report", f"mac={report}"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert doc is not None and doc["pools"][0]["report"] == "../elsewhere/mac%20report.html"
    bad = harness("gate", "merge", f"mac={mac}", "--report", "nope=x.html", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "no result for pool 'nope'" in bad.stderr


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("content", "expected"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"checkpoint": "CP2"}), "'checkpoint' is 'CP2'"),
    ("DOC-no-items", "'items' missing or not a list"),
    ("DOC-bad-status", "is not one of"),
    ("DOC-bad-time", "'finished_at' is not an ISO 8601 time"),
    ("DOC-bad-lab", "'lab' is 'virtual'"),
], ids=["not-json", "not-object", "wrong-checkpoint", "no-items", "bad-status", "bad-time",
        "bad-lab"])
def test_malformed_result_is_one_line_naming_the_file_exit_2(
        tmp_path: Path, two_pools: tuple[Path, Path], content: str, expected: str) -> None:
    doc = pool_doc("mac", "metal")
    if content == "DOC-no-items":
        del doc["items"]
    elif content == "DOC-bad-status":
        doc["items"][0]["status"] = "great"
    elif content == "DOC-bad-time":
        doc["finished_at"] = "yesterday"
    elif content == "DOC-bad-lab":
        doc["lab"] = "virtual"
    text = json.dumps(doc) if content.startswith("DOC-") else content
    bad = write(tmp_path / "bad.json", text)
    res, doc_out, _ = merge_cli(tmp_path, bad, two_pools[1])
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: gate result ")
    assert str(bad) in res.stderr and expected in res.stderr
    assert "Traceback" not in res.stderr and doc_out is None


def test_unreadable_and_duplicate_inputs_exit_2(tmp_path: Path,
                                                two_pools: tuple[Path, Path]) -> None:
    missing = tmp_path / "nope.json"
    res = harness("gate", "merge", missing, cwd=tmp_path)
    assert res.returncode == 2 and f"gate result {missing}: cannot read" in res.stderr
    mac, _ = two_pools
    dup = harness("gate", "merge", f"a={mac}", f"a={mac}", cwd=tmp_path)
    assert dup.returncode == 2 and "two gate results for pool a" in dup.stderr
    age = harness("gate", "merge", mac, "--max-age", "-1", cwd=tmp_path)
    assert age.returncode == 2 and "positive number of hours" in age.stderr


def test_status_aliases_of_the_brief_are_accepted(tmp_path: Path) -> None:
    """`passed/failed/skipped` (the brief's spelling) mean what `pass/fail/skip` mean; `error`
    (could not check, issue 18) stays an error: not a pass, and not a failure of the code."""
    doc = pool_doc("mac", "metal")
    for i in doc["items"]:
        i["status"] = "passed"
    doc["items"][0]["status"] = "error"
    doc["items"][1]["status"] = "failed"
    res = gatemerge.parse_result(doc, Path("x.json"))
    assert {o.status for o in res.outcomes} == {"pass", "fail", "error"}


# --------------------------------------------------------------------------- real producer

def run_plugin(tmp_path: Path, backend: str, *, fail_item: str | None = None) -> Path:
    """`pytest -m BACKEND --require-backend BACKEND --gate-json` with the real plugin, on
    trivial tests carrying every gate item of that backend (a fake binary makes the lab real).
    """
    work = tmp_path / f"plugin-{backend}"
    bins = work / "bin"
    bins.mkdir(parents=True)
    fake = bins / f"llorch-{backend}-candled"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    body = ["import pytest", ""]
    for n, g in enumerate(g for g in gate.checklist() if backend in g.backends):
        body += [f"@pytest.mark.gate({g.section!r}, {g.item!r})", f"@pytest.mark.{backend}",
                 f"def test_{n}():", f"    assert {g.item!r} != {fail_item!r}", ""]
    (work / "test_gate_items.py").write_text("\n".join(body))
    out = work / f"cp3-{backend}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", backend,
         "--require-backend", backend, "--backend-available", backend,
         "--llorch-bin-dir", str(bins), "--gate-json", str(out), "--rootdir", str(work),
         "--pool-root", str(work / "pool"), "-c", os.devnull, str(work)],
        capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=work, env=env,
        stdin=subprocess.DEVNULL)
    assert out.exists(), res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_merge_reads_what_the_real_plugin_writes(tmp_path: Path) -> None:
    mac = run_plugin(tmp_path, "metal")
    ws = run_plugin(tmp_path, "cuda", fail_item="No broadcasting errors")
    loaded = gatemerge.load_result(mac, name="mac")
    assert loaded.roles == ("metal",) and loaded.lab == "real"
    res, doc, _ = merge_cli(tmp_path, f"mac={mac}", f"workstation={ws}",
                            extra=("--expect-pools", "mac,workstation"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert doc is not None
    fails = [p for p in doc["problems"] if p.startswith("FAILED")]
    assert len(fails) == 1 and "No broadcasting errors on pool workstation" in fails[0]
    ok_ws = run_plugin(tmp_path / "again", "cuda")
    res2, _, _ = merge_cli(tmp_path, f"mac={mac}", f"workstation={ok_ws}",
                           extra=("--expect-pools", "mac,workstation"))
    assert res2.returncode == 0, res2.stdout + res2.stderr


# --------------------------------------------------------------------------- issue 20 #15


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"])
@pytest.mark.parametrize("key", ["finished_at", "started_at"])
def test_time_whose_utc_form_overflows_is_one_line(tmp_path: Path, key: str, value: str) -> None:
    """`finished_at` `0001-01-01T00:00:00+23:59` parsed, then its age overflowed: traceback."""
    doc = pool_doc("mac", "metal")
    doc[key] = value
    path = write(tmp_path / "mac.json", doc)
    res, _, _ = merge_cli(tmp_path, f"mac={path}")
    err = res.stderr.strip()
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(err.splitlines()) == 1 and key in err, err
    assert "outside the years 1..9999" in err and str(path) in err, err


def test_fifo_as_result_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "mac.json"
    os.mkfifo(fifo)
    res, _, _ = merge_cli(tmp_path, f"mac={fifo}")
    err = res.stderr.strip()
    assert res.returncode == 2 and "FIFO" in err and "not a regular file" in err, err


_WRITE_CAPPED = r"""
import resource, signal, sys
from llorch_harness.errors import HarnessError
from llorch_harness.gate.checklist import write_gate_json

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
try:
    write_gate_json(sys.argv[1], "x" * (1 << 20))
    print("WRITTEN")
except HarnessError as exc:
    print("ERROR", exc.one_line())
"""


def test_gate_json_is_written_atomically(tmp_path: Path) -> None:
    """`--gate-json` over an earlier result, in a process whose writes stop at 64 KiB (a full
    disk, for that process): the earlier file stays whole, no temp file is left, and the
    failure is one line. A write in place would have left 64 KiB of the new text."""
    target = tmp_path / "gate.json"
    old = gate.dumps({"checkpoint": "CP3", "items": []})
    target.write_text(old)
    r = subprocess.run([sys.executable, "-c", _WRITE_CAPPED, str(target)], capture_output=True,
                       text=True, timeout=HANG_GUARD_S, check=False, cwd=REPO,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERROR cannot write gate JSON") and str(target) in r.stdout
    assert len(r.stdout.strip().splitlines()) == 1, r.stdout
    assert target.read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate.json"]
    gate.write_gate_json(target, "{}\n")  # and without the limit it is replaced whole
    assert target.read_text() == "{}\n"
