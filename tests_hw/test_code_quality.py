"""CP3 gate, Code Quality: checks on the llama-orch checkout given by --llorch-repo."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from gatehelpers import expect, pool_level

from llorch_harness.plugin.labs import redact

SECTION = "Code Quality"
CARGO_TIMEOUT_S = 1800.0
DELIVERABLES = (
    "bin/pool-ctl/src/commands/models.rs",
    "bin/pool-ctl/src/commands/worker.rs",
    "bin/llorch-ctl/src/commands/pool.rs",
)
SIGNATURE_RE = re.compile(r"TEAM-\d+")
# The CP3 deliverables' three guides: a markdown file whose name or a heading names the topic.
GUIDES = {
    "download guide": re.compile(r"download", re.IGNORECASE),
    "worker spawning guide": re.compile(r"spawn", re.IGNORECASE),
    "troubleshooting guide": re.compile(r"troubleshoot", re.IGNORECASE),
}
SKIP_DIRS = {".git", "target", "node_modules", ".venv"}


@pytest.fixture(scope="module")
def repo(lab) -> Path:
    if not lab.settings.llorch_repo:
        pytest.skip("no llama-orch checkout: pass --llorch-repo DIR (or LLORCH_REPO) to run "
                    "the Code Quality items")
    path = Path(lab.settings.llorch_repo).expanduser()
    if not path.is_dir():
        pytest.fail(f"--llorch-repo {path} is not a directory", pytrace=False)
    return path


def _cargo(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cargo = shutil.which("cargo")
    expect(cargo is not None, "cargo on PATH", "not found", "install Rust (rustup) on this pool")
    return subprocess.run([str(cargo), *args], cwd=repo, capture_output=True, text=True,
                          timeout=CARGO_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)


def _show(res: subprocess.CompletedProcess[str]) -> str:
    return redact(f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


@pytest.mark.gate(SECTION, "`cargo fmt --all` clean")
@pool_level
def test_cargo_fmt_clean(repo, gate_record):
    res = _cargo(repo, "fmt", "--all", "--", "--check")
    gate_record["command"] = "cargo fmt --all -- --check"
    expect(res.returncode == 0, "`cargo fmt --all -- --check` exit 0 (no diff)", _show(res),
           str(repo))


@pytest.mark.gate(SECTION, "`cargo clippy --all` clean")
@pool_level
def test_cargo_clippy_clean(repo, gate_record):
    """Clean means no warning either: -D warnings."""
    res = _cargo(repo, "clippy", "--all", "--", "-D", "warnings")
    gate_record["command"] = "cargo clippy --all -- -D warnings"
    expect(res.returncode == 0, "`cargo clippy --all -- -D warnings` exit 0", _show(res),
           str(repo))


@pytest.mark.gate(SECTION, "Team signatures added")
@pool_level
def test_team_signatures(repo, gate_record):
    found, missing = {}, []
    for rel in DELIVERABLES:
        path = repo / rel
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        sigs = sorted(set(SIGNATURE_RE.findall(text)))
        if sigs:
            found[rel] = sigs
        else:
            missing.append(rel + ("" if path.is_file() else " (file missing)"))
    gate_record["signatures"] = found
    expect(not missing, "a TEAM-NNN signature in every CP3 deliverable", ", ".join(missing),
           str(repo))


def _markdown_files(repo: Path) -> list[Path]:
    out = []
    for path in repo.rglob("*.md"):
        if not SKIP_DIRS.intersection(path.relative_to(repo).parts):
            out.append(path)
    return out


@pytest.mark.gate(SECTION, "Documentation updated")
@pool_level
def test_documentation_present(repo, gate_record):
    """The three guides of the CP3 deliverables: download, worker spawning, troubleshooting."""
    files = _markdown_files(repo)
    found: dict[str, str] = {}
    for name, pattern in GUIDES.items():
        for path in files:
            try:
                headings = [ln for ln in path.read_text(encoding="utf-8", errors="replace")
                            .splitlines() if ln.startswith("#")]
            except OSError:
                continue
            if pattern.search(path.name) or any(pattern.search(h) for h in headings):
                found[name] = str(path.relative_to(repo))
                break
    gate_record["guides"] = found
    missing = [n for n in GUIDES if n not in found]
    expect(not missing, "download, worker spawning and troubleshooting guides",
           "missing: " + ", ".join(missing), str(repo))
