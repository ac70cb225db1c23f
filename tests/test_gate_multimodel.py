"""The gate over several models (CP4, `--gate-models`), end to end in subprocesses: every
model gets the inference checks and CP4's items per backend, each model's worker lives once
(plus the restart check), models take turns on a device, the gate JSON carries one run per
model and backend with measured figures, and a worker that is broken for some architectures
only fails exactly those models, all the way into MODEL_SUPPORT.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llorch_harness.plugin import labs
from llorch_harness.plugin.options import Settings
from tests.test_plugin_gate import run_gate

pytest_plugins = ["pytester"]

FOUR = ("tiny-qwen", "tiny-llama", "tiny-phi3", "tiny-mistral")
CP4 = "Multi-Model Testing (CP4)"
MODEL_CHECKS = ("test_output_agrees_with_reference", "test_greedy_repeat_identical",
                "test_interleaved_prompt_lengths", "test_restart_gives_same_tokens",
                "test_no_error_patterns", "test_seeded_sampling", "test_streams_obey_contract",
                "test_tokens_generated", "test_golden_tokens")


def _doc(tmp: Path) -> dict:
    return json.loads((tmp / "g.json").read_text())


def _rows(doc: dict) -> dict[str, dict]:
    return {f"{r['section']} / {r['item']}": r for r in doc["checklist"]}


# ------------------------------------------------------------------ options, plain


def test_gate_models_resolution():
    assert labs.resolve_gate_models(Settings(), "embedded") == ["tiny-qwen"]
    assert labs.resolve_gate_models(Settings(gate_model="x"), "real") == ["x"]
    got = labs.resolve_gate_models(Settings(gate_models=["a", "b"]), "real")
    assert got == ["a", "b"]
    assert labs.resolve_gate_models(Settings(gate_model="a", gate_models=["a", "b"]),
                                    "real") == ["a", "b"]
    with pytest.raises(labs.OptionError, match="disagree"):
        labs.resolve_gate_models(Settings(gate_model="b", gate_models=["a", "b"]), "real")


def _collect(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makeconftest("llorch_gate_suite = True\n")
    pytester.makepyfile(test_models="""
import pytest

@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=pytest.mark.cpu, id="cpu")])
def test_check(backend, gate_model_id):
    pass

@pytest.mark.gate("Multi-Model Testing (CP4)", "No VRAM errors")
@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=pytest.mark.cpu, id="cpu")])
def test_cp4_item(backend, gate_model_id):
    pass

@pytest.mark.cpu
def test_pool_level():
    pass
""")
    return pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider",
                                         "--lab", "embedded", *args)


def test_one_model_keeps_the_cp3_ids(pytester: pytest.Pytester, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    res = _collect(pytester)
    assert res.ret == 0, res.stdout.str()
    ids = [ln for ln in res.stdout.lines if "::" in ln]
    assert ids == ["test_models.py::test_pool_level", "test_models.py::test_check[cpu]",
                   "test_models.py::test_cp4_item[cpu]"], ids


def test_several_models_run_model_by_model_cp4_items_last(pytester: pytest.Pytester,
                                                          monkeypatch):
    """Tests about no model first; then each model's turn in --gate-models order, its CP4
    items last (they judge the turn and stop its worker)."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    res = _collect(pytester, "--gate-models", "tiny-llama,tiny-qwen")
    assert res.ret == 0, res.stdout.str()
    ids = [ln.split("::", 1)[1] for ln in res.stdout.lines if "::" in ln]
    assert ids == ["test_pool_level",
                   "test_check[tiny-llama-cpu]", "test_cp4_item[tiny-llama-cpu]",
                   "test_check[tiny-qwen-cpu]", "test_cp4_item[tiny-qwen-cpu]"], ids


@pytest.mark.parametrize("how", ["env", "ini"])
def test_gate_models_from_env_and_ini(pytester: pytest.Pytester, monkeypatch, how):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if how == "env":
        monkeypatch.setenv("LLORCH_GATE_MODELS", "tiny-llama,tiny-qwen")
    else:
        pytester.makeini("[pytest]\nllorch_gate_models = tiny-llama tiny-qwen\n")
    res = _collect(pytester)
    assert res.ret == 0, res.stdout.str()
    ids = [ln.split("::", 1)[1] for ln in res.stdout.lines if "::" in ln]
    assert ids[1:3] == ["test_check[tiny-llama-cpu]", "test_cp4_item[tiny-llama-cpu]"], ids


@pytest.mark.parametrize("args, words", [
    (["--gate-models", "tiny-qwen,../etc"], "--gate-models"),
    (["--gate-model", "tiny-llama", "--gate-models", "tiny-qwen,tiny-llama"], "disagree"),
])
def test_bad_gate_models_are_one_usage_error(pytester: pytest.Pytester, monkeypatch, args,
                                             words):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    res = _collect(pytester, *args)
    assert res.ret == pytest.ExitCode.USAGE_ERROR, res.stdout.str() + res.stderr.str()
    text = res.stderr.str()
    assert "llorch-harness:" in text and words in text
    assert "Traceback" not in text


# ------------------------------------------------------------------ the gate, for real


@pytest.fixture(scope="module")
def four_models(tmp_path_factory) -> dict:
    """The embedded cpu gate over CP4's four architectures in miniature."""
    tmp = tmp_path_factory.mktemp("four")
    res = run_gate(tmp, "--gate-models", ",".join(FOUR), "--gate-json", str(tmp / "g.json"),
                   "--html", str(tmp / "r.html"), "--self-contained-html")
    return {"res": res, "tmp": tmp}


@pytest.mark.slow
def test_every_model_gets_every_check_and_passes(four_models):
    res, tmp = four_models["res"], four_models["tmp"]
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    doc = _doc(tmp)
    assert doc["gate_models"] == list(FOUR) and doc["gate_model"] == "tiny-qwen"
    for model in FOUR:
        ran = {i["nodeid"].split("::")[1].split("[")[0] for i in doc["items"]
               if i.get("model") == model and i["status"] == "pass"}
        assert set(MODEL_CHECKS) <= ran, (model, sorted(ran))
    rows = _rows(doc)
    for item in ("Every model works on every backend of this pool", "No VRAM errors",
                 "All workers spawn and stop cleanly"):
        assert rows[f"{CP4} / {item}"]["status"] == "pass"
        assert rows[f"{CP4} / {item}"]["models"] == {m: "pass" for m in FOUR}
    assert rows["Qwen Testing / No broadcasting errors"]["models"] == {m: "pass" for m in FOUR}
    assert "per model: tiny-qwen PASS, tiny-llama PASS" in out
    assert "Models on this pool (CP4, 4 runs):" in out


@pytest.mark.slow
def test_model_runs_carry_measured_figures(four_models):
    doc = _doc(four_models["tmp"])
    runs = {(r["model"], r["backend"]): r for r in doc["model_runs"]}
    assert set(runs) == {(m, "cpu") for m in FOUR}
    arch = {"tiny-qwen": "qwen", "tiny-llama": "llama", "tiny-phi3": "phi3",
            "tiny-mistral": "mistral"}
    for model in FOUR:
        run = runs[(model, "cpu")]
        assert run["status"] == "pass" and run["failed_items"] == [], run
        assert run["architecture"] == arch[model]
        model_dir = four_models["tmp"] / "pool" / ".test-models" / model
        on_disk = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
        assert run["size_bytes"] == on_disk
        assert 0 < run["startup_s"] < 120
        assert run["memory_at_ready"]["kind"] == "rss" and run["memory_at_ready"]["bytes"] > 0
        assert run["tokens_per_sec"] > 0
        # the live worker once, plus the restart check: never more
        assert run["worker_lives"] == 2, run
    html = (four_models["tmp"] / "r.html").read_text()
    assert "Models on this pool (CP4)" in html and "tiny-mistral" in html


@pytest.mark.slow
def test_models_take_turns_on_the_device(four_models):
    """No two models' live workers were alive at once on the device, and each model's live
    worker lived twice (the restart), in --gate-models order."""
    doc = _doc(four_models["tmp"])
    lives = [r for r in doc["memory"] if str(r["worker_id"]).startswith("gate-")]
    by_model: dict[str, list[dict]] = {}
    for r in lives:
        wid = str(r["worker_id"])
        model = next((m for m in FOUR[1:] if wid.startswith(f"gate-{m}-")), FOUR[0])
        by_model.setdefault(model, []).append(r)
    assert {m: len(v) for m, v in by_model.items()} == {m: 2 for m in FOUR}
    spans = sorted((min(r["started_at"] for r in v), max(r["stopped_at"] for r in v), m)
                   for m, v in by_model.items())
    assert [m for _, _, m in spans] == list(FOUR)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"{a}'s worker still alive when {b}'s started"


@pytest.mark.slow
def test_cp3_cache_resets_fail_exactly_qwen_and_mistral(tmp_path):
    """The real worker at CP3 resets Llama's cache but never Qwen's or Mistral's: run as the
    real lab with that worker, the gate fails exactly those two models, names the failed
    items per model, and MODEL_SUPPORT.md (gate merge) shows the same."""
    from tests.test_gaterun import install_worker

    bin_dir = tmp_path / "bin"
    install_worker(bin_dir, "cpu")
    models = ("tiny-qwen", "tiny-llama", "tiny-mistral")
    res = run_gate(tmp_path, "--llorch-bin-dir", str(bin_dir), "--gate-models",
                   ",".join(models), "--gate-json", str(tmp_path / "g.json"),
                   "-k", "qwen_inference or multi_model", faults="cp3_cache")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-6000:]
    assert "REAL LAB" in out
    doc = _doc(tmp_path)
    runs = {r["model"]: r for r in doc["model_runs"]}
    assert runs["tiny-llama"]["status"] == "pass", runs["tiny-llama"]
    for bad in ("tiny-qwen", "tiny-mistral"):
        assert runs[bad]["status"] == "fail"
        assert "No broadcasting errors" in runs[bad]["failed_items"]
        assert "Every model works on every backend of this pool" in runs[bad]["failed_items"]
    rows = _rows(doc)
    assert rows["Qwen Testing / No broadcasting errors"]["models"] == {
        "tiny-qwen": "fail", "tiny-llama": "pass", "tiny-mistral": "fail"}
    assert any("cpu tiny-mistral:" in r for r in
               rows["Qwen Testing / No broadcasting errors"]["reasons"])
    support = tmp_path / "MODEL_SUPPORT.md"
    merged = subprocess.run(
        [sys.executable, "-m", "llorch_harness.cli.harness_main", "gate", "merge",
         f"ci={tmp_path / 'g.json'}", "--model-support", str(support),
         "--html", str(tmp_path / "m.html")],
        capture_output=True, text=True, timeout=120, check=False)
    assert merged.returncode == 1, merged.stdout + merged.stderr  # the gate failed
    text = support.read_text()
    table = text.split("## Tested models", 1)[1].split("##", 1)[0]
    lines = {m: next(ln for ln in table.splitlines() if ln.startswith("|") and f"({m})" in ln)
             for m in models}
    assert "✅" in lines["tiny-llama"] and "❌" not in lines["tiny-llama"], text
    for bad in ("tiny-qwen", "tiny-mistral"):
        assert "❌" in lines[bad] and "No broadcasting errors" in text, text


def test_an_unknown_model_id_ends_the_run_before_any_test(tmp_path):
    """An id neither built in nor in the pool's catalog is a typo: one line with a "did you
    mean", the model-id exit status, and no test runs (issue 28: it used to fail every
    one of that model's tests)."""
    res = run_gate(tmp_path, "--gate-models", "tiny-qwen,no-such-model", "--gate-json",
                   str(tmp_path / "g.json"), "-k", "greedy_repeat or multi_model")
    out = res.stdout + res.stderr
    assert res.returncode == 10, out[-6000:]
    assert "unknown model id 'no-such-model'" in res.stderr and "known: " in res.stderr
    assert "PASSED" not in out and "Traceback" not in out
    assert not (tmp_path / "g.json").exists()
