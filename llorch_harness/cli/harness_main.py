"""`llorch-harness`: the harness's own tools (local hub, tiny model, gate)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from . import gate_cmd
from .common import require_subcommand, run_parsed


def cmd_tiny_model_build(args: argparse.Namespace) -> int:
    from ..tinymodel import build_tiny_model

    files = build_tiny_model(Path(args.dir), seed=args.seed)
    for f in files:
        print(f)
    return 0


def cmd_hub_serve(args: argparse.Namespace) -> int:
    from ..hub import run_serve

    return run_serve(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llorch-harness", description=__doc__)
    parser.add_argument("--version", action="version", version=f"llorch-harness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tiny = sub.add_parser("tiny-model", help="the embedded tiny Qwen2 test model")
    tiny.set_defaults(func=require_subcommand(tiny))
    tsub = tiny.add_subparsers(dest="tiny_command", metavar="ACTION")
    b = tsub.add_parser("build", help="write the tiny model into DIR (same seed, same bytes)")
    b.add_argument("dir")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=cmd_tiny_model_build)

    hub = sub.add_parser("hub", help="a local Hugging Face hub for offline labs and tests")
    hub.set_defaults(func=require_subcommand(hub))
    hsub = hub.add_subparsers(dest="hub_command", metavar="ACTION")
    s = hsub.add_parser("serve", help="serve DIR/ORG/NAME repos over HTTP")
    from ..hub import add_serve_arguments

    add_serve_arguments(s)
    s.set_defaults(func=cmd_hub_serve)

    gate_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
