"""The installed plugin acts only in gate runs (issue 13): real pytest runs in subprocesses.

An unrelated one-test project must print what it prints with `-p no:llorch_harness`, run no
hardware probe (a scripted `nvidia-smi` on PATH records every call), install no SIGTERM
handler, sweep no processes and import nothing heavy; a gate suite, a gate option or its
environment variable or ini key turns everything on.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from llorch_harness.plugin import labs

pytest_plugins = ["pytester"]

# The one test writes what a user could not see from outside: the SIGTERM handler, the
# session marker the sweep installs, the modules imported.
PROBE_TEST = """
import json, os, signal, sys
from pathlib import Path

def test_one(request):
    facts = {
        "sigterm_default": signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,
        "session_marker": os.environ.get("LLORCH_HARNESS_SESSION"),
        "modules": sorted(sys.modules),
    }
    out = Path(os.environ["PROBE_OUT"])
    out.write_text(json.dumps(facts))
    assert 1 + 1 == 2
"""

# what a run that is not a gate run must not import (the plugin's own light modules, the
# option table and the backend table, may load)
HEAVY = ("numpy", "tokenizers", "huggingface_hub", "httpx", "psutil", "filelock",
         "llorch_harness.plugin.session", "llorch_harness.plugin.sweep",
         "llorch_harness.plugin.fixtures", "llorch_harness.pool.procs",
         "llorch_harness.pool.workers", "llorch_harness.lab", "llorch_harness.gate")


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> pytest.Pytester:
    """A one-test project, no llorch settings, and an `nvidia-smi` that logs its calls."""
    for spec in labs.OPTIONS:
        monkeypatch.delenv(spec.env, raising=False)
    monkeypatch.delenv("LLORCH_HARNESS_SESSION", raising=False)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'nvidia-smi-called'}\nexit 1\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("PROBE_OUT", str(tmp_path / "facts.json"))
    pytester.makepyfile(test_one=PROBE_TEST)
    return pytester


def smi_called(tmp_path: Path) -> bool:
    return (tmp_path / "nvidia-smi-called").exists()


def facts(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "facts.json").read_text())


def normalised(lines: list[str]) -> list[str]:
    """Output without the plugins line and the run's duration (the only allowed differences)."""
    out = [ln for ln in lines if not ln.startswith("plugins:")]
    return [re.sub(r" in \d+\.\d+s", " in Ns", ln) for ln in out]


def test_unrelated_project_is_left_alone(project: pytest.Pytester, tmp_path: Path) -> None:
    without = project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:llorch_harness")
    without.assert_outcomes(passed=1)
    base_modules = set(facts(tmp_path)["modules"])
    res = project.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    assert normalised(res.outlines) == normalised(without.outlines)
    assert normalised(res.errlines) == normalised(without.errlines)
    assert any(ln.startswith("plugins:") and "llorch-harness" in ln for ln in res.outlines)
    assert not smi_called(tmp_path), "a hardware probe ran"
    seen = facts(tmp_path)
    assert seen["sigterm_default"], "a SIGTERM handler was installed"
    assert seen["session_marker"] is None, "the session marker (the sweep's key) was set"
    extra = set(seen["modules"]) - base_modules
    assert not [m for m in extra if not m.startswith("llorch_harness")], sorted(extra)
    assert not [m for m in extra if m.startswith(HEAVY)], sorted(extra)


def test_gate_suite_activates_everything(project: pytest.Pytester, tmp_path: Path) -> None:
    project.makeconftest("llorch_gate_suite = True\n")
    res = project.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["llorch-harness *: EMBEDDED LAB: reference worker, not "
                              "llorch-candled", "  cuda*: not usable: *"])
    assert smi_called(tmp_path), "the hardware probe did not run"
    seen = facts(tmp_path)
    assert not seen["sigterm_default"], "no SIGTERM handler in a gate run"
    assert (seen["session_marker"] or "").startswith("pytest:")
    assert "llorch_harness.plugin.sweep" in seen["modules"]


# the scheduling mode the xdist controller runs with (workers always see "no")
DIST_PROBE = """
import os
from pathlib import Path

def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):
        Path(os.environ["PROBE_OUT"] + ".dist").write_text(session.config.option.dist)
"""


def test_dist_load_becomes_loadgroup_only_in_gate_runs(project: pytest.Pytester,
                                                       tmp_path: Path) -> None:
    dist = tmp_path / "facts.json.dist"
    project.makeconftest(DIST_PROBE)
    res = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "1")
    res.assert_outcomes(passed=1)
    assert dist.read_text() == "load"
    project.makeconftest(DIST_PROBE + "\nllorch_gate_suite = True\n")
    res = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "1")
    res.assert_outcomes(passed=1)
    assert dist.read_text() == "loadgroup"


@pytest.mark.parametrize("source", ["command line", "environment", "ini"])
def test_a_gate_option_activates(project: pytest.Pytester, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    args = ["-p", "no:cacheprovider"]
    if source == "command line":
        args.append("--lab=embedded")
    elif source == "environment":
        monkeypatch.setenv("LLORCH_LAB", "embedded")
    else:
        project.makeini("[pytest]\nllorch_lab = embedded\n")
    res = project.runpytest_subprocess(*args)
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["llorch-harness *: EMBEDDED LAB: *"])
    assert smi_called(tmp_path)


GATE_TEST = """
import pytest

@pytest.mark.gate("Qwen Testing", "Tokens are generated")
def test_gate_item():
    pass
"""


def test_gate_tests_outside_a_gate_run_are_refused(pytester: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for spec in labs.OPTIONS:
        monkeypatch.delenv(spec.env, raising=False)
    pytester.makepyfile(GATE_TEST)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["ERROR: llorch-harness: 1 test(s) marked gate (first: "
                              "*::test_gate_item) were collected, but this is not a gate run: "
                              "put `llorch_gate_suite = True` in the suite's conftest.py*"])
    assert "Traceback" not in res.stderr.str()
    deselected = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "not gate")
    assert deselected.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_space_separated_value_that_moves_the_rootdir_is_refused(
        project: pytest.Pytester, tmp_path: Path) -> None:
    """pytest roots `--llorch-bin-dir DIR` at DIR (it reads DIR as a test path before the
    plugin loads); the gate refuses once, naming the joined form, which then works."""
    outside = tmp_path / "bins"
    outside.mkdir()
    res = project.runpytest_subprocess("-p", "no:cacheprovider", "--llorch-bin-dir",
                                       str(outside))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"ERROR: llorch-harness: pytest took {outside} (the value of "
                              "--llorch-bin-dir) for a test path and chose rootdir * instead of "
                              f"{project.path}; write the option joined to its value: "
                              f"--llorch-bin-dir={outside}"])
    joined = project.runpytest_subprocess("-p", "no:cacheprovider", f"--llorch-bin-dir={outside}")
    joined.assert_outcomes(passed=1)
    inside = project.path / "bins"
    inside.mkdir()
    spaced = project.runpytest_subprocess("-p", "no:cacheprovider", "--llorch-bin-dir",
                                          str(inside))
    spaced.assert_outcomes(passed=1)  # inside the project: the rootdir did not move
    spaced.stdout.fnmatch_lines([f"rootdir: {project.path}"])
