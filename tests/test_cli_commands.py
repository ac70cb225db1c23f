"""`llorch-pool` and `llorch pool(s)` are built from the same command definitions (issue 13).

Both parsers call each command's one argument function (cli/pool_commands.py), so they
offer the same commands and options; what `llorch pool ... --host H` forwards, parsed by
`llorch-pool`, gives exactly what the same words give `llorch-pool` directly.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from llorch_harness.cli import llorch_main, pool_main
from llorch_harness.cli.pool_commands import COMMANDS, PoolCommand, forwarded_opts
from llorch_harness.errors import HarnessError

LLORCH_ONLY = {"--host", "--remote-root", "--timeout", "--pools-file", "--pool-root",
               "--connect-timeout", "--dry-run", "-h", "--help"}


def leaf(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    """The subparser reached by `words` (e.g. ["worker", "spawn"])."""
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def options(parser: argparse.ArgumentParser) -> dict[str, tuple[object, ...]]:
    """Every argument: option strings (or dest), with its nargs, choices and whether required."""
    out: dict[str, tuple[object, ...]] = {}
    for a in parser._actions:
        if set(a.option_strings) & LLORCH_ONLY or isinstance(a, argparse._SubParsersAction):
            continue
        name = "/".join(a.option_strings) or a.dest
        out[name] = (a.nargs, tuple(a.choices or ()), a.required, type(a).__name__)
    return out


def test_both_command_lines_offer_the_same_commands_and_options() -> None:
    local, remote = pool_main.build_parser(), llorch_main.build_parser()
    for c in COMMANDS:
        mine = options(leaf(local, c.words))
        theirs = options(leaf(remote, ["pool", *c.words]))
        assert mine == theirs, c.words
        if c.fanout:
            assert options(leaf(remote, ["pools", *c.words])) == mine, c.words
        else:
            with pytest.raises(KeyError):
                leaf(remote, ["pools", *c.words])


# argument lists a user might give each command (ids valid, every option at least once)
SAMPLES: dict[tuple[str | None, str], list[list[str]]] = {
    ("models", "download"): [["tiny-qwen"], ["qwen-0.5b", "--force", "--stall-timeout", "2.5"],
                              ["--all", "--json"]],
    ("models", "verify"): [["tiny-qwen"], ["tiny-qwen", "--json"]],
    ("models", "catalog"): [[], ["--json"]],
    ("models", "list"): [[], ["--json"]],
    ("models", "register"): [["m1", "--name", "A name; $(x)", "--repo", "org/m1",
                              "--architecture", "qwen2"],
                             ["m2", "--name=-dash", "--repo", "org/m2", "--architecture",
                              "llama", "--backends", "cpu,cuda", "--json"]],
    ("models", "unregister"): [["m1"]],
    ("worker", "spawn"): [["cpu", "--model", "tiny-qwen"],
                          ["cuda", "--model", "qwen-0.5b", "--gpu", "3", "--port", "0",
                           "--worker", "llorch", "--llorch-bin-dir", "/opt/llorch bin",
                           "--ready-timeout", "7", "--worker-id", "w-1", "--json"],
                          ["metal", "--model", "tiny-qwen", "--lease-dir", "/var/leases x",
                           "--lease-wait", "0"]],
    ("worker", "list"): [[], ["--json"]],
    ("worker", "stop"): [["worker-cpu-0"], ["--all", "--grace", "0", "--json"]],
    ("worker", "logs"): [["worker-cpu-0"], ["worker-cpu-0", "-n", "7", "-f"],
                         ["worker-cpu-0", "--lines", "0", "--follow", "--pretty"]],
    ("worker", "reap"): [[], ["--grace", "1.5", "--all-pools"]],
    (None, "status"): [[], ["--json", "--llorch-bin-dir", "/x"]],
    (None, "leases"): [[], ["--all", "--json", "--lease-dir", "/tmp/l"]],
}


def cases() -> Iterator[tuple[PoolCommand, list[str]]]:
    for c in COMMANDS:
        for argv in SAMPLES[c.key]:
            yield c, argv


def test_every_command_has_samples() -> None:
    assert set(SAMPLES) == {c.key for c in COMMANDS}


def parsed(ns: argparse.Namespace) -> dict[str, object]:
    return {k: v for k, v in vars(ns).items() if k != "func"}


@pytest.mark.parametrize(("command", "argv"), list(cases()),
                         ids=[" ".join([*c.words, *a]) for c, a in cases()])
def test_forwarded_arguments_mean_the_same_there(command: PoolCommand, argv: list[str]) -> None:
    """`llorch pool CMD ARGS --host H` sends words that `llorch-pool` parses exactly as it
    parses `llorch-pool CMD ARGS`: same values, same defaults, nothing lost or added."""
    ns = llorch_main.build_parser().parse_args(["pool", *command.words, *argv, "--host", "mac"])
    sent = llorch_main.remote_args(command.key, ns)
    local = pool_main.build_parser()
    assert parsed(local.parse_args(sent)) == parsed(local.parse_args([*command.words, *argv]))
    for word in sent[len(command.words):]:  # an option is always `--name[=value]`
        assert not word.startswith("-") or word.startswith("--"), sent


def test_ids_are_checked_before_anything_is_forwarded() -> None:
    for words, what in ((["models", "download", "../x"], "model id"),
                        (["worker", "logs", "a/b"], "worker id"),
                        (["worker", "spawn", "gpu0", "--model", "m"], "backend"),
                        (["worker", "spawn", "cpu", "--model", "$(x)"], "model id"),
                        (["models", "register", "m", "--name", "n", "--repo", "no-slash",
                          "--architecture", "q"], "repo id")):
        ns = llorch_main.build_parser().parse_args(["pool", *words, "--host", "mac"])
        with pytest.raises(HarnessError) as info:
            llorch_main.remote_args((words[0], words[1]), ns)
        code = 11 if what == "backend" else 2  # a mistyped name: choices.EXIT_CODES
        assert info.value.exit_code == code and what in info.value.message, info.value.message


def test_a_positional_without_a_remote_check_is_refused() -> None:
    """A bare word that no check vouches for could read as an option on the pool."""
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("anything")

    with pytest.raises(TypeError, match="no remote check"):
        forwarded_opts(PoolCommand("x", "y", "h", add, "m:f"))
