"""`llorch-harness hub serve DIR`: the local hub as a long-running command.

Why in cli/: arguments, the terminal and signals are the command's business; the hub
itself (`llorch_harness.lab.hub`) is a library that tests start in-process.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from llorch_harness.cli.common import int_in_range, require_subcommand
from llorch_harness.lab.hub import DEFAULT_PAGE_SIZE, LocalHub

logger = logging.getLogger("llorch_harness.lab.hub")  # the hub's own log: one request a line


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llorch-harness hub serve`."""
    parser.add_argument("dir", metavar="DIR", help="hub root: repos live in DIR/ORG/NAME/")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int_in_range(0, 65535, "port"), default=0,
                        help="port 0..65535 (default 0: a free one)")
    parser.add_argument("--page-size", type=int_in_range(1, 10**6, "page size"),
                        default=DEFAULT_PAGE_SIZE,
                        help=f"tree entries per page (default {DEFAULT_PAGE_SIZE})")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `hub serve` to the `llorch-harness` subcommands."""
    hub = sub.add_parser("hub", help="a local Hugging Face hub for offline labs and tests")
    hub.set_defaults(func=require_subcommand(hub))
    hsub = hub.add_subparsers(dest="hub_command", metavar="ACTION")
    s = hsub.add_parser("serve", help="serve DIR/ORG/NAME repos over HTTP")
    add_serve_arguments(s)
    s.set_defaults(func=run_serve)


def _log_to_stderr() -> None:
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; prints `hub serving DIR at URL` once ready."""
    root = Path(args.dir)
    if not root.is_dir():
        print(f"error: hub root is not a directory: {root} (create it, with repos in "
              "DIR/ORG/NAME/)", file=sys.stderr)
        return 1
    _log_to_stderr()
    hub = LocalHub(root, args.host, args.port,
                   page_size=getattr(args, "page_size", DEFAULT_PAGE_SIZE), log_requests=True)
    try:
        hub.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
              "(pick another --port)", file=sys.stderr)
        return 1
    done = threading.Event()
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda *_: done.set())
    try:
        logger.info("hub: hashing repos under %s", root)
        logger.info("hub: serving %s", ", ".join(hub.prime()) or "no repos yet")
        print(f"hub serving {root} at {hub.url}", flush=True)
        print(f"in the shell that runs llorch-pool: export HF_ENDPOINT={hub.url} "
              "HF_HUB_DISABLE_XET=1", flush=True)
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
        for signum, previous in old.items():
            signal.signal(signum, previous)
    return 0


def serve_main(argv: list[str] | None = None) -> int:
    """`llorch-harness hub serve DIR [--host H] [--port P]` as a standalone entry point."""
    parser = argparse.ArgumentParser(prog="llorch-harness hub serve",
                                     description="Serve DIR/ORG/NAME repos as a local HF hub.")
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(serve_main())
