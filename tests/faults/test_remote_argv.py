"""Issue 20 #9: no argument is forwarded that was not parsed and checked.

`llorch pool` passed unknown arguments on to the remote `llorch-pool`, where argparse's
prefix matching turned `--pool-ro=/etc` into `--pool-root=/etc` and moved the pool.
Both halves are closed for the whole class:

- every parser of `llorch`, `llorch-pool` and `llorch-harness` (every subcommand, found by
  walking them) has prefix matching off, and no prefix of any long option resolves;
- `llorch pool` and `llorch pools` refuse an unknown argument with a usage error (exit 2)
  before ssh is started (a fake ssh logs any call); the `llorch pool` corpus cases are in
  corpus/remote_args.json;
- `llorch-pool` itself refuses abbreviations (the remote side);
- remote_args() emits only positionals and `--known-option[=value]` words.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from llorch_harness.cli import harness_main, llorch_main, pool_main

from .common import ANTI_HANG_S, BIN, LLORCH, LLORCH_POOL, clean_env, figure

PARSERS = {"llorch": llorch_main.build_parser, "llorch-pool": pool_main.build_parser,
           "llorch-harness": harness_main.build_parser}


def walk(parser: argparse.ArgumentParser, path: str
         ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")


def resolves(parser: argparse.ArgumentParser, token: str) -> bool:
    """Would argparse take `token` for one of the parser's options (3.11 tuple, 3.12 list)?"""
    found = parser._parse_optional(token)
    if found is None:
        return False
    if isinstance(found, list):
        return any(f[0] is not None for f in found)
    return found[0] is not None


@pytest.mark.parametrize("cli", sorted(PARSERS))
def test_no_prefix_of_any_option_is_accepted(cli: str) -> None:
    parsers = tests = 0
    accepted = []
    for path, parser in walk(PARSERS[cli](), cli):
        parsers += 1
        assert parser.allow_abbrev is False, f"{path}: allow_abbrev is on"
        longs = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
        for opt in sorted(longs):
            for cut in range(3, len(opt)):
                prefix = opt[:cut]
                if prefix in longs:
                    continue
                tests += 1
                for token in (prefix, f"{prefix}=/etc"):
                    if resolves(parser, token):
                        accepted.append(f"{path}: {token}")
    assert accepted == [], accepted[:20]
    figure("remote_argv", case=f"{cli}: option prefixes", parsers=parsers, tried=tests,
           accepted=len(accepted))


FAKE_SSH = """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_SSH_LOG"
exit 255
"""

POOLS_CASES = [
    ["pools", "models", "list", "--pool-ro=/etc"],
    ["pools", "worker", "list", "--pool-r", "/etc"],
    ["pools", "status", "--json", "--bogus"],
    ["pools", "models", "download", "m", "--forc"],
    ["pools", "list", "--pool-ro=/etc"],
    ["pools", "models", "catalog", "extra"],
    ["pool", "models", "list", "--host", "mac", "--pool-ro=/etc"],
    ["pool", "worker", "logs", "w", "--host", "mac", "--follo"],
    ["--pool-ro=/etc", "pool", "status", "--host", "mac"],
]


@pytest.fixture
def box(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    ssh = tmp_path / "bin" / "ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    pf = tmp_path / "pools.toml"
    pf.write_text('[pools.mac]\nhost = "mac.home.arpa"\nroot = "/srv/pool"\n')
    pf.chmod(0o600)
    return tmp_path


@pytest.mark.parametrize("argv", POOLS_CASES, ids=[" ".join(a) for a in POOLS_CASES])
def test_llorch_refuses_unknown_arguments_before_ssh(box: Path, argv: list[str]) -> None:
    env = clean_env(HOME=str(box), PATH=f"{box / 'bin'}:{BIN}:/usr/bin:/bin",
                    FAKE_SSH_LOG=str(box / "ssh.log"))
    r = subprocess.run([str(LLORCH), "--pools-file", str(box / "pools.toml"), *argv],
                       capture_output=True, text=True, timeout=ANTI_HANG_S, env=env, cwd=box,
                       stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ": error: " in ln or ln.startswith("error")]
    assert len(errors) == 1 and ("unrecognized arguments" in errors[0]
                                 or "invalid choice" in errors[0]), r.stderr
    assert not (box / "ssh.log").exists(), "ssh was started"
    figure("remote_argv", case=f"llorch {' '.join(argv)}", exit=r.returncode,
           ssh_started=int((box / "ssh.log").exists()))


REMOTE_SIDE = [
    ["--pool-ro=/etc", "status"],
    ["models", "list", "--pool-ro", "/etc"],
    ["worker", "list", "--js"],
    ["status", "--llorch-bin=/x"],
    ["worker", "stop", "--al"],
    ["models", "download", "tiny-qwen", "--forc"],
]


@pytest.mark.parametrize("argv", REMOTE_SIDE, ids=[" ".join(a) for a in REMOTE_SIDE])
def test_llorch_pool_refuses_abbreviations(tmp_path: Path, argv: list[str]) -> None:
    r = subprocess.run([str(LLORCH_POOL), *argv], capture_output=True, text=True,
                       timeout=ANTI_HANG_S, env=clean_env(LLORCH_POOL_ROOT=str(tmp_path)),
                       cwd=tmp_path, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing done
    figure("remote_argv", case=f"llorch-pool {' '.join(argv)}", exit=r.returncode,
           ssh_started=0)


SAMPLES = {"model_id": "tiny-qwen", "worker_id": "worker-cpu-0", "backend": "cpu",
           "--name": "A name", "--repo": "org/name", "--architecture": "qwen",
           "--backends": "cpu", "--model": "tiny-qwen", "--gpu": "0", "--port": "0",
           "--worker": "reference", "--llorch-bin-dir": "/opt/bin", "--ready-timeout": "5",
           "--worker-id": "worker-cpu-0", "--grace": "1", "--lines": "10"}


def test_remote_arguments_are_only_known_options() -> None:
    """Every word remote_args() builds is a checked positional or a known option."""
    checked = 0
    for key, (_text, opts) in llorch_main.COMMANDS.items():
        ns = argparse.Namespace()
        for o in opts:
            setattr(ns, o.dest, True if o.kind == "flag" else SAMPLES.get(o.name))
        words = llorch_main.remote_args(key, ns)
        head = [w for w in key if w is not None]
        assert words[:len(head)] == head
        names = {o.name for o in opts}
        for w in words[len(head):]:
            if w.startswith("-"):
                assert w.split("=", 1)[0] in names, (key, w)
            else:
                assert w in SAMPLES.values(), (key, w)
            checked += 1
    figure("remote_argv", case="remote_args words", commands=len(llorch_main.COMMANDS),
           words=checked)


def test_corpus_holds_the_issue_case() -> None:
    cases = json.loads((Path(__file__).with_name("corpus") / "remote_args.json").read_text())
    assert any(c["argv"][-1] == "--pool-ro=/etc" and c["expect"] == "refused" for c in cases)
