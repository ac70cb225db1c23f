"""`llorch-pool`: the pool-local commands of CP3 (models, worker, status)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from llorch_harness import __version__
from llorch_harness.cli import models_cmd, status_cmd, worker_cmd
from llorch_harness.cli.common import add_pool_root, no_abbreviations, run_parsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llorch-pool", description="Manage models and llorch-candled workers on this pool."
    )
    parser.add_argument("--version", action="version", version=f"llorch-pool {__version__}")
    add_pool_root(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models_cmd.register(sub)
    worker_cmd.register(sub)
    status_cmd.register(sub)
    return no_abbreviations(parser)


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
