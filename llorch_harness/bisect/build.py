"""The worker built at one commit, the way the crate is built there, cached in the pool.

Why a cache keyed by (commit, backend, build command): a rerun, or a second bisect over the
same range, must not spend another release build on a commit it has built; the key holds
everything that decides the binary. Only a build that produced the binary is cached: a
failed build may have failed for a reason of the machine (a full disk, the network), so it
is tried again next time. The binary is copied out of the target directory, because the
next commit's build replaces it there. `CARGO_TARGET_DIR` is one directory per backend in
the pool root, kept between commits and bisects, so each build is incremental.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llorch_harness.bisect.child import run_child
from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import atomic_write_text
from llorch_harness.pool.backends import BACKENDS

BUILD_TIMEOUT_S = 3600.0
CRATE_PACKAGE = "llorch-candled"  # the crate's package name (bin/llorch-candled at CP3)
_MAX_MANIFESTS = 500


def binary_name(backend: str) -> str:
    """The backend's current binary name (llorch-BACKEND-candled)."""
    return BACKENDS[backend].binaries[0]


def default_build_command(backend: str) -> list[str]:
    return ["cargo", "build", "--release", "--features", backend, "--bin",
            binary_name(backend)]


def parse_build_command(text: str | None, backend: str) -> list[str]:
    """--build-cmd as words (split like a shell would, run without one); default cargo's."""
    if text is None:
        return default_build_command(backend)
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise HarnessError(f"--build-cmd {text!r}: {exc}", "quote it as for a shell",
                           exit_code=2) from None
    if not words:
        raise HarnessError("--build-cmd is empty", "e.g. --build-cmd 'cargo build --release'",
                           exit_code=2)
    return words


@dataclass(frozen=True)
class BuildOutcome:
    """What one commit's build gave: a binary (built now or cached) or why none."""

    commit: str
    ok: bool
    cached: bool
    seconds: float  # the build's time; 0 when cached
    binary: Path | None
    detail: str  # "" when ok; else the reason the commit is skipped
    log: Path | None = None
    crate_dir: str | None = None


def cache_key(commit: str, backend: str, command: list[str]) -> str:
    raw = json.dumps([commit, backend, command]).encode()
    return f"{commit[:12]}-{backend}-{hashlib.sha256(raw).hexdigest()[:12]}"


def find_crate(tree: Path, backend: str) -> Path | None:
    """The directory whose Cargo.toml builds `llorch-BACKEND-candled` at this commit: a
    `[[bin]]` of that name, else the `llorch-candled` package; None when there is none."""
    want = binary_name(backend)
    by_package: Path | None = None
    manifests = sorted(p for p in tree.rglob("Cargo.toml")
                       if "target" not in p.relative_to(tree).parts)[:_MAX_MANIFESTS]
    for manifest in manifests:
        try:
            doc = tomllib.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        bins = doc.get("bin")
        if isinstance(bins, list) and any(isinstance(b, dict) and b.get("name") == want
                                          for b in bins):
            return manifest.parent
        package = doc.get("package")
        if isinstance(package, dict) and package.get("name") == CRATE_PACKAGE \
                and by_package is None:
            by_package = manifest.parent
    return by_package


class Builder:
    """Builds commits of one bisect: one backend, one command, one cache."""

    def __init__(self, cache_dir: Path, target_dir: Path, backend: str, command: list[str],
                 env: Mapping[str, str], timeout: float = BUILD_TIMEOUT_S) -> None:
        self.cache_dir = cache_dir
        self.target_dir = target_dir
        self.backend = backend
        self.command = command
        self.env = env
        self.timeout = timeout

    def cached(self, commit: str) -> BuildOutcome | None:
        entry = self.cache_dir / cache_key(commit, self.backend, self.command)
        binary = entry / binary_name(self.backend)
        if not (entry / "build.json").is_file() or not binary.is_file():
            return None
        return BuildOutcome(commit, True, True, 0.0, binary, "", entry / "build.log")

    def build(self, commit: str, tree: Path, log: Path) -> BuildOutcome:
        """The cached binary, else a build in the crate's directory of `tree`."""
        hit = self.cached(commit)
        if hit is not None:
            return hit
        crate = find_crate(tree, self.backend)
        if crate is None:
            return BuildOutcome(commit, False, False, 0.0, None,
                                f"no crate builds {binary_name(self.backend)} at this commit "
                                f"(no Cargo.toml with that [[bin]] or package "
                                f"{CRATE_PACKAGE})", log)
        rel = crate.relative_to(tree).as_posix() or "."
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ cd {shlex.quote(rel)} && {shlex.join(self.command)}\n")
        env = {**self.env, "CARGO_TARGET_DIR": str(self.target_dir)}
        self.target_dir.mkdir(parents=True, exist_ok=True)
        try:
            res = run_child(self.command, cwd=crate, env=env, log=log, timeout=self.timeout)
        except FileNotFoundError:
            return BuildOutcome(commit, False, False, 0.0, None,
                                f"build command {self.command[0]!r} not found", log, rel)
        if res.timed_out:
            return BuildOutcome(commit, False, False, res.seconds, None,
                                f"build ran past {self.timeout:g} s", log, rel)
        if res.returncode != 0:
            return BuildOutcome(commit, False, False, res.seconds, None,
                                f"build failed (exit {res.returncode}): {_last_error(log)}",
                                log, rel)
        return self._store(commit, res.seconds, log, rel)

    def _store(self, commit: str, seconds: float, log: Path, rel: str) -> BuildOutcome:
        built = self.target_dir / "release" / binary_name(self.backend)
        if not built.is_file():
            return BuildOutcome(commit, False, False, seconds, None,
                                f"the build wrote no {built}", log, rel)
        entry = self.cache_dir / cache_key(commit, self.backend, self.command)
        tmp = entry.with_name(entry.name + f".tmp{time.monotonic_ns()}")
        tmp.mkdir(parents=True)
        shutil.copy2(built, tmp / built.name)
        shutil.copy2(log, tmp / "build.log")
        atomic_write_text(tmp / "build.json", json.dumps(
            {"commit": commit, "backend": self.backend, "command": self.command,
             "crate_dir": rel, "seconds": round(seconds, 3)}, indent=2))
        if entry.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # another bisect stored it meanwhile
        else:
            tmp.rename(entry)
        return BuildOutcome(commit, True, False, seconds, entry / built.name, "", log, rel)


def _last_error(log: Path) -> str:
    """cargo's first `error` line, else the log's last line (what the table shows)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()
                 if ln.strip()][1:]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if ln.startswith("error")]
    shown = errors[0] if errors else (lines[-1] if lines else "no output")
    return shown[:200]
