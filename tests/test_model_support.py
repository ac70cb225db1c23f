"""`gate merge --model-support PATH`: CP4's MODEL_SUPPORT.md written from the merged results.

Per-pool gate documents as the gate writes them with `--gate-models` (a mac pool playing
metal, a workstation pool playing cuda, four models; `model_runs` and model-parametrized
items) go through the real CLI as a subprocess; the assertions are what a lab reads in the
Markdown, the merged page and the merged JSON. Changing a figure or a name in the input
changes the output: nothing about the models is typed by the harness.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llorch_harness.gate import merge as gatemerge
from tests.test_gatemerge import BROADCAST, pool_doc, run_plugin, write

HANG_GUARD_S = 120
GIB = 1024 ** 3
# What the gate reports about each model (test data: the harness types none of it).
MODELS: dict[str, dict[str, Any]] = {
    "qwen-0.5b": {"name": "Qwen2.5 0.5B Instruct", "architecture": "qwen2",
                  "repo": "Qwen/Qwen2.5-0.5B-Instruct", "size_bytes": 988_097_824},
    "tinyllama": {"name": "TinyLlama 1.1B Chat", "architecture": "llama",
                  "repo": "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "size_bytes": 2_200_119_864},
    "phi3": {"name": "Phi-3 Mini 4K Instruct", "architecture": "phi3",
             "repo": "microsoft/Phi-3-mini-4k-instruct", "size_bytes": 7_642_181_880},
    "mistral": {"name": "Mistral 7B Instruct v0.2", "architecture": "mistral",
                "repo": "mistralai/Mistral-7B-Instruct-v0.2", "size_bytes": 14_483_464_192},
}
MODEL_ITEMS = (BROADCAST, ("Qwen Testing", "Inference completes successfully"))


def model_run(model: str, backend: str, **over: Any) -> dict[str, Any]:
    run = {"model": model, "backend": backend, "status": "pass", "failed_items": [],
           "reason": None, **MODELS.get(model, {"name": None, "architecture": None,
                                                  "repo": None, "size_bytes": None}),
           "revision": f"rev-{model}", "startup_s": 8.1,
           "memory_at_ready": {"bytes": 3 * GIB, "kind": "vram"},
           "tokens_per_sec": 41.2, "worker_lives": 2, "tests": 14}
    run.update(over)
    return run


def model_doc(pool: str, backend: str, *, models: tuple[str, ...] = tuple(MODELS),
              lab: str = "real", runs: dict[str, dict[str, Any]] | None = None,
              failing: dict[str, str] | None = None) -> dict[str, Any]:
    """A pool's gate document with `--gate-models MODELS`: the CP3 items, one test per model
    per model item, and one model run per model. `runs` overrides a model's run fields;
    `failing` model -> reason fails its broadcasting test (and its run)."""
    failing = failing or {}
    doc = pool_doc(pool, backend, lab=lab)
    doc["gate_models"] = list(models)
    for model in models:
        for section, item in MODEL_ITEMS:
            bad = model in failing and (section, item) == BROADCAST
            doc["items"].append({
                "section": section, "item": item, "backend": backend, "model": model,
                "status": "fail" if bad else "pass", "reason": failing.get(model) if bad
                else None, "nodeid": f"tests_hw/test_models.py::test_x[{model}-{backend}]"})
    doc["model_runs"] = []
    for model in models:
        over = dict((runs or {}).get(model, {}))
        if model in failing:
            over.setdefault("status", "fail")
            over.setdefault("failed_items", [BROADCAST[1]])
            over.setdefault("reason", failing[model])
        doc["model_runs"].append(model_run(model, backend, **over))
    if failing:
        doc["exitstatus"] = 1
    return doc


def harness(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    return subprocess.run([sys.executable, "-m", "llorch_harness.cli.harness_main",
                           *map(str, args)], capture_output=True, text=True,
                          timeout=HANG_GUARD_S, cwd=cwd, env=env, stdin=subprocess.DEVNULL)


def merge_cli(tmp: Path, mac: dict[str, Any], ws: dict[str, Any], *extra: str | Path,
              support: Path | None = None) -> tuple[subprocess.CompletedProcess[str], str,
                                                    str, dict[str, Any] | None]:
    """`gate merge mac=... workstation=... --model-support OUT.md --html --json`."""
    out = tmp / "reports"
    support = support or out / "MODEL_SUPPORT.md"
    res = harness("gate", "merge", f"mac={write(tmp / 'in' / 'cp3-mac.json', mac)}",
                  f"workstation={write(tmp / 'in' / 'cp3-workstation.json', ws)}",
                  "--model-support", support, "--html", out / "cp3.html",
                  "--json", out / "cp3.json", *extra, cwd=tmp)
    md = support.read_text() if support.is_file() else ""
    page = (out / "cp3.html").read_text() if (out / "cp3.html").exists() else ""
    doc = json.loads((out / "cp3.json").read_text()) if (out / "cp3.json").exists() else None
    return res, md, page, doc


def table_row(md: str, model_name: str) -> list[str]:
    """The matrix row of one model, split into its cells."""
    matrix = md.split("## Tested models", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in matrix.splitlines() if ln.startswith(f"| {model_name}")]
    assert len(rows) == 1, matrix
    return [c.strip() for c in rows[0].strip("|").split(" | ")]


def header(md: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith("| Model | Architecture"))
    return [c.strip() for c in line.strip("|").split(" | ")]


# --------------------------------------------------------------------------- the matrix


def test_model_support_md_from_two_pools(tmp_path: Path) -> None:
    res, md, page, doc = merge_cli(tmp_path, model_doc("mac", "metal"),
                                   model_doc("workstation", "cuda"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"model support: {tmp_path / 'reports' / 'MODEL_SUPPORT.md'}" in res.stdout
    assert md.startswith("# Model Support Matrix\n")
    assert header(md) == ["Model", "Architecture", "Size", "Metal (mac)", "CUDA (workstation)"]
    rows = [table_row(md, f"{m['name']} ({k})") for k, m in MODELS.items()]
    assert [r[1] for r in rows] == ["qwen2", "llama", "phi3", "mistral"]
    assert [r[2] for r in rows] == ["942.3 MiB", "2.05 GiB",
                                    "7.12 GiB", "13.49 GiB"]
    assert all(r[3:] == ["✅ pass", "✅ pass"] for r in rows)
    order = [md.index(f"| {m['name']} (") for m in MODELS.values()]
    assert order == sorted(order)  # --gate-models order
    assert "**Merged CP3 verdict: ✅ PASS**" in md
    assert "**Runs:** 8 of 8 (model, backend) runs passed." in md
    assert "| TinyLlama 1.1B Chat (tinyllama) | CUDA (workstation) | pass | 8.10 s | " \
           "3.00 GiB VRAM | 41.2 tok/s | 2 | 14 |" in md
    assert "WARNING" not in md
    # where it came from: each result with its pool, lab, finish time and binary hash
    assert f"`{tmp_path / 'in' / 'cp3-mac.json'}`" in md
    assert "pool **workstation**" in md and "real lab" in md
    assert f"cuda worker sha256 `{'ab' * 32}`" in md
    assert "`TinyLlama/TinyLlama-1.1B-Chat-v1.0`, revision `rev-tinyllama` (mac)" in md
    # the merged page and JSON carry the same matrix
    assert '<table id="model-support">' in page and "<th>CUDA (workstation)</th>" in page
    assert doc is not None
    ms = doc["model_support"]
    assert [c["label"] for c in ms["columns"]] == ["Metal (mac)", "CUDA (workstation)"]
    assert [m["model"] for m in ms["models"]] == list(MODELS)
    cell = ms["models"][1]["cells"][1]
    assert cell == {"pool": "workstation", "backend": "cuda", "status": "pass", "reason": None,
                    "failed_items": [], "startup_s": 8.1,
                    "memory_at_ready": {"bytes": 3 * GIB, "kind": "vram"},
                    "tokens_per_sec": 41.2, "worker_lives": 2, "tests": 14}
    assert ms["runs"] == {"total": 8, "passed": 8}


def test_nothing_is_typed_by_hand_figures_and_names_follow_the_input(tmp_path: Path) -> None:
    ws = model_doc("workstation", "cuda", models=("qwen-0.5b", "tinyllama", "mistral"), runs={
        "tinyllama": {"startup_s": 12.345, "name": "Renamed Llama",
                      "memory_at_ready": {"bytes": 700 * 1024 ** 2, "kind": "rss"},
                      "tokens_per_sec": None}})
    ws["model_runs"].append(model_run("gemma-2b", "cuda", name="Some Other Model",
                                      architecture="gemma", size_bytes=5 * GIB))
    mac = model_doc("mac", "metal", runs={"tinyllama": {"startup_s": 3.0,
                                                        "name": "Renamed Llama"}})
    res, md, _, _ = merge_cli(tmp_path, mac, ws)
    assert "| Renamed Llama (tinyllama) | CUDA (workstation) | pass | 12.3 s | 700.0 MiB RSS | " \
           "— (not reported) | 2 | 14 |" in md
    assert "| Renamed Llama (tinyllama) | Metal (mac) | pass | 3.00 s |" in md
    assert "TinyLlama 1.1B Chat" not in md
    phi = table_row(md, "Phi-3 Mini 4K Instruct (phi3)")
    assert phi[3:] == ["✅ pass", "⛔ not run"]  # absent on the cuda pool: a cell, no gap
    assert "**Phi-3 Mini 4K Instruct (phi3)** on CUDA (workstation): not run; reason: not " \
           "in pool workstation's --gate-models" in md
    other = table_row(md, "Some Other Model (gemma-2b)")  # in no --gate-models: last
    assert other[1:] == ["gemma", "5.00 GiB", "⛔ not run", "✅ pass"]
    assert md.index("(mistral)") < md.index("(gemma-2b)")
    assert "**Runs:** 8 of 10 (model, backend) runs passed." in md
    assert res.returncode == 0, res.stdout  # a model a pool was not asked for: no failure


def test_failed_tinyllama_on_cuda_fails_the_verdict_and_shows_the_item(tmp_path: Path) -> None:
    reason = "cannot broadcast [5, 5] to [1, 14, 5, 10] | <b>shape</b>"
    ws = model_doc("workstation", "cuda", failing={"tinyllama": reason})
    res, md, page, doc = merge_cli(tmp_path, model_doc("mac", "metal"), ws)
    assert res.returncode == 1, res.stdout + res.stderr
    assert doc is not None and doc["verdict"] == "fail"
    failed = [p for p in doc["problems"] if "No broadcasting errors" in p]
    assert failed == ["FAILED Qwen Testing / No broadcasting errors on pool workstation: "
                      f"cuda: {reason}"]  # once, as the failed item: not counted twice
    assert not any(p.startswith("MODEL ") for p in doc["problems"])
    row = table_row(md, "TinyLlama 1.1B Chat (tinyllama)")
    assert row[3:] == ["✅ pass", "❌ fail: No broadcasting errors"]
    assert "**Merged CP3 verdict: ❌ FAIL**" in md
    assert "**Runs:** 7 of 8 (model, backend) runs passed." in md
    assert ("- ❌ **TinyLlama 1.1B Chat (tinyllama)** on CUDA (workstation): fail; failed items:"
            " No broadcasting errors; reason: cannot broadcast \\[5, 5\\] to \\[1, 14, 5, 10\\] "
            "\\| \\<b\\>shape\\</b\\>") in md  # escaped: the table and page stay whole
    assert "<b>" not in md and "<b>shape" not in page and "&lt;b&gt;shape" in page
    assert "❌ fail: No broadcasting errors</span>" in page
    cell = doc["model_support"]["models"][1]["cells"][1]
    assert cell["status"] == "fail" and cell["failed_items"] == ["No broadcasting errors"]


def test_a_failed_model_run_fails_even_when_no_test_shows_it(tmp_path: Path) -> None:
    """A document at odds with itself (run failed, its tests passed) cannot pass."""
    ws = model_doc("workstation", "cuda", runs={"phi3": {
        "status": "fail", "failed_items": ["Inference completes successfully"],
        "reason": "stream ended early"}})
    res, md, _, doc = merge_cli(tmp_path, model_doc("mac", "metal"), ws)
    assert res.returncode == 1
    assert doc is not None and doc["problems"] == [
        "MODEL FAILED phi3 on cuda on pool workstation, though no test of it failed there: "
        "Inference completes successfully"]
    assert table_row(md, "Phi-3 Mini 4K Instruct (phi3)")[4] == \
        "❌ fail: Inference completes successfully"


def test_a_model_run_with_no_test_is_a_not_run_cell_with_dashes(tmp_path: Path) -> None:
    ws = model_doc("workstation", "cuda", runs={"mistral": {
        "status": "not run", "reason": "no test of this model ran on this backend (deselected)",
        "startup_s": None, "memory_at_ready": None, "tokens_per_sec": None, "tests": 0}})
    ws["items"] = [i for i in ws["items"] if i.get("model") != "mistral"]
    res, md, _, doc = merge_cli(tmp_path, model_doc("mac", "metal"), ws)
    assert res.returncode == 0, res.stdout  # the items judge the verdict; the matrix shows it
    assert table_row(md, "Mistral 7B Instruct v0.2 (mistral)")[4] == "⛔ not run"
    assert "| Mistral 7B Instruct v0.2 (mistral) | CUDA (workstation) | not run | — (not run) " \
           "| — (not run) | — (not run) | 2 | 0 |" in md
    assert "**Runs:** 7 of 8 (model, backend) runs passed." in md
    assert doc is not None and doc["model_support"]["runs"] == {"total": 8, "passed": 7}


def test_embedded_lab_result_is_flagged_prominently(tmp_path: Path) -> None:
    res, md, page, doc = merge_cli(tmp_path, model_doc("mac", "metal", lab="embedded"),
                                   model_doc("workstation", "cuda"))
    assert res.returncode == 1
    first = md.splitlines()[2]  # right under the title
    assert first.startswith("> ⚠️ **WARNING: the result of pool(s) mac came from the embedded "
                            "lab (reference worker, not llorch-candled)"), md[:500]
    assert "Metal (mac) ⚠️ embedded lab" in header(md)
    assert "came from the embedded lab" in page
    assert doc is not None and doc["model_support"]["embedded_pools"] == ["mac"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("runs", "expected"), [
    ({"x": 1}, "'model_runs' must be a list of objects"),
    ([{"model": "tinyllama", "backend": "cuda", "status": "great"}], "model_runs[0].status"),
    ([{"model": "tinyllama", "backend": "tpu", "status": "pass"}], "model_runs[0].backend"),
    ([{"model": "tinyllama", "backend": "cuda", "status": "pass", "startup_s": "fast"}],
     "model_runs[0].startup_s must be a number"),
    ([{"model": "tinyllama", "backend": "cuda", "status": "pass",
       "memory_at_ready": {"bytes": 1, "kind": "gpu"}}], "model_runs[0].memory_at_ready"),
    ([{"model": "tinyllama", "backend": "cuda", "status": "pass", "failed_items": "x"}],
     "failed_items must be a list of strings"),
    ([{"model": "t", "backend": "cuda", "status": "pass"}] * 2, "two model_runs for 't'"),
], ids=["not-list", "status", "backend", "startup", "memory", "failed-items", "duplicate"])
def test_malformed_model_runs_is_one_line_exit_2_nothing_written(
        tmp_path: Path, runs: Any, expected: str) -> None:
    ws = model_doc("workstation", "cuda")
    ws["model_runs"] = runs
    res, md, page, doc = merge_cli(tmp_path, model_doc("mac", "metal"), ws)
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert err.startswith(f"error: gate result {tmp_path / 'in' / 'cp3-workstation.json'}: ")
    assert expected in err
    assert (md, page, doc) == ("", "", None)


def test_no_model_runs_anywhere_is_one_line_naming_files_and_fix(tmp_path: Path) -> None:
    res, md, page, doc = merge_cli(tmp_path, pool_doc("mac", "metal"),
                                   pool_doc("workstation", "cuda"))
    assert res.returncode == 2
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "no merged gate result carries model_runs" in err and "--gate-models" in err
    assert str(tmp_path / "in" / "cp3-mac.json") in err
    assert str(tmp_path / "in" / "cp3-workstation.json") in err
    assert (md, page, doc) == ("", "", None)  # not even the rest of the merge output
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_model_support_target_that_is_no_file_is_refused(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "reports" / "MODEL_SUPPORT.md"
    target.parent.mkdir()
    if kind == "directory":
        target.mkdir()
    else:
        os.mkfifo(target)
    res, _, page, doc = merge_cli(tmp_path, model_doc("mac", "metal"),
                                  model_doc("workstation", "cuda"), support=target)
    err = res.stderr.strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1, res.stderr
    assert f"--model-support target {target} is" in err and "not a file" in err
    assert (page, doc) == ("", None)
    assert sorted(p.name for p in target.parent.iterdir()) == ["MODEL_SUPPORT.md"]


# --------------------------------------------------------------------------- older results


def test_older_results_merge_as_before_without_a_matrix(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    mac = write(tmp_path / "mac.json", pool_doc("mac", "metal"))
    ws = write(tmp_path / "ws.json", pool_doc("workstation", "cuda"))
    res = harness("gate", "merge", f"mac={mac}", f"workstation={ws}", "--html",
                  out / "cp3.html", "--json", out / "cp3.json", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads((out / "cp3.json").read_text())["model_support"] is None
    assert "model-support" not in (out / "cp3.html").read_text()
    loaded = gatemerge.load_result(mac, name="mac")
    assert loaded.gate_models == () and loaded.model_runs == []


def test_pool_with_an_older_result_is_a_column_of_not_run_cells(tmp_path: Path) -> None:
    """A pool that plays cuda but ran without --gate-models: its column is there, each cell
    saying why it is empty; the matrix never just leaves the backend out."""
    res, md, _, _ = merge_cli(tmp_path, model_doc("mac", "metal"),
                              pool_doc("workstation", "cuda"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert header(md)[3:] == ["Metal (mac)", "CUDA (workstation)"]
    for m in MODELS.values():
        assert table_row(md, f"{m['name']} (")[3:] == ["✅ pass", "⛔ not run"]
    assert md.count("CUDA (workstation): not run; reason: this result has no model_runs "
                    "(run the gate with --gate-models)") == 4
    assert "**Runs:** 4 of 8 (model, backend) runs passed." in md


def test_matrix_from_what_the_real_plugin_writes(tmp_path: Path) -> None:
    """The producer's documents (`pytest --gate-json`, trivial tests with no model tests):
    the gate model is a row whose cells say it was not run, figures "—" with why."""
    mac = json.loads(run_plugin(tmp_path, "metal").read_text())
    ws = json.loads(run_plugin(tmp_path, "cuda").read_text())
    res, md, page, doc = merge_cli(tmp_path, mac, ws)
    assert res.returncode == 0, res.stdout + res.stderr
    assert doc is not None and mac["gate_models"]
    assert [m["model"] for m in doc["model_support"]["models"]] == mac["gate_models"]
    row = next(ln for ln in md.splitlines() if ln.startswith("| ") and
               f"{mac['gate_models'][0]} |" in ln.replace(")", ""))
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert len(cells) == 5 and cells[3:] == ["⛔ not run", "⛔ not run"], row
    assert "(not reported)" in cells[1] and "— (skip)" not in md
    assert '<table id="model-support">' in page


def test_model_runs_parse_into_typed_values(tmp_path: Path) -> None:
    doc = model_doc("workstation", "cuda", runs={"phi3": {"memory_at_ready": None,
                                                          "revision": None}})
    res = gatemerge.parse_result(doc, tmp_path / "ws.json", name="workstation")
    assert res.gate_models == tuple(MODELS)
    phi = next(r for r in res.model_runs if r.model == "phi3")
    assert (phi.backend, phi.status, phi.memory_bytes, phi.memory_kind, phi.revision) == (
        "cuda", "pass", None, None, None)
    assert phi.size_bytes == MODELS["phi3"]["size_bytes"] and phi.worker_lives == 2
    assert {o.model for o in res.outcomes} == {None, *MODELS}
