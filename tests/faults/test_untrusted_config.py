"""Issue 20 #8: a pools file decides what runs, so only a trusted one is ever loaded.

A `pools.toml` planted in a directory (with `ssh_config` naming a ProxyCommand, or a
`llorch_pool` command) ran commands when someone typed `llorch pool ... --host mac` there.
The rule (docs/remote.md): `--pools-file FILE`, else `pools.toml` in the pool root the
user *named* (`--pool-root`, `$LLORCH_POOL_ROOT`), else `~/.config/llorch/pools.toml`
(an absolute `$XDG_CONFIG_HOME`); never the current directory by default. Every pools
file, and every ssh config it names, must be a regular file owned by the user (or root)
and not writable by group or others; otherwise one line names the file and the fix.

A fake `ssh` on PATH logs its arguments and runs nothing; the planted files aim at a
canary file, which must never appear.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .common import ANTI_HANG_S, BIN, LLORCH, clean_env, figure

FAKE_SSH = """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_SSH_LOG"
echo "fake ssh: not executing" >&2
exit 255
"""


class Box:
    """HOME, a working directory with planted files, a fake ssh, a canary."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home, self.cwd, self.bin = root / "home", root / "cwd", root / "fakebin"
        for d in (self.home, self.cwd, self.bin):
            d.mkdir(parents=True)
        ssh = self.bin / "ssh"
        ssh.write_text(FAKE_SSH)
        ssh.chmod(0o755)
        self.log = root / "ssh.log"
        self.canary = root / "CANARY"

    def plant(self, directory: Path, mode: int = 0o644, host: str = "mac.home.arpa") -> Path:
        """A pools file whose pool `mac` would run `touch CANARY` two ways."""
        directory.mkdir(parents=True, exist_ok=True)
        cfg = directory / "evil_ssh_config"
        cfg.write_text(f"Host *\n  ProxyCommand touch {self.canary}\n")
        cfg.chmod(0o644)
        pf = directory / "pools.toml"
        pf.write_text("\n".join([
            'ssh_config = "evil_ssh_config"', "", "[pools.mac]", f"host = {json.dumps(host)}",
            f"llorch_pool = {json.dumps(f'sh -c {chr(39)}touch {self.canary}{chr(39)}')}",
            "backends = [\"cpu\"]", f"checkout = {json.dumps(str(self.root))}", ""]))
        pf.chmod(mode)
        return pf

    def run(self, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        e = clean_env(HOME=str(self.home), PATH=f"{self.bin}:{BIN}:/usr/bin:/bin",
                      FAKE_SSH_LOG=str(self.log))
        e.pop("XDG_CONFIG_HOME", None)
        e.update(env)
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=ANTI_HANG_S,
                              env=e, cwd=self.cwd, stdin=subprocess.DEVNULL, check=False)

    def ssh_calls(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path / "box")


def harness(*args: str) -> list[str]:
    return [str(BIN / "llorch-harness"), *args]


IMPLICIT = {
    "cwd": lambda b: ({}, b.cwd),
    "cwd-subdir-xdg-relative": lambda b: ({"XDG_CONFIG_HOME": "cfg"}, b.cwd / "cfg" / "llorch"),
}


@pytest.mark.parametrize("where", sorted(IMPLICIT))
def test_planted_pools_file_in_the_current_directory_is_never_loaded(box: Box,
                                                                      where: str) -> None:
    env, directory = IMPLICIT[where](box)
    box.plant(directory)
    runs = {
        "pool": box.run(str(LLORCH), "pool", "models", "list", "--host", "mac", **env),
        "pools": box.run(str(LLORCH), "pools", "models", "list", **env),
        "pools list": box.run(str(LLORCH), "pools", "list", **env),
        "gate run": box.run(*harness("gate", "run", "--pools", "mac", "--out",
                                     str(box.root / "out")), **env),
    }
    calls = box.ssh_calls()
    assert "evil_ssh_config" not in calls and "touch" not in calls, calls
    assert not box.canary.exists()
    # `--host mac` is then a plain ssh destination (the remote command runs under the
    # transport's hang-up wrapper, then its own words); the others find no pools file at all
    assert runs["pool"].returncode == 255 and "-- mac exec /bin/sh -c" in calls
    assert calls.rstrip().endswith(" llorch-pool models list"), calls
    for name in ("pools", "pools list", "gate run"):
        r = runs[name]
        assert r.returncode == 2 and "no pools file found" in r.stderr, (name, r.stderr)
        assert "Traceback" not in r.stderr
    figure("untrusted_config", case=f"planted in {where}", commands=len(runs),
           planted_loaded=0, canary=int(box.canary.exists()))


MODES = {"group-writable": 0o664, "world-writable": 0o646, "both": 0o666}
WHERE = ("pools-file-flag", "named-pool-root", "user-config")


def _place(box: Box, where: str, mode: int) -> tuple[list[str], dict[str, str], Path]:
    if where == "pools-file-flag":
        pf = box.plant(box.root / "conf", mode)
        return ["--pools-file", str(pf)], {}, pf
    if where == "named-pool-root":
        pf = box.plant(box.root / "pool", mode)
        return [], {"LLORCH_POOL_ROOT": str(box.root / "pool")}, pf
    pf = box.plant(box.home / ".config" / "llorch", mode)
    return [], {}, pf


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("where", WHERE)
def test_pools_file_writable_by_others_is_refused(box: Box, where: str, mode: str) -> None:
    flags, env, pf = _place(box, where, MODES[mode])
    r = box.run(str(LLORCH), *flags, "pool", "models", "list", "--host", "mac", **env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert str(pf) in r.stderr and "chmod go-w" in r.stderr, r.stderr
    assert box.ssh_calls() == "" and not box.canary.exists()
    figure("untrusted_config", case=f"{mode} pools file ({where})", commands=1,
           planted_loaded=0, canary=int(box.canary.exists()))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="giving a file to another user needs root")
@pytest.mark.parametrize("what", ["pools-file", "ssh-config"])
def test_file_of_another_user_is_refused(box: Box, what: str) -> None:
    pf = box.plant(box.root / "conf")
    victim = pf if what == "pools-file" else pf.parent / "evil_ssh_config"
    os.chown(victim, 65534, 65534)
    r = box.run(str(LLORCH), "--pools-file", str(pf), "pool", "models", "list", "--host", "mac")
    assert r.returncode == 2 and "owned by uid 65534" in r.stderr, r.stderr
    assert str(victim) in r.stderr
    assert box.ssh_calls() == "" and not box.canary.exists()
    figure("untrusted_config", case=f"{what} owned by another user", commands=1,
           planted_loaded=0, canary=int(box.canary.exists()))


def test_ssh_config_writable_by_others_is_refused(box: Box) -> None:
    pf = box.plant(box.root / "conf")
    (pf.parent / "evil_ssh_config").chmod(0o666)
    r = box.run(str(LLORCH), "--pools-file", str(pf), "pool", "models", "list", "--host", "mac")
    assert r.returncode == 2 and "ssh config file" in r.stderr and "chmod go-w" in r.stderr
    assert box.ssh_calls() == ""
    figure("untrusted_config", case="ssh config writable by others", commands=1,
           planted_loaded=0, canary=int(box.canary.exists()))


@pytest.mark.parametrize("where", WHERE)
def test_trusted_pools_file_is_used(box: Box, where: str) -> None:
    """The control: the same file, owned by the user and 0644, is loaded and used (the
    fake ssh only logs, so the canary still cannot appear)."""
    flags, env, pf = _place(box, where, 0o644)
    r = box.run(str(LLORCH), *flags, "pool", "models", "list", "--host", "mac", **env)
    assert r.returncode == 255, r.stderr  # the fake ssh's status
    assert f"-F {pf.parent / 'evil_ssh_config'}" in box.ssh_calls()
    assert not box.canary.exists()
