"""What every command shares: --pool-root, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..errors import HarnessError
from ..paths import PoolPaths

Handler = Callable[[argparse.Namespace], int]


def add_pool_root(parser: argparse.ArgumentParser) -> None:
    """--pool-root on every (sub)command; SUPPRESS so a later level never resets an earlier one."""
    parser.add_argument(
        "--pool-root",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="pool root holding .test-models/ and .runtime/ (default: $LLORCH_POOL_ROOT or cwd)",
    )


def pool_paths(args: argparse.Namespace) -> PoolPaths:
    return PoolPaths.at(getattr(args, "pool_root", None))


def run_parsed(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return run_handler(func, args)


def run_handler(func: Handler, args: argparse.Namespace) -> int:
    """Run one command: a HarnessError becomes one line on stderr and its exit code."""
    try:
        return func(args)
    except HarnessError as err:
        print(f"error: {err.one_line()}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    except OSError as err:  # disk full, permissions: the system's words, still one line
        if isinstance(err, BrokenPipeError):
            return 141
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr, flush=True)
        return 1


def require_subcommand(parser: argparse.ArgumentParser) -> Handler:
    def show_help(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show_help
