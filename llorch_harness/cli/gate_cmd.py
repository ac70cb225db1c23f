"""`llorch-harness gate merge|run`: one CP3 verdict across pools.

`merge` judges per-pool `--gate-json` files; `run` produces them over ssh first. Both exit
0 only on a merged pass, 1 on a fail, 2 on bad input (one line naming the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from llorch_harness.cli.common import require_subcommand, sigterm_interrupts
from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import refuse_non_regular_target
from llorch_harness.gate import merge as gatemerge
from llorch_harness.gate import run as gaterun


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number of hours, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _add_outputs(p: argparse.ArgumentParser, default_html: str | None) -> None:
    p.add_argument("--html", metavar="PATH", default=default_html,
                   help="write the merged checklist as HTML"
                   + (f" (default {default_html})" if default_html else ""))
    p.add_argument("--json", metavar="PATH", help="write the merged result as JSON")
    p.add_argument("--max-age", metavar="HOURS", type=_hours,
                   default=gatemerge.DEFAULT_MAX_AGE_H,
                   help=f"results older than this are stale and fail the verdict "
                   f"(default {gatemerge.DEFAULT_MAX_AGE_H:g})")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `gate merge` and `gate run` to the `llorch-harness` subcommands."""
    gate = sub.add_parser("gate", help="one CP3 verdict across pools (merge, run over ssh)")
    gate.set_defaults(func=require_subcommand(gate))
    gsub = gate.add_subparsers(dest="gate_command", metavar="ACTION")

    m = gsub.add_parser(
        "merge", help="merge per-pool --gate-json results into one verdict and report",
        description="Exit 0 only when every required item passed where it is required "
        "(Metal items on a metal pool, CUDA items on a cuda pool, pool-level items on every "
        "pool); missing pools, stale results and skipped required items fail.")
    m.add_argument("results", nargs="*", metavar="RESULT",
                   help="a pool's --gate-json file, or NAME=PATH to name the pool (none: "
                   "every --expect-pools pool is reported missing)")
    _add_outputs(m, None)
    m.add_argument("--expect-pools", metavar="A,B",
                   help="pools that must be present (comma list), e.g. mac,workstation")
    m.add_argument("--report", action="append", default=[], metavar="POOL=PATH",
                   help="link POOL's HTML report (default: the .html beside its JSON)")
    m.add_argument("--perf", action="append", default=[], metavar="PATH",
                   help="a pool's performance results store or `llorch-harness history "
                   "--export` file (repeatable): its history beside the gate JSONs' records")
    m.add_argument("--model-support", metavar="PATH",
                   help="write CP4's MODEL_SUPPORT.md (the model x backend matrix) from the "
                   "results' model_runs (the gate run with --gate-models); none: exit 2, "
                   "nothing written")
    m.set_defaults(func=cmd_merge)

    r = gsub.add_parser(
        "run", help="run the gate on pools over ssh in parallel, fetch the results, merge",
        description="Each pool runs `.venv/bin/pytest -m BACKENDS --require-backend ...` in "
        "its `checkout` (pools file) with its `env`; results land in --out, then are merged.")
    r.add_argument("--pools", required=True, metavar="A,B",
                   help="pool names from the pools file, e.g. mac,workstation")
    r.add_argument("--pools-file", metavar="FILE",
                   help="pools file (default: pools.toml in the pool root, else "
                   "~/.config/llorch/pools.toml)")
    r.add_argument("--out", metavar="DIR", default="reports",
                   help="where the per-pool results and the merged report go (default reports)")
    r.add_argument("--timeout", metavar="S", type=_seconds, default=gaterun.DEFAULT_TIMEOUT_S,
                   help=f"per-pool limit for the gate run (default {gaterun.DEFAULT_TIMEOUT_S:g})")
    r.add_argument("--gate-models", metavar="ID[,ID...]", default=None,
                   help="run the inference checks and CP4's items on every one of these models "
                   "on each pool (the first is the CP3 gate model; default: the gate's own)")
    r.add_argument("--model-support", metavar="PATH",
                   help="also write CP4's MODEL_SUPPORT.md from the merged results")
    _add_outputs(r, None)
    r.set_defaults(func=cmd_run)


def _print_summary(merged: gatemerge.MergedGate, html: Path | None, js: Path | None,
                   support: Path | None = None) -> None:
    for line in gatemerge.summary_lines(merged):
        print(line)
    for label, path in (("report", html), ("json", js), ("model support", support)):
        if path is not None:
            print(f"merged {label}: {path}")


def _report_overrides(items: list[str], names: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise HarnessError(f"--report {item!r}: expected POOL=PATH", exit_code=2)
        if name not in names:
            raise HarnessError(f"--report {item!r}: no result for pool {name!r}",
                               f"pools given: {', '.join(sorted(names))}", exit_code=2)
        out[name] = path
    return out


def cmd_merge(args: argparse.Namespace) -> int:
    expect = gatemerge.parse_pool_list(args.expect_pools)
    if not args.results and not expect:
        raise HarnessError("nothing to merge", "give RESULT files or --expect-pools",
                           exit_code=2)
    results = []
    for arg in args.results:
        name, path = gatemerge.split_named(arg)
        results.append(gatemerge.load_result(path, name=name))
    overrides = _report_overrides(args.report, {r.name for r in results})
    merged = gatemerge.merge(results, expect_pools=expect, max_age_h=args.max_age)
    reports = {r.name: gatemerge.find_report(r, overrides.get(r.name)) for r in results}
    html = Path(args.html) if args.html else None
    js = Path(args.json) if args.json else None
    support = Path(args.model_support) if args.model_support else None
    gatemerge.write_outputs(merged, reports, html_path=html, json_path=js,
                            perf_sources=args.perf, support_path=support)
    _print_summary(merged, html, js, support)
    return merged.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    names = gatemerge.parse_pool_list(args.pools)
    if not names:
        raise HarnessError("--pools names no pool", "e.g. --pools mac,workstation", exit_code=2)
    gate_pools = gaterun.load_gate_pools(names, args.pools_file,
                                         getattr(args, "pool_root", None))
    models = _gate_models(args.gate_models)
    if models:
        gate_pools = [dataclasses.replace(p, gate_models=models) for p in gate_pools]
    support = Path(args.model_support) if args.model_support else None
    if support is not None:  # refused before the pools spend an hour, not after
        refuse_non_regular_target(support, "--model-support target",
                                  "name a file to write MODEL_SUPPORT.md to")
    out = Path(args.out)
    with sigterm_interrupts():  # a stopped `gate run` stops the gate on every pool too
        runs = gaterun.run_pools(gate_pools, out, timeout=args.timeout)
    merged, reports = gaterun.merge_runs(runs, max_age_h=args.max_age)
    html = Path(args.html) if args.html else out / "cp3.html"
    js = Path(args.json) if args.json else out / "cp3.json"
    gatemerge.write_outputs(merged, reports, html_path=html, json_path=js, support_path=support)
    _print_summary(merged, html, js, support)
    return merged.exit_code


def _gate_models(raw: str | None) -> tuple[str, ...]:
    """`--gate-models a,b`: ids checked here, before they reach a pool's command line."""
    from llorch_harness.pool.paths import validate_model_id

    models = tuple(dict.fromkeys(m.strip() for m in (raw or "").split(",") if m.strip()))
    for model_id in models:
        try:
            validate_model_id(model_id)
        except HarnessError as err:
            raise HarnessError(f"--gate-models: {err.message}", err.hint, exit_code=2) from None
    return models


def main(argv: list[str] | None = None) -> int:
    """`python -m llorch_harness.cli.gate_cmd gate ...`: the same commands, standalone."""
    from llorch_harness.cli.common import run_parsed

    parser = argparse.ArgumentParser(prog="llorch-harness", description=__doc__)
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return run_parsed(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
