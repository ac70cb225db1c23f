"""`llorch-pool`: the pool-local commands of CP3 (models, worker, status).

The commands and their arguments are defined once, in cli/pool_commands.py (which `llorch`
uses too); the handlers live in models_cmd.py, worker_cmd.py and status_cmd.py and are
imported only when their command runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from llorch_harness import __version__
from llorch_harness.cli.common import (
    Handler,
    add_pool_root,
    no_abbreviations,
    require_subcommand,
    run_parsed,
)
from llorch_harness.cli.pool_commands import COMMANDS, GROUP_HELP, PoolCommand


def handler(command: PoolCommand) -> Handler:
    """The command's handler, imported on the first call (parsing stays light)."""

    def run(args: argparse.Namespace) -> int:
        module, _, name = command.handler.partition(":")
        func: Handler = getattr(importlib.import_module(f"llorch_harness.cli.{module}"), name)
        return func(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llorch-pool", description="Manage models and llorch-candled workers on this pool."
    )
    parser.add_argument("--version", action="version", version=f"llorch-pool {__version__}")
    add_pool_root(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in COMMANDS:
        where = sub
        if command.group is not None:
            if command.group not in groups:
                g = sub.add_parser(command.group, help=GROUP_HELP[command.group])
                add_pool_root(g)
                g.set_defaults(func=require_subcommand(g))
                groups[command.group] = g.add_subparsers(
                    dest=f"{command.group}_command", metavar="ACTION")
            where = groups[command.group]
        leaf = where.add_parser(command.action, help=command.help)
        command.add_arguments(leaf)
        add_pool_root(leaf)
        leaf.set_defaults(func=handler(command))
    return no_abbreviations(parser)


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
