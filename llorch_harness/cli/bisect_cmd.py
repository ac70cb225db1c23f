"""`llorch-harness bisect`: the first llama-orch commit that breaks a gate item.

Exit 0 when the first bad commit was found, 1 when skipped commits leave only a range, 2 on
bad input (a range that cannot be bisected, a --good that fails or a --bad that passes), 13
for an --item the checklist does not have, 130 when interrupted (the worktree and the lease
are gone then too).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llorch_harness.choices import check_name
from llorch_harness.cli.common import finite_seconds, int_in_range, sigterm_interrupts
from llorch_harness.pool.backends import BACKEND_NAMES

MAX_RUNS = 25


def add_arguments(b: argparse.ArgumentParser) -> None:
    """The bisect's options (shared with `llorch bisect --host`, which forwards them)."""
    b.add_argument("--llorch-repo", required=True, metavar="DIR",
                   help="the llama-orch clone (its working tree, index, branch and bisect "
                        "state are never touched)")
    b.add_argument("--good", required=True, metavar="REV", help="a commit where the items pass")
    b.add_argument("--bad", required=True, metavar="REV", help="a later commit where they fail")
    b.add_argument("--backend", required=True, metavar="BACKEND",
                   help=f"the worker backend to build and gate: {', '.join(BACKEND_NAMES)} (a "
                        "mistyped one is the backend exit status, with a did-you-mean)")
    b.add_argument("--item", action="append", default=[], metavar="NAME",
                   help="a gate checklist item to judge, as the checklist writes it "
                        "(repeatable; default: the items failing at --bad and passing at "
                        "--good, found by running the whole gate at both first)")
    b.add_argument("--runs", type=int_in_range(1, MAX_RUNS, "runs"), default=3, metavar="K",
                   help="gate runs per commit; an item is bad when it fails in more than "
                        "half of them (default 3)")
    b.add_argument("--build-cmd", metavar="CMD",
                   help="build command, run in the crate's directory with CARGO_TARGET_DIR "
                        "set (default: cargo build --release --features BACKEND --bin "
                        "llorch-BACKEND-candled)")
    b.add_argument("--gate-model", metavar="ID",
                   help="the gate model (default: the gate's, qwen-0.5b in the real lab)")
    b.add_argument("--gpu", type=int_in_range(0, 63, "gpu"), default=0,
                   help="device index for cuda/metal (default 0)")
    b.add_argument("--json", metavar="PATH", help="write the answer and the steps as JSON")
    b.add_argument("--html", metavar="PATH", help="write a self-contained HTML report")
    b.add_argument("--gate-suite", metavar="DIR",
                   help="the gate's tests (default: tests_hw of this harness checkout)")
    b.add_argument("--build-timeout", type=finite_seconds(allow_zero=False), default=3600.0,
                   metavar="S", help="limit per build (default 3600)")
    b.add_argument("--step-timeout", type=finite_seconds(allow_zero=False), default=3600.0,
                   metavar="S", help="limit per gate run (default 3600)")
    b.add_argument("--lease-dir", metavar="DIR",
                   help="host-wide GPU lease directory (default /tmp/llorch-harness-leases)")
    b.add_argument("--lease-wait", type=finite_seconds(), metavar="S",
                   help="seconds to wait for a GPU another run holds (default 60)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("bisect", help="find the first llama-orch commit that breaks a gate item",
                       description=__doc__)
    add_arguments(b)
    b.add_argument("--pool-root", metavar="DIR", default=argparse.SUPPRESS,
                   help="pool root: models, the worktree, the build cache (default: "
                        "$LLORCH_POOL_ROOT or cwd)")
    b.set_defaults(func=cmd_bisect)


def check_backend(args: argparse.Namespace) -> None:
    """A mistyped --backend: one line with a did-you-mean and the backend exit status (11),
    as in every other command, instead of argparse's usage text."""
    check_name("backend", args.backend, BACKEND_NAMES)


def cmd_bisect(args: argparse.Namespace) -> int:
    from llorch_harness.bisect import driver, render, report
    from llorch_harness.bisect.gatestep import gate_suite
    from llorch_harness.pool.paths import resolve_pool_root

    check_backend(args)
    json_path = report.check_target(Path(args.json), "--json") if args.json else None
    html_path = report.check_target(Path(args.html), "--html") if args.html else None
    opts = driver.BisectOptions(
        repo=Path(args.llorch_repo).expanduser(), good=args.good, bad=args.bad,
        backend=args.backend, pool_root=resolve_pool_root(getattr(args, "pool_root", None)),
        suite=gate_suite(args.gate_suite), items=tuple(args.item), runs=args.runs,
        build_cmd=args.build_cmd, gate_model=args.gate_model, gpu=args.gpu,
        build_timeout=args.build_timeout, step_timeout=args.step_timeout,
        lease_dir=args.lease_dir, lease_wait=args.lease_wait)
    with sigterm_interrupts():
        result = driver.run_bisect(opts)
    print()
    for line in report.terminal_lines(result):
        print(line)
    if json_path is not None:
        report.write_json(result, json_path)
        print(f"json: {json_path}")
    if html_path is not None:
        render.write_html(result, html_path)
        print(f"html: {html_path}")
    return 0 if result.first == result.last else 1


_FORWARDED = ("llorch_repo", "good", "bad", "backend", "runs", "build_cmd", "gate_model", "gpu",
              "gate_suite", "build_timeout", "step_timeout", "lease_dir", "lease_wait")


def forwarded_args(args: argparse.Namespace) -> list[str]:
    """The bisect's arguments rebuilt from checked values, `--flag=value` so no value is read
    as a flag there (`llorch bisect --host`); --json/--html are this side's."""
    words: list[str] = []
    for dest in _FORWARDED:
        value = getattr(args, dest, None)
        if value is not None:
            words.append(f"--{dest.replace('_', '-')}={value:g}" if isinstance(value, float)
                         else f"--{dest.replace('_', '-')}={value}")
    words += [f"--item={item}" for item in args.item]
    return words
