"""The gate plugin itself: options, markers, skip/fail decisions (pytester, in subprocesses)."""

from __future__ import annotations

import stat

import pytest

from llorch_harness.choices import UnknownName
from llorch_harness.gate import checklist as gate
from llorch_harness.plugin import labs

pytest_plugins = ["pytester"]

NO_GPU = {"cpu": None, "cuda": "no NVIDIA GPU visible (nvidia-smi not found)",
          "metal": "not Apple Silicon macOS (Metal needs an arm64 Mac)"}

BACKEND_TESTS = """
import pytest

@pytest.mark.cpu
def test_cpu(gate_backend):
    assert gate_backend == "cpu"

@pytest.mark.cuda
def test_cuda(gate_backend):
    assert gate_backend == "cuda"

@pytest.mark.metal
def test_metal():
    pass

@pytest.mark.gate("Qwen Testing", "Tokens are generated")
@pytest.mark.slow
@pytest.mark.remote
def test_gate_marked(request):
    assert dict(request.node.user_properties)["gate_item"] == "Tokens are generated"
"""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for spec in labs.OPTIONS:
        monkeypatch.delenv(spec.env, raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no llorch binaries: embedded lab


@pytest.fixture
def gate_suite(pytester: pytest.Pytester) -> None:
    """The test project declares itself a gate suite, as tests_hw/conftest.py does."""
    pytester.makeconftest("llorch_gate_suite = True\n")


# ------------------------------------------------------------------ plain functions


def test_option_precedence_cli_env_ini():
    spec = next(s for s in labs.OPTIONS if s.flag == "--gate-model")
    env = {"LLORCH_GATE_MODEL": "from-env"}
    assert labs.resolve_option(spec, "from-cli", env, "from-ini")[0] == "from-cli"
    assert labs.resolve_option(spec, None, env, "from-ini")[0] == "from-env"
    assert labs.resolve_option(spec, None, {}, "from-ini")[0] == "from-ini"
    lst = next(s for s in labs.OPTIONS if s.flag == "--backend-available")
    assert labs.resolve_option(lst, ["cuda", "metal,cpu"], {}, None)[0] == ["cuda", "metal", "cpu"]
    assert labs.resolve_option(lst, None, {"LLORCH_BACKEND_AVAILABLE": "cuda, metal"}, None)[0] \
        == ["cuda", "metal"]


def test_bad_option_values_are_refused():
    lab = next(s for s in labs.OPTIONS if s.flag == "--lab")
    with pytest.raises(labs.OptionError, match="choose one of"):
        labs.resolve_option(lab, "bogus", {}, None)
    with pytest.raises(UnknownName, match="unknown backend 'tpu'"):
        labs.resolve_settings(lambda d: ["tpu"] if d == "llorch_backend_available" else None,
                              lambda n: None, {})


def test_selected_backends_from_markexpr():
    assert labs.selected_backends("metal") == ["metal"]
    assert labs.selected_backends("cpu or cuda") == ["cpu", "cuda"]
    assert labs.selected_backends("not slow") == ["cpu", "cuda", "metal"]
    assert labs.selected_backends(None) == ["cpu", "cuda", "metal"]
    assert labs.selected_backends("not cuda") == ["cpu", "metal"]
    assert labs.selected_backends("(cpu or metal) and not slow") == ["cpu", "metal"]
    assert labs.selected_backends('cuda(reason="x", n=1) or not (cpu or metal)') == ["cuda"]
    # a broken expression is pytest's to report; the gate then selects every backend
    assert labs.selected_backends("cpu and") == ["cpu", "cuda", "metal"]
    assert labs.selected_backends("(cuda") == ["cpu", "cuda", "metal"]


@pytest.mark.parametrize("expr", [
    "cpu", "not cpu", "cpu and not slow", "cpu or cuda and metal", "not (cpu or cuda)",
    "(cpu) and (slow or not remote)", "not not metal", "gate or cuda",
    "a:b or cpu", "x-y.z/w[1] and not cpu",
])
def test_markexpr_agrees_with_pytest_deselection(pytester: pytest.Pytester, expr: str):
    """Our `-m` evaluator against pytest's own: the same tests selected for each expression."""
    from llorch_harness.plugin import markexpr

    combos = [(), ("cpu",), ("cuda", "slow"), ("metal", "remote"), ("cpu", "cuda", "metal"),
              ("gate",), ("a:b",), ("x-y.z/w[1]", "cpu"), ("slow",)]
    lines = ["import pytest"]
    for i, marks in enumerate(combos):
        lines += [f"@pytest.mark.{m}" if m.isidentifier() else
                  f"@getattr(pytest.mark, {m!r})" for m in marks]
        lines += [f"def test_{i}():", "    pass"]
    pytester.makepyfile("\n".join(lines))
    res = pytester.runpytest_inprocess("-p", "no:llorch_harness", "-m", expr, "-q",
                                       "--collect-only", "-p", "no:cacheprovider",
                                       "-W", "ignore::pytest.PytestUnknownMarkWarning")
    chosen = sorted(int(ln.split("test_")[-1]) for ln in res.outlines if "::test_" in ln)
    ours = [i for i, marks in enumerate(combos)
            if markexpr.evaluate(expr, lambda name, marks=marks: name in marks)]
    assert chosen == ours


def _fake_bin(tmp_path, name: str):
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    f = d / name
    f.write_text("#!/bin/sh\nexit 0\n")
    f.chmod(f.stat().st_mode | stat.S_IXUSR)
    return d


def test_lab_auto_real_with_binary_embedded_without(tmp_path):
    embedded = labs.decide(labs.Settings(), hardware=NO_GPU, path_env="")
    assert embedded.lab == "embedded" and embedded.gate_model == "tiny-qwen"
    assert embedded.banner() == "EMBEDDED LAB: reference worker, not llorch-candled"
    assert embedded.backends["cuda"].reason.startswith("cuda: no NVIDIA GPU visible")
    bindir = _fake_bin(tmp_path, "llorch-cpu-candled")
    real = labs.decide(labs.Settings(bin_dir=str(bindir)), hardware=NO_GPU, path_env="")
    assert real.lab == "real" and real.gate_model == "qwen-0.5b"
    assert real.banner().startswith("REAL LAB: llorch-cpu-candled ")
    assert real.backends["cpu"].binary_sha256 in real.banner()


def test_embedded_lab_reason_for_gpu_backends_and_overrides():
    d = labs.decide(labs.Settings(backend_available=["cuda"]), hardware=NO_GPU, path_env="")
    assert d.backends["cuda"].reason == ("embedded lab has no cuda worker: install "
                                         "llorch-cuda-candled or pass --llorch-bin-dir")


def test_item_verdicts():
    d = labs.decide(labs.Settings(require_backend=["cuda"]), hardware=NO_GPU, path_env="")
    assert labs.item_verdict(d, ["cpu"]) == labs.ItemVerdict("run", "cpu")
    assert labs.item_verdict(d, ["metal"]).action == "skip"
    fail = labs.item_verdict(d, ["cuda"])
    assert fail.action == "fail" and "required backend cuda missing" in fail.reason
    assert labs.item_verdict(d, ["cpu", "cuda", "metal"]) == labs.ItemVerdict("run", "cpu")
    only_metal = labs.decide(labs.Settings(), markexpr="metal", hardware=NO_GPU, path_env="")
    pool = labs.item_verdict(only_metal, ["cpu", "cuda", "metal"])
    assert pool.action == "skip" and "metal" in pool.reason


def test_checklist_is_the_seed_in_order():
    seed = [i.item for i in gate.SEED_CHECKLIST]
    assert len(seed) == 25 and seed[0] == "`llorch-pool models download` works"
    assert seed[-1] == "Documentation updated"
    assert [i.item for i in gate.checklist() if i.seed] == seed
    with pytest.raises(ValueError, match="not a CP3 gate item"):
        gate.gate_marker_args(("Qwen Testing", "Tokens are generated!"), {})


def test_redact_removes_secret_values():
    env = {"HF_TOKEN": "hf_CANARYabcdefghijklmnop", "MY_API_KEY": "s3cr3tvalue", "HOME": "/root"}
    text = "a hf_CANARYabcdefghijklmnop b s3cr3tvalue c /root"
    assert labs.redact(text, env) == "a *** b *** c /root"


# ------------------------------------------------------------------ pytester (subprocess)


def test_markers_registered_and_strict(pytester: pytest.Pytester, clean_env, gate_suite):
    pytester.makepyfile(BACKEND_TESTS)
    res = pytester.runpytest_subprocess("--strict-markers", "-rs", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=2, skipped=2)
    res.stdout.fnmatch_lines([
        "*cuda: no NVIDIA GPU visible (nvidia-smi not found); pass --backend-available cuda "
        "to override*",
        "*EMBEDDED LAB: reference worker, not llorch-candled*",
    ])
    res = pytester.runpytest_subprocess("--markers")
    res.stdout.fnmatch_lines(["*@pytest.mark.metal*", "*@pytest.mark.gate(section, item)*"])


def test_markers_registered_outside_a_gate_run(pytester: pytest.Pytester, clean_env):
    """Another project may use the harness's markers with --strict-markers, gate or not."""
    pytester.makepyfile("""
        import pytest

        @pytest.mark.cpu
        @pytest.mark.slow
        def test_x():
            pass
    """)
    res = pytester.runpytest_subprocess("--strict-markers", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    assert "LAB" not in res.stdout.str()


def test_unknown_gate_item_is_a_usage_error(pytester: pytest.Pytester, clean_env, gate_suite):
    pytester.makepyfile("""
        import pytest
        @pytest.mark.gate("Qwen Testing", "Tokens are generated (typo)")
        def test_x():
            pass
    """)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*not a CP3 gate item*"])


def test_require_backend_fails_instead_of_skipping(pytester: pytest.Pytester, clean_env):
    pytester.makepyfile(BACKEND_TESTS)
    res = pytester.runpytest_subprocess("--require-backend", "cuda", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=2, skipped=1, errors=1)  # fails at setup
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    res.stdout.fnmatch_lines(["*required backend cuda missing: cuda: no NVIDIA GPU visible*"])


def test_require_backend_from_env(pytester: pytest.Pytester, clean_env, monkeypatch):
    pytester.makepyfile(BACKEND_TESTS)
    monkeypatch.setenv("LLORCH_REQUIRE_BACKEND", "metal,cuda")
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=2, errors=2)


def test_backend_available_with_binary_makes_real_lab(pytester: pytest.Pytester, clean_env,
                                                      tmp_path):
    pytester.makepyfile(BACKEND_TESTS)
    bindir = _fake_bin(tmp_path, "llorch-cuda-candled")
    res = pytester.runpytest_subprocess("--backend-available", "cuda", f"--llorch-bin-dir={bindir}",
                                        "-m", "cuda", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, deselected=3)
    res.stdout.fnmatch_lines(["*REAL LAB: llorch-cuda-candled*sha256*"])


def test_no_tests_collected_keeps_exit_5(pytester: pytest.Pytester, clean_env, gate_suite):
    pytester.makepyfile(BACKEND_TESTS)
    res = pytester.runpytest_subprocess("-m", "cpu and cuda", "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    # a marker the gate does not know is a typo, not "no tests" (issue 28, choices.py)
    res = pytester.runpytest_subprocess("-m", "nothing_has_this", "-p", "no:cacheprovider")
    assert res.ret == 12


def test_xdist_workers_share_the_controllers_decision(pytester: pytest.Pytester, clean_env):
    pytester.makepyfile(BACKEND_TESTS)
    serial = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--require-backend", "cuda")
    para = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--require-backend", "cuda",
                                         "-n", "2")
    assert serial.parseoutcomes() == para.parseoutcomes()
