"""The `llorch-pool` commands, defined once for both command lines that offer them.

`llorch-pool` (cli/pool_main.py) runs them on this pool; `llorch pool ... --host H` and
`llorch pools ...` (cli/llorch_main.py) parse the very same arguments, check them, and
rebuild the remote `llorch-pool` argument list from the parsed values. One function per
subcommand adds its arguments, and both parsers call it, so the two can never disagree on a
command, an option, a type or a default.

Why light: `llorch` imports this module; the handlers (`module:function` names) are
imported only when a command runs, so parsing never loads psutil, httpx or the catalog.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass

from llorch_harness.choices import check_name
from llorch_harness.cli.common import (
    choices_metavar,
    finite_seconds,
    int_in_range,
    one_of,
    port_number,
)
from llorch_harness.errors import HarnessError
from llorch_harness.pool.backends import BACKEND_NAMES, get_backend
from llorch_harness.pool.paths import validate_model_id, validate_repo_id, validate_worker_id
from llorch_harness.pool.workers.defaults import (
    BASE_PORT,
    LOG_TAIL_LINES,
    READY_TIMEOUT_S,
    REAP_GRACE_S,
    STOP_GRACE_S,
    WORKER_KINDS,
)

Adder = Callable[[argparse.ArgumentParser], None]
Check = Callable[[str], str]
BIN_DIR_HELP = "where the worker binaries are (default $LLORCH_BIN_DIR, then PATH)"
GROUP_HELP = {"models": "model catalog and downloads",
              "worker": "spawn, list, stop and inspect workers"}

_nonneg_seconds = finite_seconds(allow_zero=True)  # nan and inf are refused: finite_seconds
_positive_seconds = finite_seconds(allow_zero=False)


@dataclass(frozen=True)
class PoolCommand:
    """One `llorch-pool` subcommand: where it sits, its arguments, what runs it."""

    group: str | None  # "models", "worker", or None for a top-level command
    action: str
    help: str
    add_arguments: Adder
    handler: str  # "module:function" in llorch_harness.cli, imported when the command runs
    fanout: bool = False  # `llorch pools` may run it on every pool at once (read-only/idempotent)
    shows_output: bool = False  # `llorch pools` prints each pool's stdout

    @property
    def key(self) -> tuple[str | None, str]:
        return (self.group, self.action)

    @property
    def words(self) -> list[str]:
        return [self.action] if self.group is None else [self.group, self.action]


# --------------------------------------------------------------------------- models


# pool.diskspace.DEFAULT_KEEP_FREE (a test checks they agree), spelled out here because
# parsing must not import the catalog and its file locks
KEEP_FREE_DEFAULT = 1024**3


def _size(text: str) -> int:
    """argparse type for --keep-free: a size (diskspace.parse_size), a usage error if not."""
    from llorch_harness.pool.diskspace import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_models_download(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_id", nargs="?", help="catalog or built-in model id (or --all)")
    p.add_argument("--all", action="store_true",
                   help="every catalog model plus CP4's qwen-0.5b, tinyllama, phi3 and "
                   "mistral, smallest first; a failure does not stop the others")
    p.add_argument("--force", action="store_true", help="download again even if verified")
    p.add_argument("--keep-free", type=_size, default=KEEP_FREE_DEFAULT, metavar="SIZE",
                   help="refuse a model whose download would leave less than SIZE free on "
                   "its disk (e.g. 5G, 500M, bytes; default 1G; 0: no margin)")
    p.add_argument("--stall-timeout", type=_positive_seconds, default=60.0, metavar="S",
                   help="give up when a hub answer is not complete, or a file delivers less "
                   "than 64 KiB, within S seconds (default 60)")
    add_json(p, "the result as JSON on stdout; progress goes to stderr")


def add_model_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_id")


def add_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_id")
    add_json(p, "the result as JSON on stdout (exit 1 when a file does not match)")


def add_json(p: argparse.ArgumentParser,
             help: str = "machine-readable output (docs/workers.md, docs/downloads.md)") -> None:
    p.add_argument("--json", action="store_true", help=help)


def add_models_register(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_id")
    p.add_argument("--name", required=True)
    p.add_argument("--repo", required=True, help="hub repo ORG/NAME")
    p.add_argument("--architecture", required=True)
    p.add_argument("--backends", default=",".join(BACKEND_NAMES),
                   help="comma list (default: all)")
    add_json(p)


# --------------------------------------------------------------------------- worker


def add_worker_spawn(p: argparse.ArgumentParser) -> None:
    p.add_argument("backend", help=", ".join(BACKEND_NAMES))
    p.add_argument("--model", required=True, metavar="ID", help="catalog model id")
    p.add_argument("--gpu", type=int_in_range(0, 65535 - BASE_PORT, "device index"), default=0,
                   help="device index (default 0)")
    p.add_argument("--port", type=port_number, default=None,
                   help=f"port (default {BASE_PORT}+gpu; 0: a free port from the OS)")
    p.add_argument("--worker", type=one_of("worker kind", WORKER_KINDS),
                   metavar=choices_metavar(WORKER_KINDS), default=WORKER_KINDS[0],
                   help="llorch: the llorch-<backend>-candled binary; reference: the harness's")
    p.add_argument("--llorch-bin-dir", metavar="DIR", default=None, help=BIN_DIR_HELP)
    p.add_argument("--ready-timeout", type=_positive_seconds, default=READY_TIMEOUT_S,
                   metavar="S", help=f"seconds to wait for ready (default {READY_TIMEOUT_S:g}: "
                   "real models load slowly)")
    p.add_argument("--worker-id", default=None, help="default worker-<backend>-<gpu>")
    p.add_argument("--json", action="store_true", help="print the record as JSON when ready")
    add_lease_dir(p)
    p.add_argument("--lease-wait", type=_nonneg_seconds, default=None, metavar="S",
                   help="seconds to wait for a GPU another run holds (default "
                   "$LLORCH_LEASE_WAIT, else 60; 0: fail at once)")


def add_lease_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lease-dir", metavar="DIR", default=None,
                   help="host-wide directory of device leases, shared by every pool root "
                   "(default $LLORCH_LEASE_DIR, else /tmp/llorch-harness-leases)")


def add_leases(p: argparse.ArgumentParser) -> None:
    add_lease_dir(p)
    p.add_argument("--all", action="store_true", help="also devices that are free now")
    add_json(p)


def add_worker_stop(p: argparse.ArgumentParser) -> None:
    p.add_argument("worker_id", nargs="?")
    p.add_argument("--all", action="store_true", help="stop every recorded worker")
    p.add_argument("--grace", type=_nonneg_seconds, default=STOP_GRACE_S, metavar="S",
                   help=f"seconds between SIGINT and SIGTERM (default {STOP_GRACE_S:g}: longer "
                   "than a generation, which the worker finishes before it handles SIGINT)")
    add_json(p)


def add_worker_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("worker_id")
    p.add_argument("-n", "--lines", type=int, default=LOG_TAIL_LINES, metavar="N",
                   help=f"how many lines (default {LOG_TAIL_LINES})")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    p.add_argument("--pretty", action="store_true",
                   help="time, level, message (a narration's human text), then the other "
                   "fields as key=value; other lines as they are")


def add_worker_reap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grace", type=_nonneg_seconds, default=REAP_GRACE_S, metavar="S")
    p.add_argument("--all-pools", action="store_true", help="orphans of every pool root")


def add_status(p: argparse.ArgumentParser) -> None:
    add_json(p)
    p.add_argument("--llorch-bin-dir", metavar="DIR", default=None, help=BIN_DIR_HELP)


def add_nothing(_p: argparse.ArgumentParser) -> None:
    """A command without arguments of its own."""


COMMANDS: tuple[PoolCommand, ...] = (
    PoolCommand("models", "download", "download a model from the hub and verify it",
                add_models_download, "models_cmd:cmd_download", fanout=True),
    PoolCommand("models", "verify", "re-check a downloaded model's files offline",
                add_verify, "models_cmd:cmd_verify"),
    PoolCommand("models", "catalog", "show the catalog (CP3 table)", add_json,
                "models_cmd:cmd_catalog", fanout=True, shows_output=True),
    PoolCommand("models", "list", "known and registered models with download state", add_json,
                "models_cmd:cmd_list", fanout=True, shows_output=True),
    PoolCommand("models", "register", "add a model to the catalog", add_models_register,
                "models_cmd:cmd_register"),
    PoolCommand("models", "unregister", "remove a model from the catalog (files stay)",
                add_model_id, "models_cmd:cmd_unregister"),
    PoolCommand("worker", "spawn", "start a worker detached and wait until it is ready",
                add_worker_spawn, "worker_cmd:cmd_spawn"),
    PoolCommand("worker", "list", "recorded workers with status, health and uptime", add_json,
                "worker_cmd:cmd_list", fanout=True, shows_output=True),
    PoolCommand("worker", "stop", "SIGINT, grace, SIGTERM, SIGKILL; then remove the record",
                add_worker_stop, "worker_cmd:cmd_stop"),
    PoolCommand("worker", "logs", "show a worker's log", add_worker_logs,
                "worker_cmd:cmd_logs"),
    PoolCommand("worker", "reap", "stop marked worker processes that have no record",
                add_worker_reap, "worker_cmd:cmd_reap"),
    PoolCommand(None, "status", "pool overview: catalog, workers, devices", add_status,
                "status_cmd:cmd_status", fanout=True, shows_output=True),
    PoolCommand(None, "leases", "devices of this host held by a run, and by whom", add_leases,
                "leases_cmd:cmd_leases", fanout=True, shows_output=True),
)
BY_KEY = {c.key: c for c in COMMANDS}


# --------------------------------------------------------------------------- forwarding


def _text(value: str) -> str:
    """Free text (a display name, a remote path) is passed inert; only NUL cannot travel."""
    if "\0" in value:
        raise HarnessError("argument holds a NUL character", exit_code=2)
    return value


def _word(what: str) -> Check:
    def check(value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
            raise HarnessError(f"invalid {what} {value!r}",
                               "use letters, digits, '.', '_' and '-'", exit_code=2)
        return value

    return check


def _backend(value: str) -> str:
    return get_backend(value).name


def _backends_list(value: str) -> str:
    items = [b.strip() for b in value.split(",") if b.strip()]
    if not items:
        raise HarnessError(f"invalid backends {value!r}",
                           f"comma list of {', '.join(BACKEND_NAMES)}", exit_code=2)
    for item in items:  # a mistyped name: choices.UnknownName, the backend status
        check_name("backend", item, BACKEND_NAMES)
    return ",".join(items)


# Text values are checked (by dest) before they travel to another machine: ids as ids,
# words as words. Numbers were parsed by the option's own type already.
REMOTE_CHECKS: dict[str, Check] = {
    "model_id": validate_model_id, "worker_id": validate_worker_id, "model": validate_model_id,
    "repo": validate_repo_id, "architecture": _word("architecture"),
    "backends": _backends_list, "backend": _backend, "name": _text, "llorch_bin_dir": _text,
    "worker": _word("worker kind"), "lease_dir": _text,
}


@dataclass(frozen=True)
class Opt:
    """One argument of a command as `llorch` forwards it: `--name=value`, a flag, or a
    positional (always checked: a bare word could otherwise read as an option there)."""

    name: str  # "--lines" or the positional's dest
    kind: str  # "pos" | "flag" | "value"
    dest: str
    check: Check | None

    def words(self, value: object) -> list[str]:
        if value is None or value is False:
            return []
        if self.kind == "flag":
            return [self.name]
        text = self.check(str(value)) if self.check else str(value)
        return [text] if self.kind == "pos" else [f"{self.name}={text}"]


def forwarded_opts(command: PoolCommand) -> list[Opt]:
    """The command's arguments, read back from a parser its own function built."""
    probe = argparse.ArgumentParser(add_help=False)
    command.add_arguments(probe)
    opts = []
    for action in probe._actions:
        check = REMOTE_CHECKS.get(action.dest)
        if not action.option_strings:
            if check is None:
                raise TypeError(f"{command.words}: positional {action.dest} has no remote check")
            opts.append(Opt(action.dest, "pos", action.dest, check))
            continue
        name = next((s for s in action.option_strings if s.startswith("--")),
                    action.option_strings[0])
        kind = "flag" if isinstance(action, argparse._StoreTrueAction) else "value"
        opts.append(Opt(name, kind, action.dest, check))
    return opts
