"""`llorch-harness bisect` end to end: the real command on a stand-in llama-orch repository
(24 commits, a merge, a crate that moves, a commit that does not compile, a wrong-output
fault, a slowdown brought in by a merge), the stand-in cargo, and the real gate (tests_hw,
real lab, the reference worker as the built binary, the smallest embedded model).

One bisect (the wrong-output one, K=3, with a lab that makes the item fail one gate run in
three) is shared by the assertions that read it: the answer, the number of steps, the
skipped commit, the flaky item, the user's untouched checkout, the reports. The slowdown
bisect runs over commits that bisect built, so it also shows the cache.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from llorch_harness.choices import EXIT_CODES
from tests.bisect_standin import _git, build_repo, install_cargo, snapshot
from tests.browser import open_page, payloads

BISECT_GUARD_S = 1800  # a hang guard only
WORKS = "Qwen works on CPU (this pool)"
PERF = "No performance regression"
PAYLOAD = dict(payloads())["img-onerror"]


@dataclass
class Lab:
    base: Path
    repo: Path
    main: list[str]
    side: list[str]
    pool: Path
    env: dict[str, str]


def standin_env(base: Path) -> dict[str, str]:
    tools = install_cargo(base / "tools").parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "PYTEST_"))}
    env["PATH"] = f"{tools}:{Path(sys.executable).parent}:/usr/bin:/bin"
    env["LLORCH_LEASE_DIR"] = str(base / "leases")
    return env


def bisect(lab: Lab, *args: str, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "llorch_harness.cli.harness_main", "bisect",
            "--llorch-repo", str(lab.repo), "--backend", "cpu", "--gate-model", "tiny-llama",
            "--pool-root", str(lab.pool), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env or lab.env,
                          cwd=lab.base, timeout=BISECT_GUARD_S, stdin=subprocess.DEVNULL)


def user_state(repo: Path) -> None:
    """The developer's own checkout: in the middle of their own `git bisect`, with an edited
    file, a staged change and an untracked file. None of it may change."""
    _git(repo, "bisect", "start", "main", "main~20")
    (repo / "README.md").write_text("# my local edit, not committed\n")
    (repo / "docs").mkdir(exist_ok=True)
    (repo / "docs" / "staged.md").write_text("staged\n")
    _git(repo, "add", "docs/staged.md")
    (repo / "scratch.txt").write_text("untracked\n")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    base = tmp_path_factory.mktemp("bisect")
    main, side = build_repo(base / "llama-orch", 24, faults={15: "wrong_rope_base"},
                            broken={11}, merge_at=16, merge_fault="slow_decode=10",
                            subjects={15: f"inference: cache the rope table {PAYLOAD}"})
    user_state(base / "llama-orch")
    (base / "pool").mkdir()
    return Lab(base, base / "llama-orch", main, side, base / "pool", standin_env(base))


@dataclass
class Run:
    res: subprocess.CompletedProcess[str]
    doc: dict[str, Any]
    before: dict[str, tuple[int, bytes]]
    after: dict[str, tuple[int, bytes]]
    html: Path


@pytest.fixture(scope="module")
def wrong_output(lab: Lab) -> Run:
    """The shared bisect: --good the root, --bad main, K=3, one flaky gate run in three."""
    (lab.base / "flaky").mkdir()
    env = {**lab.env, "STANDIN_FLAKY_STATE": str(lab.base / "flaky")}
    before = snapshot(lab.repo)
    res = bisect(lab, "--good", lab.main[0], "--bad", "main", "--item", WORKS,
                 "--json", str(lab.base / "b.json"), "--html", str(lab.base / "b.html"), env=env)
    after = snapshot(lab.repo)
    doc = json.loads((lab.base / "b.json").read_text()) if (lab.base / "b.json").is_file() \
        else {}
    return Run(res, doc, before, after, lab.base / "b.html")


def steps_by_commit(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["commit"]["sha"]: s for s in doc["steps"] if s["phase"] != "discover"}


def test_the_bisect_names_the_commit_that_broke_the_output(lab: Lab, wrong_output: Run) -> None:
    out = wrong_output.res.stdout + wrong_output.res.stderr
    assert wrong_output.res.returncode == 0, out[-6000:]
    ans = wrong_output.doc["answer"]
    assert ans["exact"] and ans["first_bad"]["sha"] == lab.main[15], out[-6000:]
    assert ans["first_bad"]["files"] == ["bin/llorch-candled/src/backend/inference.rs"]
    assert ans["first_bad"]["author"] == "Ada Dev <ada@example.org>"
    assert ans["parent"]["sha"] == lab.main[14]
    item = ans["items"][WORKS]
    assert item["at_first_bad"] == ["fail"] * 3 and item["parent_decision"] == "good"
    assert "the worker's tokens agree with the reference" in item["reason"]
    assert "got: 1 of 1 greedy streams disagree with the reference" in item["reason"]
    n = wrong_output.doc["range_size"]
    assert n == 23 and wrong_output.doc["path"] == "first-parent"
    assert 1 <= wrong_output.doc["test_steps"] <= math.ceil(math.log2(n)) + 1
    assert f"first bad commit: {lab.main[15]}" in out
    assert "[step 1 of at most 5]" in out and ": building" in out and "run 2 of 3" in out
    assert "rule: an item is bad at a commit when it fails in more than half" in out
    assert not set(lab.side) & set(steps_by_commit(wrong_output.doc))  # first-parent only


def test_a_flaky_item_does_not_move_the_answer(lab: Lab, wrong_output: Run) -> None:
    """The lab fails every commit's second gate session: good commits read PASS FAIL PASS
    and stay good, so the answer is the same commit."""
    steps = steps_by_commit(wrong_output.doc)
    flaky_good = [s for s in steps.values() if s["decision"] == "good"
                  and [r[WORKS]["status"] for r in s["runs"]] == ["pass", "fail", "pass"]]
    assert len(flaky_good) >= 2, wrong_output.res.stdout[-6000:]
    assert any("stand-in flaky start" in r[WORKS]["reason"] or "exited" in r[WORKS]["reason"]
               or "ready" in r[WORKS]["reason"] for s in flaky_good for r in s["runs"]
               if r[WORKS]["status"] == "fail")
    assert wrong_output.doc["answer"]["first_bad"]["sha"] == lab.main[15]


def test_a_commit_that_does_not_build_is_skipped(lab: Lab, wrong_output: Run) -> None:
    step = steps_by_commit(wrong_output.doc)[lab.main[11]]  # the middle of the range
    assert step["decision"] == "skip" and step["runs"] == []
    assert not step["build"]["ok"] and step["build"]["crate_dir"] == "bin/llorch-candled"
    assert 'build failed (exit 101): error: compile_error!("half-done refactor");' in \
        step["note"]
    assert "build failed, skipped" in wrong_output.res.stdout


def test_the_users_checkout_is_untouched_and_nothing_is_left(lab: Lab,
                                                             wrong_output: Run) -> None:
    assert wrong_output.after == wrong_output.before  # working tree, index, HEAD, refs, bisect
    assert _git(lab.repo, "worktree", "list").count("\n") == 0
    assert "git bisect start 'main' 'main~20'" in _git(lab.repo, "bisect", "log")  # theirs
    runs = lab.pool / ".runtime" / "bisect" / "runs"
    assert not list(runs.glob("*/llorch-bisect-*"))
    alive = [p.pid for p in psutil.process_iter()
             if _env(p).get("LLORCH_HARNESS_POOL") == str(lab.pool.resolve())]
    assert not alive, f"workers left behind: {alive}"


def _env(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except (psutil.Error, OSError):
        return {}


def test_the_html_report_shows_the_answer_with_every_value_escaped(
        lab: Lab, wrong_output: Run) -> None:
    page = open_page(wrong_output.html)
    assert page.ran() == [] and page.live() == []
    assert lab.main[15] in page.dom and "inference: cache the rope table" in page.dom
    assert "onerror" in page.dom.split('id="answer"')[1]  # the subject, shown as text
    assert page.dom.count("<tr>") >= 8  # the step table, a row per judged commit


def test_a_slowdown_is_found_with_the_performance_item(lab: Lab, wrong_output: Run) -> None:
    """The merge at commit 16 brought a decode loop 10x slower. The good commit is measured
    3 times in this bisect (the baseline); each commit is compared with those figures. The
    range is kept to commits that are slow or the baseline itself: on a shared test machine
    a healthy commit's load time can drift past the 20% band, and this test is about finding
    the slowdown, not about the gate's noise rules (tests/test_perf_*.py)."""
    t0 = time.monotonic()
    # a shared test machine: the gate's host-busy criterion off, as tests/test_perf_gate.py
    # has it (its "could not check (host busy)" would make every commit a skip here)
    env = {**lab.env, "LLORCH_PERF_BUSY_SHARE": "1"}
    res = bisect(lab, "--good", lab.main[15], "--bad", lab.main[17], "--item", PERF,
                 "--runs", "1", "--json", str(lab.base / "perf.json"), env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    doc = json.loads((lab.base / "perf.json").read_text())
    ans = doc["answer"]
    assert ans["first_bad"]["sha"] == lab.main[16], out[-6000:]
    assert ans["first_bad"]["subject"] == "Merge branch 'kernel-tuning'"
    assert "bin/llorch-candled/src/backend/kernels.rs" in ans["first_bad"]["files"]
    assert "performance regression" in ans["items"][PERF]["reason"]
    steps = steps_by_commit(doc)
    assert len(steps[lab.main[15]]["runs"]) == 3  # the baseline: three measured runs
    assert steps[lab.main[16]]["phase"] == "step" and doc["test_steps"] == 1
    for sha in (lab.main[15], lab.main[17]):
        assert steps[sha]["build"]["cached"], f"{sha} built twice"  # built by the first bisect
    assert not steps[lab.main[16]]["build"]["cached"]
    assert time.monotonic() - t0 < BISECT_GUARD_S


def test_a_good_commit_that_fails_is_one_line_before_anything_between_is_built(
        lab: Lab, wrong_output: Run) -> None:
    res = bisect(lab, "--good", lab.main[15], "--bad", lab.main[19], "--item", WORKS,
                 "--runs", "1", "--json", str(lab.base / "never.json"))
    assert res.returncode == 2, res.stdout[-4000:] + res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(
        f"error: --good {lab.main[15]} ({lab.main[15][:12]}) is not good: {WORKS}: FAIL")
    assert "building" not in res.stdout.split("[good]", 1)[1].split("\n", 3)[-1]
    builds = lab.pool / ".runtime" / "bisect" / "builds"
    assert not list(builds.glob(f"{lab.main[18][:12]}-*"))  # nothing between was built
    assert not (lab.base / "never.json").exists()
    assert not list((lab.pool / ".runtime" / "bisect" / "runs").glob("*/llorch-bisect-*"))


@pytest.mark.parametrize(("args", "status", "expected"), [
    (["--good", "main", "--bad", "main~3"], 2, "is not an ancestor of --bad main~3"),
    (["--good", "main~3", "--bad", "main", "--item", "No broadcast errors"],
     EXIT_CODES["checklist item"], "did you mean 'No broadcasting errors'"),
    (["--good", "main~3", "--bad", "main", "--runs", "0"], 2, "runs must be 1..25"),
], ids=["not-ancestor", "mistyped-item", "bad-runs"])
def test_bad_input_is_one_line_before_any_build(lab: Lab, tmp_path: Path, args: list[str],
                                                status: int, expected: str) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    res = subprocess.run([sys.executable, "-m", "llorch_harness.cli.harness_main", "bisect",
                          "--llorch-repo", str(lab.repo), "--backend", "cpu", "--pool-root",
                          str(pool), *args], capture_output=True, text=True, env=lab.env,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == status and expected in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 or status == 2  # argparse adds its usage line
    assert not (pool / ".runtime").exists()  # no worktree, no build, no run directory
