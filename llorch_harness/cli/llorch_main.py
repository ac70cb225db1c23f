"""`llorch`: run pool commands on other machines over ssh (CP3 Remote Operations).

`llorch pool ... --host HOST` runs one `llorch-pool` command on one pool, output
live, exit status the remote's. `llorch pools ...` runs one on every pool of the
pools file at once. Every id is checked here before ssh starts, and the remote
argument list is rebuilt from the parsed values, never from raw text.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llorch_harness import __version__
from llorch_harness.cli.common import no_abbreviations, run_handler
from llorch_harness.errors import HarnessError
from llorch_harness.pool.paths import validate_model_id, validate_repo_id, validate_worker_id
from llorch_harness.redaction import redact
from llorch_harness.remote.poolsfile import (
    VALID_BACKENDS,
    PoolConfig,
    PoolsFile,
    load_pools,
    resolve_pool,
)
from llorch_harness.remote.ssh import PoolOutcome, RemotePool, run_on_pools

Check = Callable[[str], str]


@dataclass(frozen=True)
class Opt:
    """One argument of a `llorch-pool` subcommand, as parsed here and passed on there."""

    name: str  # "model_id" (positional) or "--name"
    kind: str = "value"  # "pos", "value", "flag"
    check: Check | None = None
    required: bool = True  # positionals: False means optional (nargs="?")
    choices: tuple[str, ...] | None = None
    help: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


def _int_text(what: str, lo: int, hi: int) -> Check:
    def check(value: str) -> str:
        if not value.isascii() or not value.isdigit() or not lo <= int(value) <= hi:
            raise HarnessError(f"invalid {what} {value!r}", f"expected {lo} to {hi}", exit_code=2)
        return str(int(value))

    return check


def _seconds(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number <= 86400 or number != number:
        raise HarnessError(f"invalid seconds {value!r}", "expected 0 to 86400", exit_code=2)
    return repr(number)


def _backends_list(value: str) -> str:
    items = [b.strip() for b in value.split(",") if b.strip()]
    if not items or any(b not in VALID_BACKENDS for b in items):
        raise HarnessError(f"invalid backends {value!r}",
                           f"comma list of {', '.join(VALID_BACKENDS)}", exit_code=2)
    return ",".join(items)


def _word(what: str) -> Check:
    def check(value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
            raise HarnessError(f"invalid {what} {value!r}",
                               "use letters, digits, '.', '_' and '-'", exit_code=2)
        return value

    return check


def _text(value: str) -> str:
    """Free text (a display name, a remote path) is passed inert; only NUL cannot travel."""
    if "\0" in value:
        raise HarnessError("argument holds a NUL character", exit_code=2)
    return value


def _opt(name: str, check: Check | None = None, *, required: bool = False,
         help: str | None = None, aliases: tuple[str, ...] = ()) -> Opt:
    return Opt(name, "value", check, required=required, help=help, aliases=aliases)


def _flag(name: str, help: str | None = None, aliases: tuple[str, ...] = ()) -> Opt:
    return Opt(name, "flag", required=False, help=help, aliases=aliases)


MODEL = Opt("model_id", "pos", validate_model_id)
WORKER = Opt("worker_id", "pos", validate_worker_id)
JSON = _flag("--json", "machine-readable output")
BIN_DIR = _opt("--llorch-bin-dir", _text, help="directory of the worker binaries on the pool")

# (group, action) -> arguments, mirroring `llorch-pool`; group None: a top-level command.
COMMANDS: dict[tuple[str | None, str], tuple[str, list[Opt]]] = {
    ("models", "download"): ("download a model on the pool and verify it", [
        MODEL, _flag("--force", "download again even if verified")]),
    ("models", "verify"): ("re-check a downloaded model's files on the pool", [MODEL]),
    ("models", "catalog"): ("show the pool's catalog", [JSON]),
    ("models", "list"): ("known and registered models on the pool", [JSON]),
    ("models", "register"): ("add a model to the pool's catalog", [
        MODEL,
        _opt("--name", _text, required=True),
        _opt("--repo", validate_repo_id, required=True, help="hub repo ORG/NAME"),
        _opt("--architecture", _word("architecture"), required=True),
        _opt("--backends", _backends_list, help="comma list (default: all)"),
    ]),
    ("models", "unregister"): ("remove a model from the pool's catalog", [MODEL]),
    ("worker", "spawn"): ("start a worker on the pool (it outlives the ssh session)", [
        Opt("backend", "pos", choices=VALID_BACKENDS),
        _opt("--model", validate_model_id, required=True, help="catalog model id"),
        _opt("--gpu", _int_text("gpu index", 0, 1023)),
        _opt("--port", _int_text("port", 0, 65535), help="0 or absent: a free port"),
        _opt("--worker", _word("worker kind"), help="llorch (default) or reference"),
        BIN_DIR,
        _opt("--ready-timeout", _seconds),
        _opt("--worker-id", validate_worker_id),
        JSON,
    ]),
    ("worker", "list"): ("list the pool's workers", [JSON]),
    ("worker", "stop"): ("stop a worker on the pool", [
        Opt("worker_id", "pos", validate_worker_id, required=False),
        _flag("--all", "stop every recorded worker"), _opt("--grace", _seconds), JSON]),
    ("worker", "logs"): ("show a worker's log on the pool", [
        WORKER, _opt("--lines", _int_text("line count", 0, 10_000_000), aliases=("-n",)),
        _flag("--follow", "keep printing new lines", aliases=("-f",))]),
    ("worker", "reap"): ("stop marked worker processes without a record on the pool", [
        _opt("--grace", _seconds), _flag("--all-pools", "orphans of every pool root")]),
    (None, "status"): ("the pool's models, workers and hardware", [JSON, BIN_DIR]),
}

# What `llorch pools ...` may run everywhere at once: read-only or idempotent commands.
FANOUT = {("models", "download"), ("models", "catalog"), ("models", "list"),
          ("worker", "list"), (None, "status")}
SHOW_OUTPUT = {("models", "catalog"), ("models", "list"), ("worker", "list"), (None, "status")}


def _global_opts(parser: argparse.ArgumentParser) -> None:
    """Accepted at every level; SUPPRESS keeps a value given earlier from being reset."""
    s = argparse.SUPPRESS
    parser.add_argument("--pools-file", metavar="FILE", default=s,
                        help="pools file (default: pools.toml in the pool root named by "
                             "--pool-root or $LLORCH_POOL_ROOT, then "
                             "~/.config/llorch/pools.toml; never the current directory)")
    parser.add_argument("--pool-root", metavar="DIR", default=s,
                        help="local pool root, where pools.toml is looked for")
    parser.add_argument("--connect-timeout", metavar="S", type=_timeout, default=s,
                        help="ssh ConnectTimeout in seconds (default: pool's, else 10)")
    parser.add_argument("--dry-run", action="store_true", default=s,
                        help="print the ssh command (secret env values masked), run nothing")


def _timeout(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 300:
        raise argparse.ArgumentTypeError("expected whole seconds from 1 to 300")
    return int(text)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 7 * 86400:
        raise argparse.ArgumentTypeError("expected seconds, more than 0")
    return value


def _add_opts(parser: argparse.ArgumentParser, opts: list[Opt]) -> None:
    for o in opts:
        if o.kind == "pos":
            parser.add_argument(o.dest, metavar=o.dest.upper(), choices=o.choices, help=o.help,
                                nargs=None if o.required else "?")
        elif o.kind == "flag":
            parser.add_argument(o.name, *o.aliases, action="store_true", help=o.help)
        else:
            parser.add_argument(o.name, *o.aliases, required=o.required, choices=o.choices,
                                help=o.help)


def remote_args(key: tuple[str | None, str], ns: argparse.Namespace) -> list[str]:
    """Rebuild `llorch-pool` arguments from checked values; `--opt=value` so no value is a flag."""
    group, action = key
    out = [action] if group is None else [group, action]
    for o in COMMANDS[key][1]:
        value = getattr(ns, o.dest, None)
        if o.kind == "flag":
            if value:
                out.append(o.name)
            continue
        if value is None:
            continue
        value = o.check(value) if o.check else value
        out.append(value if o.kind == "pos" else f"{o.name}={value}")
    return out  # nothing unparsed ever travels: unknown arguments are refused in main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llorch", allow_abbrev=False,
        description="Run llorch-pool commands on remote pools over ssh.",
    )
    parser.add_argument("--version", action="version", version=f"llorch {__version__}")
    _global_opts(parser)
    top = parser.add_subparsers(dest="scope", metavar="{pool,pools}")

    pool = top.add_parser("pool", allow_abbrev=False, help="one pool: ... --host HOST")
    pools = top.add_parser("pools", allow_abbrev=False, help="every pool in the pools file")
    for p in (pool, pools):
        _global_opts(p)
        p.set_defaults(func=_help(p))
    pool_sub = pool.add_subparsers(metavar="COMMAND")
    pools_sub = pools.add_subparsers(metavar="COMMAND")

    plist = pools_sub.add_parser("list", allow_abbrev=False, help="show the configured pools")
    _global_opts(plist)
    plist.set_defaults(func=cmd_pools_list)

    groups: dict[tuple[str, str], argparse._SubParsersAction] = {}  # type: ignore[type-arg]
    for key, (text, opts) in COMMANDS.items():
        group, action = key
        for scope, sub in (("pool", pool_sub), ("pools", pools_sub)):
            if scope == "pools" and key not in FANOUT:
                continue
            if group is not None:
                if (scope, group) not in groups:
                    g = sub.add_parser(group, allow_abbrev=False, help=f"{group} commands")
                    _global_opts(g)
                    g.set_defaults(func=_help(g))
                    groups[(scope, group)] = g.add_subparsers(metavar="ACTION")
                sub = groups[(scope, group)]
            leaf = sub.add_parser(action, allow_abbrev=False, help=text, description=text)
            _add_opts(leaf, opts)
            _global_opts(leaf)
            if scope == "pool":
                leaf.add_argument("--host", required=True,
                                  help="pool name from the pools file, or an ssh destination")
                leaf.add_argument("--remote-root", metavar="DIR",
                                  help="pool root on the remote (default: the pool's 'root')")
                leaf.add_argument("--timeout", type=_positive_seconds, metavar="S",
                                  help="give up on the remote command after S seconds")
                leaf.set_defaults(func=cmd_pool, key=key)
            else:
                leaf.add_argument("--timeout", type=_positive_seconds, metavar="S",
                                  help="give up on a pool after S seconds")
                leaf.set_defaults(func=cmd_pools, key=key)
    return no_abbreviations(parser)


def _help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(_ns: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def _pools(ns: argparse.Namespace) -> PoolsFile:
    return load_pools(getattr(ns, "pools_file", None), getattr(ns, "pool_root", None))


def cmd_pool(ns: argparse.Namespace) -> int:
    args = remote_args(ns.key, ns)  # ids are checked before ssh is even looked up
    config = resolve_pool(ns.host, _pools(ns))
    remote = RemotePool(config, connect_timeout=getattr(ns, "connect_timeout", None),
                        remote_root=ns.remote_root)
    if getattr(ns, "dry_run", False):
        print(remote.display_command(args))
        return 0
    return remote.run(args, capture=False, timeout=ns.timeout).returncode


def _all_pools(ns: argparse.Namespace) -> list[PoolConfig]:
    pf = _pools(ns)
    if not pf.pools:
        where = f"{pf.path} defines no pools" if pf.path else "no pools file found"
        raise HarnessError(where, "pass --pools-file FILE with [pools.NAME] sections",
                           exit_code=2)
    return list(pf.pools.values())


def cmd_pools_list(ns: argparse.Namespace) -> int:
    """Names, hosts and roots; env names only, never their values."""
    rows = [("POOL", "HOST", "ROOT", "BACKENDS", "ENV")]
    for p in _all_pools(ns):
        rows.append((p.name, p.host, p.root or "(remote default)",
                     ",".join(p.backends) or "-", ",".join(p.env) or "-"))
    _print_table(rows)
    return 0


def cmd_pools(ns: argparse.Namespace) -> int:
    args = remote_args(ns.key, ns)
    pools = _all_pools(ns)
    connect_timeout = getattr(ns, "connect_timeout", None)
    if getattr(ns, "dry_run", False):
        for p in pools:
            shown_cmd = RemotePool(p, connect_timeout=connect_timeout).display_command(args)
            print(f"{p.name}: {shown_cmd}")
        return 0
    shown = ns.key in SHOW_OUTPUT
    print(f"running `llorch-pool {' '.join(args)}` on {len(pools)} pool(s): "
          + ", ".join(p.name for p in pools), flush=True)

    def done(o: PoolOutcome) -> None:
        mark = "ok" if o.ok else o.status.upper()
        line = f"[{o.pool.name}] {mark} (exit {o.exit_code}, {o.seconds:.1f}s)"
        print(redact(line + (f": {o.detail}" if o.detail else "")), flush=True)

    def waiting(names: list[str], seconds: float) -> None:
        print(f"... still running after {seconds:.0f}s: {', '.join(names)}", flush=True)

    outcomes = run_on_pools(pools, args, timeout=ns.timeout, connect_timeout=connect_timeout,
                            on_done=done, on_wait=waiting)
    for o in outcomes:
        if o.result is None:
            continue
        if shown and o.result.stdout:
            print(f"\n== {o.pool.label()} ==")
            text = redact(o.result.stdout)
            print(text, end="" if text.endswith("\n") else "\n")
        elif not o.ok and o.result.stderr.strip():
            print(f"\n== {o.pool.label()}: last lines of stderr ==")
            print(redact("\n".join(o.result.stderr_tail(5))))
    print()
    rows = [("POOL", "HOST", "STATUS", "EXIT", "TIME", "DETAIL")]
    for o in outcomes:
        rows.append((o.pool.name, o.pool.host, o.status, str(o.exit_code),
                     f"{o.seconds:.1f}s", redact(o.detail)[:100]))
    _print_table(rows)
    failed = [o for o in outcomes if not o.ok]
    print(f"{len(outcomes) - len(failed)}/{len(outcomes)} pools ok", flush=True)
    return 1 if failed else 0


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    """Parse strictly: an argument this command does not know is a usage error (exit 2)
    here, never something forwarded for the remote `llorch-pool` to interpret."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    func = getattr(ns, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return run_handler(func, ns)


if __name__ == "__main__":
    raise SystemExit(main())
