"""Code Quality items (issue 18) against real git repositories and real cargo.

The repositories are built here with `git init`: a base commit shaped like llama-orch after
CP1 (the deliverables are stubs already signed TEAM-022, a markdown file whose name says
"download"), then a checkpoint commit on top. cargo runs on tiny workspaces without
dependencies; the unreachable registry is a crates-io source replaced by a closed local port,
with a fresh CARGO_HOME, so it is the same on a machine with or without network.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llorch_harness.errors import HarnessError
from llorch_harness.gate import cargocheck, codequality, gitrange
from llorch_harness.gate import merge as gatemerge
from llorch_harness.gate.gitrange import GitRangeError
from tests.test_gatemerge import pool_doc

REPO = Path(__file__).resolve().parents[1]
TESTS_HW = REPO / "tests_hw"
CARGO = shutil.which("cargo")
GIT = shutil.which("git")
MODELS, WORKER, POOL = codequality.DELIVERABLES
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed on this machine")


def _toolchain_has(component: str) -> bool:
    if CARGO is None:
        return False
    res = subprocess.run([CARGO, component, "--version"], capture_output=True, check=False,
                         stdin=subprocess.DEVNULL, timeout=120)
    return res.returncode == 0


needs_cargo = pytest.mark.skipif(
    not (_toolchain_has("fmt") and _toolchain_has("clippy")),
    reason="cargo with rustfmt and clippy is not installed (rustup component add clippy rustfmt)")

# --------------------------------------------------------------------------- git repos

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1"}


def sh_git(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | GIT_ENV
    res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         env=env, check=True, stdin=subprocess.DEVNULL, timeout=60)
    return res.stdout.strip()


def write(repo: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    write(repo, files)
    sh_git(repo, "add", "-A")
    sh_git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return sh_git(repo, "rev-parse", "HEAD")


STUB = ("//! Worker management commands\n//!\n//! Created by: TEAM-022\n\n"
        "fn spawn() {\n    println!(\"Worker spawn not yet implemented\");\n}\n")
CP1_FILES = {
    MODELS: STUB.replace("Worker", "Model"), WORKER: STUB, POOL: STUB.replace("Worker", "Pool"),
    "README.md": "# llama-orch\n",
    "docs/download-notes.md": "# Download notes\n\nTo be written.\n",
    "docs/spawn-ideas.md": "# Worker spawn ideas\n\n## Troubleshooting\n\nNothing yet.\n",
}
GUIDE_FILES = {
    "docs/guides/models.md": "# Getting models\n\n```bash\nllorch-pool models download "
                             "qwen-0.5b\nllorch-pool models catalog\n```\n",
    "docs/guides/workers.md": "# Running workers\n\n```bash\nllorch-pool worker spawn metal "
                              "--model qwen-0.5b --gpu 0\n```\n",
    "docs/guides/when-it-breaks.md": "# When it breaks\n\n## `Model qwen-0.5b not downloaded`\n"
                                     "\n```bash\nllorch-pool models download qwen-0.5b\n```\n",
}


def cp3_files(repo: Path) -> dict[str, str]:
    """The checkpoint's work: two deliverables changed and signed, pool.rs untouched."""
    models = (repo / MODELS).read_text() + "\n// TEAM-030: model download via hf CLI\n" \
        "pub fn download() {}\n"
    worker = (repo / WORKER).read_text().replace(
        "println!(\"Worker spawn not yet implemented\");", "// TEAM-030: spawn llorch-candled")
    return {MODELS: models, WORKER: worker, **GUIDE_FILES}


@pytest.fixture
def cp1(tmp_path: Path) -> tuple[Path, str]:
    """A checkout at the end of CP1 on branch cp3, whose upstream is the local branch main."""
    repo = tmp_path / "llama-orch"
    repo.mkdir()
    sh_git(repo, "init", "-q", "-b", "main")
    base = commit(repo, CP1_FILES, "CP1 finished")
    sh_git(repo, "checkout", "-q", "-b", "cp3", "--track", "main")
    return repo, base


# --------------------------------------------------------------------------- the range


@needs_git
def test_default_range_is_the_merge_base_with_the_upstream(cp1):
    repo, base = cp1
    head = commit(repo, cp3_files(repo), "CP3")
    rng = gitrange.resolve_range(repo, None)
    assert (rng.base, rng.head) == (base, head)
    assert rng.describe() == f"{base[:12]}..{head[:12]} (merge base of HEAD and main)"
    assert gitrange.changed_files(rng) == {MODELS: "M", WORKER: "M", **{
        p: "A" for p in GUIDE_FILES}}
    added = gitrange.added_lines(rng, WORKER)
    assert added == [(6, "    // TEAM-030: spawn llorch-candled")]


@needs_git
def test_detached_or_upstreamless_checkout_asks_for_llorch_base(cp1):
    repo, base = cp1
    commit(repo, cp3_files(repo), "CP3")
    sh_git(repo, "checkout", "-q", "--detach")
    with pytest.raises(GitRangeError) as err:
        gitrange.resolve_range(repo, None)
    line = err.value.one_line()
    assert "detached HEAD" in line and "pass --llorch-base REF" in line and "\n" not in line
    sh_git(repo, "checkout", "-q", "-b", "lonely")
    with pytest.raises(GitRangeError, match="branch lonely, which has no upstream"):
        gitrange.resolve_range(repo, None)
    assert gitrange.resolve_range(repo, base).how == f"--llorch-base {base}"


@needs_git
def test_bad_base_and_non_checkout_are_one_line_errors(cp1, tmp_path):
    repo, _ = cp1
    with pytest.raises(GitRangeError, match="--llorch-base nope is not a commit in"):
        gitrange.resolve_range(repo, "nope")
    with pytest.raises(GitRangeError, match="is not a commit name"):
        gitrange.resolve_range(repo, "--output=/tmp/x")  # never an option to git
    plain = tmp_path / "export"
    plain.mkdir()
    with pytest.raises(GitRangeError, match="is not a git checkout"):
        gitrange.resolve_range(plain, None)


@needs_git
def test_base_off_the_branch_goes_through_the_merge_base(cp1):
    repo, base = cp1
    commit(repo, cp3_files(repo), "CP3")
    sh_git(repo, "checkout", "-q", "-b", "side", base)
    side = commit(repo, {"side.txt": "x\n"}, "side work")
    sh_git(repo, "checkout", "-q", "cp3")
    rng = gitrange.resolve_range(repo, side)
    assert rng.base == base and "through its merge base with HEAD" in rng.how


# --------------------------------------------------------------------------- the items


@needs_git
def test_finished_checkpoint_passes_and_shows_its_evidence(cp1):
    repo, base = cp1
    commit(repo, cp3_files(repo), "CP3")
    rng = gitrange.resolve_range(repo, base)
    sig = codequality.check_signatures(rng)
    assert sig.passed, sig.summary
    per = sig.details["deliverables"]
    assert per[MODELS]["lines"] == [f"{MODELS}:9: // TEAM-030: model download via hf CLI"]
    assert per[WORKER]["signatures"] == ["TEAM-030"]
    # the range did not touch pool.rs: untouched, with the signature it already carries
    assert per[POOL] == {"state": "untouched", "ok": True, "signatures": ["TEAM-022"],
                         "why": "untouched by the range, already signed TEAM-022"}
    docs = codequality.check_guides(rng)
    assert docs.passed, docs.summary
    guides = docs.details["guides"]
    assert guides["download guide"] == {
        "file": "docs/guides/models.md",
        "lines": ["docs/guides/models.md:4: llorch-pool models download qwen-0.5b"]}
    assert guides["worker spawning guide"]["file"] == "docs/guides/workers.md"
    trouble = guides["troubleshooting guide"]
    assert trouble["file"] == "docs/guides/when-it-breaks.md"
    assert any("not downloaded" in ln for ln in trouble["lines"])


@needs_git
def test_unfinished_checkpoint_fails_both_items(cp1):
    """Issue 18: a CP1 checkout with signed stubs and a file named "download-notes.md"."""
    repo, base = cp1
    commit(repo, {"README.md": "# llama-orch\n\nCP3 is next.\n",
                  "docs/download-notes.md": "# Download notes\n\nWe will use hf.\n"}, "notes")
    for rng in (gitrange.resolve_range(repo, base), gitrange.resolve_range(repo, "HEAD")):
        sig = codequality.check_signatures(rng)
        assert not sig.passed
        assert "changed none of the CP3 deliverables" in sig.summary
        docs = codequality.check_guides(rng)
        assert not docs.passed
        assert "no download guide (shows `llorch-pool models download <model>` in a code " \
               "block)" in docs.summary
        assert "no troubleshooting guide" in docs.summary


@needs_git
def test_changed_deliverable_must_be_signed_in_its_added_lines(cp1):
    repo, base = cp1
    files = cp3_files(repo)
    files[WORKER] = (repo / WORKER).read_text() + "pub fn list() {}\npub fn stop() {}\n"
    commit(repo, files, "CP3 without a signature in worker.rs")
    sig = codequality.check_signatures(gitrange.resolve_range(repo, base))
    assert not sig.passed
    assert (f"{WORKER}: changed by the range, but none of its 2 added line(s) carries a "
            "TEAM-NNN signature") in sig.summary
    assert MODELS not in sig.summary  # the signed one is not blamed


@needs_git
def test_untouched_unsigned_or_missing_deliverable_fails(cp1):
    repo, _ = cp1
    base = commit(repo, {POOL: "pub fn remote() {}\n"}, "pool.rs loses its signature")
    commit(repo, cp3_files(repo), "CP3, pool.rs untouched")
    sig = codequality.check_signatures(gitrange.resolve_range(repo, base))
    assert not sig.passed
    assert sig.summary == f"{POOL}: untouched by the range and carries no TEAM-NNN"
    sh_git(repo, "rm", "-q", POOL)
    commit(repo, {}, "pool.rs deleted")
    sig = codequality.check_signatures(gitrange.resolve_range(repo, base))
    assert sig.summary == f"{POOL}: does not exist at HEAD (the range deleted it)"


@needs_git
def test_guides_are_found_by_the_commands_they_show_not_by_words(cp1):
    repo, base = cp1
    plan = ("# Checkpoint 3\n\n## Work Units\n\n```bash\nllorch-pool models download "
            "qwen-0.5b\nllorch-pool worker spawn cpu --model qwen-0.5b\n```\n"
            "Model not downloaded? llorch-pool worker list\n")
    commit(repo, {
        "plans/03_CP3_AUTOMATION.md": plan,  # a plan shows every command: not a guide
        "docs/troubleshooting.md": "# Troubleshooting\n\n- [x] `llorch-pool worker spawn` "
                                   "works\n",  # inline, not shown in a code block
        "docs/list.md": "# Listing\n\n```\nllorch-pool worker list\n```\n",  # no failure
    }, "words, no guides")
    docs = codequality.check_guides(gitrange.resolve_range(repo, base))
    assert not docs.passed
    assert docs.details["plans_ignored"] == ["plans/03_CP3_AUTOMATION.md"]
    assert docs.details["guides"] == {}
    assert "checkpoint plans ignored: plans/03_CP3_AUTOMATION.md" in docs.summary


def test_fenced_lines_follow_markdown_fences():
    text = "a\n```bash\nx\n~~~\ny\n```\nz\n~~~~\nw\n~~~~\n"
    assert codequality.fenced_lines(text) == {3, 4, 5, 9}


# --------------------------------------------------------------------------- cargo


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLEAN_LIB = "pub fn add(a: u32, b: u32) -> u32 {\n    a + b\n}\n"


def workspace(root: Path, lib: str = CLEAN_LIB, deps: str = "") -> Path:
    write(root, {
        "Cargo.toml": '[workspace]\nmembers = ["crates/a"]\nresolver = "2"\n',
        "crates/a/Cargo.toml": f'[package]\nname = "a"\nversion = "0.1.0"\nedition = "2021"\n'
                               f"\n[dependencies]\n{deps}",
        "crates/a/src/lib.rs": lib,
    })
    return root


def dead_registry(root: Path) -> Path:
    """A workspace needing one crate from a crates-io replaced by a closed local port."""
    ws = workspace(root, deps='itoa = "1"\n')
    write(ws, {".cargo/config.toml": f'[source.crates-io]\nreplace-with = "dead"\n'
                                     f'[source.dead]\nregistry = "sparse+http://127.0.0.1:'
                                     f'{closed_port()}/"\n[net]\nretry = 0\n'})
    return ws


@pytest.fixture(scope="module")
def cargo_tmp(tmp_path_factory) -> dict[str, Path]:
    """One target dir for the module (builds are slow on shared cores) and an empty
    CARGO_HOME, so no cached index can stand in for the dead registry."""
    base = tmp_path_factory.mktemp("cargo")
    return {"target": base / "target", "home": base / "home", "base": base}


def run(ws: Path, cargo_tmp: dict[str, Path], args: list[str], offline: bool = False,
        **extra: str) -> cargocheck.CargoRun:
    env = cargocheck.cargo_env(cargo_tmp["target"], offline,
                               {**os.environ, "CARGO_HOME": str(cargo_tmp["home"]), **extra})
    env["CARGO_TARGET_DIR"] = str(cargo_tmp["target"])  # the module's, whatever the caller set
    return cargocheck.run_cargo(ws, args, env, timeout_s=600)


@needs_cargo
def test_clean_workspace_passes_fmt_and_clippy(tmp_path, cargo_tmp):
    ws = workspace(tmp_path / "clean")
    for kind, args in (("fmt", cargocheck.fmt_args()), ("clippy", cargocheck.clippy_args(False))):
        outcome = cargocheck.classify(run(ws, cargo_tmp, args), kind)
        assert outcome.status == "pass", outcome
    assert (cargo_tmp["target"] / "debug").is_dir()  # the build went to the given target dir


@needs_cargo
def test_lint_warning_fails_clippy_with_the_warning_shown(tmp_path, cargo_tmp):
    """The string literal quotes a network error: source snippets must not make it an error."""
    lib = 'pub fn msg() -> &\'static str {\n    return "failed to download from x";\n}\n'
    ws = workspace(tmp_path / "lint", lib)
    outcome = cargocheck.classify(run(ws, cargo_tmp, cargocheck.clippy_args(False)), "clippy")
    assert outcome.status == "fail", outcome
    assert outcome.summary.startswith("cargo clippy --all -- -D warnings: exit 101, 1 lint")
    assert outcome.shown[0] == "error: unneeded `return` statement"
    assert any("src/lib.rs:2" in ln for ln in outcome.shown)


@needs_cargo
def test_bad_formatting_fails_fmt_with_the_diff_shown(tmp_path, cargo_tmp):
    ws = workspace(tmp_path / "fmt", "pub fn add(a:u32,b:u32)->u32{a+b}\n")
    outcome = cargocheck.classify(run(ws, cargo_tmp, cargocheck.fmt_args()), "fmt")
    assert outcome.status == "fail"
    assert outcome.summary.endswith("exit 1, 1 file(s) not formatted")
    assert outcome.shown[0].startswith("Diff in ") and "crates/a/src/lib.rs" in outcome.shown[0]
    assert "+pub fn add(a: u32, b: u32) -> u32 {" in outcome.shown
    assert not any("\x1b" in ln for ln in outcome.shown)  # no colour codes in the report


@needs_cargo
def test_unreachable_registry_is_could_not_check_with_the_fix(tmp_path, cargo_tmp):
    ws = dead_registry(tmp_path / "dead")
    outcome = cargocheck.classify(run(ws, cargo_tmp, cargocheck.clippy_args(False)), "clippy")
    assert outcome.status == "error", outcome
    assert outcome.summary == ("cargo clippy --all -- -D warnings: cargo could not reach the "
                               "crates index or a dependency")
    assert "cargo fetch" in outcome.hint and "--cargo-offline" in outcome.hint
    assert any("failed to get `itoa`" in ln for ln in outcome.shown)
    # offline: --offline reaches clippy, cargo never touches the network and says what's missing
    offline = run(ws, cargo_tmp, cargocheck.clippy_args(True), offline=True)
    assert "--offline" in offline.argv and offline.argv.index("--offline") == 2
    outcome = cargocheck.classify(offline, "clippy")
    assert outcome.status == "error"
    assert outcome.summary.endswith("a dependency is not in the local cargo cache (offline)")
    assert "Updating" not in offline.stderr
    # formatting needs no dependency: offline fmt of the same workspace passes
    assert cargocheck.classify(run(ws, cargo_tmp, cargocheck.fmt_args(), offline=True),
                               "fmt").status == "pass"


@needs_cargo
def test_stale_lock_and_missing_toolchain_are_could_not_check(tmp_path, cargo_tmp):
    ws = workspace(tmp_path / "lock")
    write(ws, {"Cargo.lock": "version = 3\n"})  # lists no package: needs an update
    locked = run(ws, cargo_tmp, ["metadata", "--locked", "--format-version", "1"])
    outcome = cargocheck.classify(locked, "clippy")
    assert outcome.status == "error" and "Cargo.lock is out of date" in outcome.summary
    nochain = run(ws, cargo_tmp, cargocheck.clippy_args(False),
                  RUSTUP_TOOLCHAIN="llorch-no-such-toolchain")
    if nochain.returncode == 0:
        pytest.skip("cargo is not a rustup proxy here: RUSTUP_TOOLCHAIN changes nothing")
    outcome = cargocheck.classify(nochain, "clippy")
    assert outcome.status == "error" and "toolchain" in outcome.summary
    with pytest.raises(HarnessError, match="cargo is not on PATH"):
        cargocheck.run_cargo(ws, ["fmt"], {"PATH": str(tmp_path)})


def test_target_dir_is_one_per_checkout_under_the_pool(tmp_path):
    runtime = tmp_path / "pool" / ".runtime"
    a = cargocheck.target_dir(runtime, tmp_path / "llama-orch")
    assert a == cargocheck.target_dir(runtime, tmp_path / "x" / ".." / "llama-orch")
    assert a.parent == runtime / "cargo-target" and a.name.startswith("llama-orch-")
    assert a != cargocheck.target_dir(runtime, tmp_path / "other" / "llama-orch")
    env = cargocheck.cargo_env(a, True, {"PATH": "/bin"})
    assert env["CARGO_TARGET_DIR"] == str(a) and env["CARGO_NET_OFFLINE"] == "true"
    assert cargocheck.cargo_env(a, False, {"CARGO_TARGET_DIR": "/mine"})["CARGO_TARGET_DIR"] \
        == "/mine"  # the user's own choice wins


# --------------------------------------------------------------------------- merge


def test_merge_counts_could_not_check_as_not_passed_not_as_a_failure():
    item = ("Code Quality", "`cargo clippy --all` clean")
    doc = pool_doc("ws", "cuda", status={
        item: ("error", "could not check: cargo could not reach the crates index")})
    result = gatemerge.parse_result(doc, Path("ws.json"), name="ws")
    merged = gatemerge.merge([result], expect_pools=["ws"])
    row = next(r for r in merged.rows if (r.section, r.item) == item)
    assert row.cells["ws"].status == "error" and not row.ok
    assert merged.verdict == "fail"
    line = next(p for p in merged.problems if item[1] in p)
    assert line.startswith("ERROR Code Quality") and "an error is not a pass" in line
    assert not any(p.startswith("FAILED") for p in merged.problems)


# --------------------------------------------------------------------------- the gate


def run_gate(tmp: Path, repo: Path, *args: str, cargo_home: Path | None = None
             ) -> tuple[subprocess.CompletedProcess[str], dict]:
    """The Code Quality module of the gate as a user runs it, with --gate-json."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "PYTEST_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent),
                                   str(Path(str(CARGO)).parent), "/usr/bin", "/bin"])
    if cargo_home is not None:
        env["CARGO_HOME"] = str(cargo_home)
    env.pop("CARGO_TARGET_DIR", None)
    argv = [sys.executable, "-m", "pytest", str(TESTS_HW / "test_code_quality.py"), "-m", "cpu",
            "-p", "no:cacheprovider", "--pool-root", str(tmp / "pool"), "--basetemp",
            str(tmp / "bt"), "--llorch-repo", str(repo), "--gate-json", str(tmp / "g.json"),
            "-rA", *args]
    (tmp / "pool").mkdir(parents=True, exist_ok=True)
    res = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp, timeout=900,
                         check=False, stdin=subprocess.DEVNULL)
    doc = json.loads((tmp / "g.json").read_text())
    return res, doc


def _items(doc: dict) -> dict[str, dict]:
    return {r["item"]: r for r in doc["checklist"] if r["section"] == "Code Quality"}


@needs_git
@needs_cargo
def test_gate_passes_a_finished_checkpoint_and_caches_the_build(cp1, tmp_path):
    repo, base = cp1
    workspace(repo)
    commit(repo, cp3_files(repo), "CP3")
    res, doc = run_gate(tmp_path, repo, "--llorch-base", base)
    items = _items(doc)
    assert {k: v["status"] for k, v in items.items()} == dict.fromkeys(items, "pass"), \
        res.stdout[-5000:]
    assert f"range {base[:12]}.." in res.stdout  # the report shows the range and the lines
    assert f"{MODELS}:9: // TEAM-030: model download via hf CLI" in res.stdout
    assert "docs/guides/models.md:4: llorch-pool models download qwen-0.5b" in res.stdout
    target = cargocheck.target_dir(tmp_path / "pool" / ".runtime", repo)
    assert (target / "debug").is_dir() and not (repo / "target").exists()


@needs_git
@needs_cargo
def test_gate_on_an_offline_unfinished_checkpoint(cp1, tmp_path):
    """Issue 18 as reported: signatures and docs FAIL, clippy is an ERROR (could not check),
    the verdict is not a pass and the HTML says why."""
    repo, base = cp1
    dead_registry(repo)
    commit(repo, {"docs/download-notes.md": "# Download notes\n\nSoon.\n"}, "notes")
    res, doc = run_gate(tmp_path, repo, "--html", str(tmp_path / "r.html"),
                        "--self-contained-html", cargo_home=tmp_path / "cargo-home")
    items = _items(doc)
    statuses = {k: v["status"] for k, v in items.items()}
    assert statuses == {"`cargo fmt --all` clean": "pass", "`cargo clippy --all` clean": "error",
                        "Team signatures added": "fail", "Documentation updated": "fail"}, \
        res.stdout[-5000:]
    reason = items["`cargo clippy --all` clean"]["reasons"][0]
    assert reason.startswith("cpu: could not check: cargo clippy --all -- -D warnings: cargo "
                             "could not reach the crates index") and "cargo fetch" in reason
    assert doc["verdict"] == "fail" and res.returncode == 1
    assert "ERROR   `cargo clippy --all` clean" in res.stdout
    # the verdict names the class: two items the code failed, one cargo could not check
    assert ("CP3 gate verdict: FAIL (worker: 2 items; `cargo clippy --all` clean: cpu: "
            "could not check") in res.stdout
    # the report shows the item's name with its command as code, never raw backticks
    assert "not checked (<code>cargo clippy --all</code> clean: cpu: could not check" in \
        (tmp_path / "r.html").read_text()


@needs_git
@needs_cargo
def test_gate_without_a_base_on_a_detached_head_is_could_not_check(cp1, tmp_path):
    repo, _ = cp1
    workspace(repo)
    commit(repo, cp3_files(repo), "CP3")
    sh_git(repo, "checkout", "-q", "--detach")
    res, doc = run_gate(tmp_path, repo, "--cargo-offline", "-k", "signatures or clippy")
    items = _items(doc)
    assert items["Team signatures added"]["status"] == "error", res.stdout[-4000:]
    assert "pass --llorch-base REF" in items["Team signatures added"]["reasons"][0]
    assert items["`cargo clippy --all` clean"]["status"] == "pass"  # offline, no dependency
    assert "$ cargo clippy --offline --all -- -D warnings" in res.stdout
    assert doc["verdict"] == "incomplete"
    gate_items = {i["item"]: i for i in doc["items"]}
    assert gate_items["Team signatures added"]["reason"].startswith("could not check: ")
