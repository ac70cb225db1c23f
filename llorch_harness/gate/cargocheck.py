"""`cargo fmt` and `cargo clippy` on the llama-orch checkout, and what their outcome means.

Why a classification: cargo exits 101 both for a lint and for a crates index it cannot
reach, and a gate that calls the second "clippy warnings" tells an offline lab its code is
broken when nothing was checked (issue 18). Here an outcome is `pass`, `fail` (lints or a
format diff, the first ones shown) or `error` (could not check: toolchain, network, registry,
lock file, workspace, deadline; the reason says how to fix it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llorch_harness.errors import HarnessError
from llorch_harness.redaction import redact

CARGO_TIMEOUT_S = 1800.0
SHOWN_LINES = 40
TARGET_SUBDIR = ("cargo-target",)  # under the pool's .runtime/
_ANSI_RE = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|\([A-Za-z0-9])")
# A diagnostic's source lines (`2 |`, `  |`), suggestions (`2 -`, `2 +`, `2 ~`), location and
# notes: they quote the code, which may say anything ("failed to download").
_SNIPPET_RE = re.compile(r"^\s*\d*\s*[|]|^\s*\d+\s*[-+~]|^\s*-->|^\s*= |^\s*\.\.\.$")

FETCH_HINT = ("run `cargo fetch` in the checkout while online, then rerun with --cargo-offline; "
              "or vendor the dependencies (`cargo vendor`) or point crates-io at a reachable "
              "mirror in .cargo/config.toml")
TOOLCHAIN_HINT = "install Rust with rustup, then `rustup component add clippy rustfmt`"


@dataclass(frozen=True)
class Problem:
    pattern: re.Pattern[str]
    what: str
    hint: str
    needs: re.Pattern[str] | None = None  # counts only when this also appears (offline mode)


_OFFLINE = re.compile(r"offline mode|--offline|--frozen")
PROBLEMS: tuple[Problem, ...] = (
    Problem(re.compile(r"no such (?:command|subcommand): `?(?:clippy|fmt)|is not installed for "
                       r"the toolchain|toolchain '[^']+' is not installed|rustup could not choose"
                       r"|no default toolchain|could not execute process .*(?:clippy|rustfmt)"),
            "the Rust toolchain (cargo, clippy or rustfmt) is missing", TOOLCHAIN_HINT),
    Problem(re.compile(r"lock file .*needs to be updated but --(?:locked|frozen|offline)"
                       r"|cannot update the lock file"),
            "Cargo.lock is out of date and cargo may not update it here",
            "update Cargo.lock while online (`cargo update --workspace`), commit it, then "
            "`cargo fetch`"),
    Problem(re.compile(r"no matching package named|failed to select a version"),
            "a dependency is not in the local cargo cache (offline)", FETCH_HINT, _OFFLINE),
    Problem(re.compile(r"failed to get `[^`]+` as a dependency|failed to (?:download|fetch|load "
                       r"source|query replaced source|update)|download of \S+ failed|could not "
                       r"resolve host|couldn't resolve host|failed to connect|could not connect|"
                       r"connection refused|spurious network error|unable to update registry|"
                       r"--offline was specified|network failure"),
            "cargo could not reach the crates index or a dependency", FETCH_HINT),
    Problem(re.compile(r"could not find `Cargo\.toml`"),
            "the checkout holds no Cargo workspace",
            "--llorch-repo must be the llama-orch checkout root (the directory with Cargo.toml)"),
    Problem(re.compile(r"No space left on device|Read-only file system"),
            "cargo could not write its build files", "free space under the pool root"),
)


@dataclass
class CargoRun:
    argv: list[str]
    returncode: int | None  # None: killed at the deadline
    stdout: str
    stderr: str
    target_dir: str
    timeout_s: float = CARGO_TIMEOUT_S

    @property
    def command(self) -> str:
        return " ".join(["cargo", *self.argv[1:]])


@dataclass
class CargoOutcome:
    status: str  # pass | fail | error
    summary: str
    shown: list[str] = field(default_factory=list)
    hint: str | None = None


def target_dir(runtime_dir: Path, repo: Path) -> Path:
    """One cached target directory per checkout: a name from the path, and its hash."""
    real = str(repo.expanduser().resolve())
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(real).name)[:40] or "repo"
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return runtime_dir.joinpath(*TARGET_SUBDIR, f"{name}-{digest}")


def fmt_args() -> list[str]:
    return ["fmt", "--all", "--", "--check", "--color", "never"]


def clippy_args(offline: bool) -> list[str]:
    """cargo's global `--offline` does not reach clippy (an external subcommand): it goes
    after `clippy`, where cargo-clippy hands it to `cargo check`."""
    return ["clippy", *(["--offline"] if offline else []), "--all", "--", "-D", "warnings"]


def cargo_env(target: Path, offline: bool, base: Mapping[str, str] | None = None
              ) -> dict[str, str]:
    """The caller's environment, the cached target dir (an explicit CARGO_TARGET_DIR wins),
    no colours, and CARGO_NET_OFFLINE for --cargo-offline (`cargo fmt` takes no --offline)."""
    env = dict(os.environ if base is None else base)
    if not env.get("CARGO_TARGET_DIR"):
        env["CARGO_TARGET_DIR"] = str(target)
    env["CARGO_TERM_COLOR"] = "never"
    if offline:
        env["CARGO_NET_OFFLINE"] = "true"
    return env


def run_cargo(repo: Path, args: list[str], env: Mapping[str, str], *,
              timeout_s: float = CARGO_TIMEOUT_S) -> CargoRun:
    """cargo ARGS in the checkout, in its own process group (killed whole at the deadline).
    No cargo at all is a HarnessError: the check could not run."""
    cargo = shutil.which("cargo", path=env.get("PATH"))
    if cargo is None:
        raise HarnessError("cargo is not on PATH", TOOLCHAIN_HINT)  # could not check
    argv = [cargo, *args]
    proc = subprocess.Popen(argv, cwd=repo, env=dict(env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    code: int | None
    try:
        out, err = proc.communicate(timeout=timeout_s)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        out, err = _stop(proc)
        code = None
    except BaseException:  # Ctrl-C or SIGTERM: no rustc left behind
        _stop(proc)
        raise
    return CargoRun(argv, code, _clean(out), _clean(err), str(env.get("CARGO_TARGET_DIR")),
                    timeout_s)


def _stop(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Kill cargo's whole process group (rustc, clippy-driver, build scripts) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        return proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # a grandchild that left the group holds the pipes
        proc.kill()
        proc.wait()
        return b"", b""


def _clean(raw: bytes) -> str:
    return redact(_ANSI_RE.sub("", raw.decode("utf-8", "replace")))


def _cargo_lines(text: str) -> str:
    """cargo's own messages: diagnostics' source snippets (which may quote anything) left out."""
    return "\n".join(ln for ln in text.splitlines() if not _SNIPPET_RE.match(ln))


def could_not_check(run: CargoRun) -> CargoOutcome | None:
    """An `error` outcome when cargo says it could not run the check, else None."""
    if run.returncode is None:
        return CargoOutcome("error", f"{run.command} ran past {run.timeout_s:g} s",
                            _head(run.stderr), f"rerun; {run.target_dir} keeps what was built")
    if run.returncode == 0:
        return None
    text = _cargo_lines(run.stderr)
    for p in PROBLEMS:
        if p.pattern.search(text) and (p.needs is None or p.needs.search(text)):
            return CargoOutcome("error", f"{run.command}: {p.what}", _error_lines(run.stderr),
                                p.hint)
    return None


def classify(run: CargoRun, kind: str) -> CargoOutcome:
    """pass (exit 0), error (could not check) or fail with the first diagnostics shown."""
    error = could_not_check(run)
    if error is not None:
        return error
    if run.returncode == 0:
        return CargoOutcome("pass", f"{run.command}: exit 0")
    if kind == "fmt":
        files = sorted(set(re.findall(r"^Diff in (.+?):\d+:", run.stdout, re.MULTILINE)))
        shown = _head(run.stdout) or _head(run.stderr)
        what = (f"{len(files)} file(s) not formatted" if files
                else "rustfmt could not format the code")
        return CargoOutcome("fail", f"{run.command}: exit {run.returncode}, {what}", shown)
    diags = diagnostics(run.stderr)
    what = f"{len(diags)} lint(s)/error(s)" if diags else "failed"
    shown = [ln for block in diags for ln in block][:SHOWN_LINES] or _head(run.stderr)
    return CargoOutcome("fail", f"{run.command}: exit {run.returncode}, {what}", shown)


_DIAG_START = re.compile(r"^(?:warning|error)(?:\[[^\]]+\])?: ")
_SUMMARY = re.compile(r"^(?:warning|error): (?:`[^`]+` \(.*\) generated|could not compile|"
                      r"build failed|aborting due to)")


def diagnostics(stderr: str) -> list[list[str]]:
    """The compiler's warnings and errors as blocks (first line plus its snippet)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in stderr.splitlines():
        if _DIAG_START.match(line):
            current = None if _SUMMARY.match(line) else [line]
            if current is not None:
                blocks.append(current)
        elif current is not None and line.strip():
            current.append(line)
        elif not line.strip():
            current = None
    return blocks


def _head(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()][:SHOWN_LINES]


def _error_lines(stderr: str) -> list[str]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()
             and not ln.lstrip().startswith(("Updating", "Blocking", "Downloading"))]
    return lines[:SHOWN_LINES]
