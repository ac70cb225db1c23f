"""The bisect's parts without the gate: the rule, the search with skips, the range read from
git, the worktree (never the user's checkout), the build and its cache with the stand-in
cargo, item names, and the failure detail taken from pytest's output. Real git repositories
and real processes; the gate itself runs in tests/test_bisect_e2e.py."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llorch_harness.bisect import history, rule
from llorch_harness.bisect.build import Builder, cache_key, default_build_command, find_crate
from llorch_harness.bisect.driver import check_items
from llorch_harness.bisect.gatestep import failure_got
from llorch_harness.bisect.worktree import OWNER, Worktree, sweep_stale
from llorch_harness.choices import EXIT_CODES
from llorch_harness.errors import HarnessError
from tests.bisect_standin import _git, build_repo, install_cargo, snapshot

# --------------------------------------------------------------------------- the rule

@pytest.mark.parametrize(("statuses", "expected"), [
    (["pass", "pass", "pass"], "good"),
    (["pass", "fail", "pass"], "good"),  # flaky: one run in three does not make it bad
    (["fail", "fail", "pass"], "bad"),
    (["fail", "error", "fail"], "bad"),
    (["fail", "error", "pass"], "undecided"),
    (["error", "error", "pass"], "undecided"),  # could not check is no evidence either way
    (["skip", "skip", "skip"], "undecided"),
    (["fail"], "bad"),
    ([], "undecided"),
])
def test_an_item_is_bad_when_it_fails_in_a_majority_of_runs(statuses, expected) -> None:
    assert rule.item_decision(statuses) == expected


def test_a_commit_is_bad_on_any_bad_item_and_good_only_when_all_are_good() -> None:
    assert rule.commit_decision({"a": ["pass"] * 3, "b": ["fail", "fail", "pass"]}) == "bad"
    assert rule.commit_decision({"a": ["pass"] * 3, "b": ["pass", "fail", "pass"]}) == "good"
    assert rule.commit_decision({"a": ["pass"] * 3, "b": ["error"] * 3}) == "skip"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 20, 23, 33])
def test_the_search_finds_every_boundary_within_log2_steps(size: int) -> None:
    for first_bad in range(size):
        search = rule.Search(size)
        steps = 0
        while (i := search.next_index()) is not None:
            steps += 1
            search.record(i, rule.BAD if i >= first_bad else rule.GOOD)
        assert search.answer() == (first_bad, first_bad)
        assert steps <= math.ceil(math.log2(size)) if size > 1 else steps == 0


def test_a_skipped_commit_is_stepped_around_and_a_bordering_skip_gives_a_range() -> None:
    search = rule.Search(10)  # first bad: 6; 4 does not build, 5 could not be checked
    tried = []
    while (i := search.next_index()) is not None:
        tried.append(i)
        search.record(i, rule.SKIP if i in (4, 5) else rule.BAD if i >= 6 else rule.GOOD)
    assert tried[0] == 4 and 5 in tried  # the middle, then its nearest neighbour
    assert search.answer() == (4, 6)  # 4 and 5 are untestable: one of 4, 5, 6 is it
    clean = rule.Search(10, skipped={2})
    while (i := clean.next_index()) is not None:
        clean.record(i, rule.BAD if i >= 6 else rule.GOOD)
    assert clean.answer() == (6, 6)  # a skip away from the boundary changes nothing


# --------------------------------------------------------------------------- git and names

@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    base = tmp_path_factory.mktemp("standin")
    main, side = build_repo(base / "llama-orch", 20, faults={9: "decode_positions"},
                            broken={6}, merge_at=12, merge_fault=None)
    return base / "llama-orch", main, side


def test_the_range_is_the_first_parent_path(repo) -> None:
    root, main, side = repo
    rng = history.first_parent_range(root, main[2], "main")
    assert list(rng.commits) == main[3:] and rng.bad == main[-1]
    assert not set(side) & set(rng.commits)  # the merged branch's commits are not stepped on
    info = history.commit_info(root, main[9])
    assert info.subject == "inference: rework step 9" and info.author.startswith("Ada Dev")
    assert info.files == ("bin/llorch-candled/src/backend/inference.rs",)
    assert history.commit_info(root, main[12]).files == (
        "bin/llorch-candled/src/backend/kernels.rs", "docs/kernels.md")  # the merge vs parent 1


@pytest.mark.parametrize(("good", "bad", "expected"), [
    ("main", "m0", ") (--bad is older: swap them)"),
    ("side1", "main", "is not on the first-parent path of --bad main: it came in through a "
                      "merge (pass as --good the commit of that path where its history joins"),
    ("main", "main", "are the same commit"),
    ("nope", "main", "--good nope is not a commit in"),
    ("--output=x", "main", "'--output=x' is not a commit name"),
], ids=["swapped", "merged-in", "same", "unknown", "option-like"])
def test_a_range_that_cannot_be_bisected_is_one_line_exit_2(repo, good, bad, expected) -> None:
    root, main, side = repo
    names = {"m0": main[0], "m2": main[2], "side1": side[1]}
    with pytest.raises(HarnessError) as err:
        history.first_parent_range(root, names.get(good, good), names.get(bad, bad))
    assert err.value.exit_code == 2 and expected in err.value.one_line()
    assert "\n" not in err.value.one_line()


def test_item_names_are_checked_with_did_you_mean() -> None:
    assert check_items(["No broadcasting errors"] * 2, "cpu") == ["No broadcasting errors"]
    with pytest.raises(HarnessError) as err:
        check_items(["No broadcast errors"], "cpu")
    assert err.value.exit_code == EXIT_CODES["checklist item"]  # the mistake's own status
    assert "did you mean 'No broadcasting errors'" in err.value.one_line()
    with pytest.raises(HarnessError, match="concerns metal, not cpu"):
        check_items(["Qwen works on Metal (mac)"], "cpu")


# --------------------------------------------------------------------------- worktree

def test_the_worktree_moves_between_commits_and_leaves_the_checkout_as_it_was(
        repo, tmp_path: Path) -> None:
    root, main, _ = repo
    before = snapshot(root)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with Worktree.create(root, run_dir / "wt", main[2]) as wt:
        assert (wt.path / "worker/Cargo.toml").is_file()  # the crate before its move
        (wt.path / "stray.o").write_text("build output")
        wt.checkout(main[10])
        assert (wt.path / "bin/llorch-candled/Cargo.toml").is_file()
        assert not (wt.path / "worker").exists() and not (wt.path / "stray.o").exists()
        listed = _git(root, "worktree", "list", "--porcelain")
        assert str(wt.path) in listed and "detached" in listed
    assert not (run_dir / "wt").exists()
    assert "wt" not in _git(root, "worktree", "list")
    assert snapshot(root) == before  # refs, index, HEAD, config, objects: byte for byte


def test_a_killed_bisects_worktree_is_removed_by_the_next(repo, tmp_path: Path) -> None:
    root, main, _ = repo
    before = snapshot(root)
    runs = tmp_path / "runs"
    code = ("import sys; from pathlib import Path; from llorch_harness.bisect.worktree import "
            "Worktree; Worktree.create(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]); "
            "import os; os._exit(0)")  # dies without removing it
    (runs / "dead").mkdir(parents=True)
    subprocess.run([sys.executable, "-c", code, str(root), str(runs / "dead" / "wt"), main[3]],
                   check=True, timeout=120)
    assert (runs / "dead" / "wt").is_dir() and (runs / "dead" / OWNER).is_file()
    assert sweep_stale(runs) == [runs / "dead" / "wt"]
    assert not (runs / "dead" / "wt").exists()
    assert snapshot(root) == before


# --------------------------------------------------------------------------- build

def test_builds_follow_the_crate_are_cached_and_a_compile_error_is_a_skip(
        repo, tmp_path: Path) -> None:
    root, main, _ = repo
    tools = install_cargo(tmp_path / "tools").parent
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    cmd = default_build_command("cpu")
    builder = Builder(tmp_path / "cache", tmp_path / "target", "cpu", cmd, env)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with Worktree.create(root, run_dir / "wt", main[1]) as wt:
        assert find_crate(wt.path, "cpu") == wt.path / "worker"
        first = builder.build(main[1], wt.path, tmp_path / "b1.log")
        assert first.ok and not first.cached and first.crate_dir == "worker"
        assert first.binary == tmp_path / "cache" / cache_key(main[1], "cpu", cmd) / \
            "llorch-cpu-candled"
        assert "Compiling llorch-candled" in (tmp_path / "b1.log").read_text()
        again = builder.build(main[1], wt.path, tmp_path / "b2.log")
        assert again.ok and again.cached and again.binary == first.binary
        wt.checkout(main[6])
        broken = builder.build(main[6], wt.path, tmp_path / "b3.log")
        assert not broken.ok and broken.crate_dir == "bin/llorch-candled"
        assert broken.detail == ('build failed (exit 101): error: compile_error!("half-done '
                                 'refactor");')
        assert builder.cached(main[6]) is None  # a failed build is tried again next time
        other = Builder(tmp_path / "cache", tmp_path / "target", "cpu",
                        [*cmd[:-2], "--bin", "llorch-nope-candled"], env)
        wt.checkout(main[7])
        nobin = other.build(main[7], wt.path, tmp_path / "b4.log")
        assert not nobin.ok and "no bin target named `llorch-nope-candled`" in nobin.detail


def test_the_failure_detail_is_the_got_line_of_the_tests_section() -> None:
    log = ("F\n==== FAILURES ====\n____ test_other[cpu] ____\nexpected: x\ngot: other\n"
           "____ test_qwen_works[cpu] ____\nexpected: agree\ngot: 1 of 1 streams disagree:\n"
           "job j: expected ' a' (id 1), got ' b' (id 2)\nlook at: /log\n---- Captured ----\n")
    assert failure_got(log, "test_qwen_works[cpu]") == (
        "got: 1 of 1 streams disagree: job j: expected ' a' (id 1), got ' b' (id 2)")
    assert failure_got(log, "test_missing[cpu]") == ""


# --------------------------------------------------------------------------- the answer

def _result(root: Path, main: list[str], decisions: dict[int, str]):
    """A finished bisect over main[3..] whose commits got these decisions (no gate ran)."""
    from llorch_harness.bisect.build import BuildOutcome
    from llorch_harness.bisect.driver import BisectOptions, BisectResult
    from llorch_harness.bisect.gatestep import ItemRun
    from llorch_harness.bisect.steps import StepRecord

    rng = history.first_parent_range(root, main[2], "main")
    opts = BisectOptions(root, main[2], "main", "cpu", root, root, ("Tokens are generated",))
    result = BisectResult(opts, rng, ["Tokens are generated"], False, ["cargo", "build"])
    search = rule.Search(rng.size)
    for index, decision in sorted(decisions.items()):
        commit = history.commit_info(root, main[2] if index < 0 else rng.commits[index])
        built = decision != "nobuild"
        rec = StepRecord(str(index), "step", index, commit, BuildOutcome(
            commit.sha, built, False, 1.0, None, "" if built else "build failed (exit 101)"))
        status = {"good": "pass", "bad": "fail"}.get(decision)
        if status:
            rec.runs = [{"Tokens are generated": ItemRun(status, f"<b>{status}</b> & why")}] * 3
            rec.item_decisions = {"Tokens are generated": decision}
            rec.decision = decision
        else:
            rec.note = rec.build.detail or "could not decide"
        result.steps.append(rec)
        search.record(index, rec.decision)
    result.first, result.last = search.answer()
    return result


def test_skips_next_to_the_first_bad_commit_give_the_smallest_range(repo) -> None:
    from llorch_harness.bisect import render, report

    root, main, _ = repo
    # range main[3..19]: 5 and 6 do not build, 7 is the oldest bad one tested, 4 is good
    result = _result(root, main, {-1: "good", 4 - 3: "good", 5 - 3: "nobuild",
                                  6 - 3: "nobuild", 7 - 3: "bad", 16: "bad"})
    ans = report.answer(result)
    assert not ans["exact"]
    assert [c["sha"] for c in ans["range"]] == main[5:8]
    assert [c["decision"] for c in ans["range"]] == ["skip", "skip", "bad"]
    assert ans["text"].startswith("the first bad commit is one of 3 commits")
    lines = report.terminal_lines(result)
    assert any("build failed (exit 101)" in ln for ln in lines)
    page = render.render_html(result)
    assert "<b>" not in page and "&lt;b&gt;fail&lt;/b&gt; &amp; why" in page  # a bad step's
    # reason, as text
    assert page.count("<tr>") == 1 + len(ans["range"]) + 1 + len(result.steps)


def test_an_exact_answer_puts_the_reason_next_to_the_parents_pass(repo) -> None:
    from llorch_harness.bisect import render, report

    root, main, _ = repo
    result = _result(root, main, {-1: "good", 5: "good", 6: "bad", 16: "bad"})
    ans = report.answer(result)
    assert ans["exact"] and ans["first_bad"]["sha"] == main[9]
    assert ans["parent"]["sha"] == main[8]
    item = ans["items"]["Tokens are generated"]
    assert item == {"at_first_bad": ["fail"] * 3, "reason": "<b>fail</b> & why",
                    "at_parent": ["pass"] * 3, "parent_decision": "good"}
    page = render.render_html(result)
    assert "&lt;b&gt;fail&lt;/b&gt; &amp; why" in page and "<b>fail" not in page
    assert "FAIL FAIL FAIL here: <b>fail</b> & why" in "\n".join(report.terminal_lines(result))
