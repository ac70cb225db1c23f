"""What every command shares: --pool-root, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

from llorch_harness.choices import EXIT_CODES, did_you_mean
from llorch_harness.errors import HarnessError
from llorch_harness.pool.paths import (
    MODELS_DIRNAME,
    POOL_ROOT_ENV,
    RUNTIME_DIRNAME,
    PoolPaths,
)
from llorch_harness.redaction import redact
from llorch_harness.safetext import term_text

Handler = Callable[[argparse.Namespace], int]


def add_pool_root(parser: argparse.ArgumentParser) -> None:
    """--pool-root on every (sub)command; SUPPRESS so a later level never resets an earlier one."""
    parser.add_argument(
        "--pool-root",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="pool root holding .test-models/ and .runtime/ (default: $LLORCH_POOL_ROOT or cwd)",
    )


def no_abbreviations(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Turn off argparse's prefix matching on `parser` and every subcommand below it.

    Why: with abbreviations on, `--pool-ro=/etc` silently means `--pool-root=/etc`, and an
    option added later changes what an old abbreviation means. Options are spelled out.
    """
    seen: set[int] = set()
    todo = [parser]
    while todo:
        p = todo.pop()
        if id(p) in seen:
            continue
        seen.add(id(p))
        p.allow_abbrev = False
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return parser


def pool_paths(args: argparse.Namespace) -> PoolPaths:
    return PoolPaths.at(getattr(args, "pool_root", None))


def root_origin(args: argparse.Namespace) -> str:
    """Where the pool root came from, in the words `Pool root: ...` shows."""
    if getattr(args, "pool_root", None) not in (None, ""):
        return "--pool-root"
    if os.environ.get(POOL_ROOT_ENV):
        return f"${POOL_ROOT_ENV}"
    return "the current directory"


def is_pool(paths: PoolPaths) -> bool:
    """A directory is a pool once a command has written its catalog or a worker record."""
    return paths.models_dir.is_dir() or (paths.root / RUNTIME_DIRNAME).is_dir()


def pool_line(paths: PoolPaths, args: argparse.Namespace, *, writes: bool = False) -> str:
    """`Pool root: DIR (from ...)`, and what DIR is: every pool command names its root, so
    a command run from the wrong directory says where it looked (issue 28 item 5)."""
    line = f"Pool root: {paths.root} (from {root_origin(args)})"
    if is_pool(paths):
        return line
    if writes:
        return line + "; a new pool: nothing was there yet"
    return (line + f"; not a pool: no {MODELS_DIRNAME}/ or {RUNTIME_DIRNAME}/ there (pass "
            f"--pool-root DIR or set ${POOL_ROOT_ENV})")


def require_pool(args: argparse.Namespace) -> PoolPaths:
    """The pool for a command that needs its records (`worker logs ID`): a directory that
    is not a pool is the "pool root" mistake (exit 15), not "no such worker"."""
    paths = pool_paths(args)
    if not is_pool(paths):
        raise HarnessError(
            f"{paths.root} (from {root_origin(args)}) is not a pool: no {MODELS_DIRNAME}/ "
            f"or {RUNTIME_DIRNAME}/ there", f"pass --pool-root DIR or set ${POOL_ROOT_ENV}",
            exit_code=EXIT_CODES["pool root"])
    return paths


def run_parsed(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return run_handler(func, args)


DEBUG_ENV = "LLORCH_DEBUG"  # set to 1: an unexpected exception shows its traceback
INTERNAL_ERROR_EXIT = 70  # EX_SOFTWARE: a bug of ours, not bad input


def check_text_arguments(args: argparse.Namespace) -> None:
    """Every text argument must be UTF-8: names end up in JSON files and on terminals.

    Python hands a non-UTF-8 argument (`$'caf\\xe9'`) over as lone surrogates, which
    neither json nor print can encode, so it is refused here, once, for every command.
    """
    for dest, value in vars(args).items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if not isinstance(item, str):
                continue
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                shown = repr(os.fsencode(item))[2:-1] if _fs_encodable(item) else ascii(item)
                flag = "--" + dest.replace("_", "-")
                raise HarnessError(f"{flag} value '{shown[:200]}' is not valid UTF-8 text",
                                   "pass UTF-8 text (names are stored as UTF-8 JSON)",
                                   exit_code=2) from None


def _fs_encodable(text: str) -> bool:
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return True


def run_handler(func: Handler, args: argparse.Namespace) -> int:
    """Run one command: a HarnessError becomes one line on stderr and its exit code.

    Anything else escaping a command is a bug of ours; it still ends as one line (the
    traceback with LLORCH_DEBUG=1), never as a traceback in front of a user.
    """
    try:
        check_text_arguments(args)
        return func(args)
    except HarnessError as err:
        # the message may quote a value from outside: control characters shown escaped
        print(term_text(redact(f"error: {err.one_line()}")), file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    except OSError as err:  # disk full, permissions: the system's words, still one line
        if isinstance(err, BrokenPipeError):
            return 141
        where = f" ({err.filename})" if err.filename else ""
        print(term_text(redact(f"error: {err.strerror or err}{where}")), file=sys.stderr,
              flush=True)
        return 1
    except Exception as err:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        text = redact(" ".join(f"{type(err).__name__}: {err}".split()))[:300]
        print(f"error: internal error: {ascii(text)[1:-1]} (a bug in llorch-harness: rerun "
              f"with {DEBUG_ENV}=1 for the traceback and report it)", file=sys.stderr,
              flush=True)
        return INTERNAL_ERROR_EXIT


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM raises KeyboardInterrupt in the main thread.

    Why: a command that drives remote commands must end them when it is stopped, and
    Python's default SIGTERM ends the process without running any cleanup; this way a
    SIGTERM gets the same orderly stop as a Ctrl-C (exit 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def finite_seconds(allow_zero: bool = True) -> Callable[[str], float]:
    """argparse type: a finite number of seconds, >= 0 (or > 0); never nan or inf, which
    would make a deadline that never expires (or one that has always expired)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number of seconds, "
                                             f"got {text!r}")
        if value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError("must be 0 or more" if allow_zero
                                             else "must be more than 0")
        return value

    return parse


def int_in_range(low: int, high: int, what: str = "value") -> Callable[[str], int]:
    """argparse type: an integer in [low, high] (a port, a seed), a usage error otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low}..{high}, got {value}")
        return value

    return parse


def one_of(what: str, known: Sequence[str]) -> Callable[[str], str]:
    """argparse type: one of `known` (an architecture, a vocabulary, a worker kind); a typo
    is a usage error that says what was meant, where `choices=` would only list the names.
    Use it with `metavar=choices_metavar(known)` so the help still lists them."""

    def parse(text: str) -> str:
        if text in known:
            return text
        close = did_you_mean(text, known)
        hint = f"did you mean {' or '.join(close)}?; " if close else ""
        raise argparse.ArgumentTypeError(f"unknown {what} {text!r} ({hint}known: "
                                         f"{', '.join(known)})")

    return parse


def choices_metavar(known: Sequence[str]) -> str:
    return "{" + ",".join(known) + "}"


def port_number(text: str) -> int:
    """argparse type: a TCP port 0..65535 (0: any free port)."""
    return int_in_range(0, 65535, "port")(text)


def require_subcommand(parser: argparse.ArgumentParser) -> Handler:
    def show_help(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show_help
