"""`llorch`: run pool commands on other machines over ssh (CP3 Remote Operations).

`llorch pool ... --host HOST` runs one `llorch-pool` command on one pool, output
live, exit status the remote's. `llorch pools ...` runs one on every pool of the
pools file at once. The commands and their arguments are `llorch-pool`'s own
(cli/pool_commands.py: both command lines are built from the same definitions). Every
id is checked here before ssh starts, and the remote argument list is rebuilt from the
parsed values, never from raw text. Stopping `llorch` (Ctrl-C, SIGTERM) stops the
remote command too (remote/transport.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from llorch_harness import __version__
from llorch_harness.cli.common import no_abbreviations, run_handler, sigterm_interrupts
from llorch_harness.cli.pool_commands import BY_KEY, GROUP_HELP, Opt, PoolCommand, forwarded_opts
from llorch_harness.cli.pool_commands import COMMANDS as POOL_COMMANDS
from llorch_harness.errors import HarnessError
from llorch_harness.redaction import redact
from llorch_harness.remote.poolsfile import PoolConfig, PoolsFile, load_pools, resolve_pool
from llorch_harness.remote.ssh import PoolOutcome, RemotePool, run_on_pools

Key = tuple[str | None, str]

# (group, action) -> (help, the arguments forwarded), read from llorch-pool's definitions.
COMMANDS: dict[Key, tuple[str, list[Opt]]] = {
    c.key: (c.help, forwarded_opts(c)) for c in POOL_COMMANDS}
# What `llorch pools ...` may run everywhere at once: read-only or idempotent commands.
FANOUT = {c.key for c in POOL_COMMANDS if c.fanout}
SHOW_OUTPUT = {c.key for c in POOL_COMMANDS if c.shows_output}


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


def remote_args(key: Key, ns: argparse.Namespace) -> list[str]:
    """Rebuild `llorch-pool` arguments from checked values; `--opt=value` so no value is a flag."""
    out = BY_KEY[key].words
    for o in COMMANDS[key][1]:
        out += o.words(getattr(ns, o.dest, None))
    return out  # nothing unparsed ever travels: unknown arguments are refused in main()


def _leaf(sub: argparse._SubParsersAction[argparse.ArgumentParser], command: PoolCommand,
          scope: str) -> None:
    """The command's own arguments (forwarded only when given), then llorch's."""
    leaf = sub.add_parser(command.action, allow_abbrev=False, help=command.help,
                          description=command.help)
    command.add_arguments(leaf)
    for action in leaf._actions:
        if action.dest != "help":
            action.default = None  # the remote applies its own defaults
    _global_opts(leaf)
    if scope == "pool":
        leaf.add_argument("--host", required=True,
                          help="pool name from the pools file, or an ssh destination")
        leaf.add_argument("--remote-root", metavar="DIR",
                          help="pool root on the remote (default: the pool's 'root')")
        leaf.add_argument("--timeout", type=_positive_seconds, metavar="S",
                          help="give up on the remote command after S seconds (it is stopped)")
        leaf.set_defaults(func=cmd_pool, key=command.key)
    else:
        leaf.add_argument("--timeout", type=_positive_seconds, metavar="S",
                          help="give up on a pool after S seconds (its command is stopped)")
        leaf.set_defaults(func=cmd_pools, key=command.key)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llorch", allow_abbrev=False,
        description="Run llorch-pool commands on remote pools over ssh.",
    )
    parser.add_argument("--version", action="version", version=f"llorch {__version__}")
    _global_opts(parser)
    top = parser.add_subparsers(dest="scope", metavar="{pool,pools,bisect}")
    scopes = {"pool": top.add_parser("pool", allow_abbrev=False, help="one pool: ... --host HOST"),
              "pools": top.add_parser("pools", allow_abbrev=False,
                                      help="every pool in the pools file")}
    subs = {}
    for name, p in scopes.items():
        _global_opts(p)
        p.set_defaults(func=_help(p))
        subs[name] = p.add_subparsers(metavar="COMMAND")
    plist = subs["pools"].add_parser("list", allow_abbrev=False, help="show the configured pools")
    _global_opts(plist)
    plist.set_defaults(func=cmd_pools_list)
    _bisect_parser(top)
    groups: dict[tuple[str, str], argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in POOL_COMMANDS:
        for scope in ("pool", "pools"):
            if scope == "pools" and not command.fanout:
                continue
            where = subs[scope]
            if command.group is not None:
                if (scope, command.group) not in groups:
                    g = where.add_parser(command.group, allow_abbrev=False,
                                         help=GROUP_HELP[command.group])
                    _global_opts(g)
                    g.set_defaults(func=_help(g))
                    groups[(scope, command.group)] = g.add_subparsers(metavar="ACTION")
                where = groups[(scope, command.group)]
            _leaf(where, command, scope)
    return no_abbreviations(parser)


def _bisect_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`llorch bisect --host POOL ...`: `llorch-harness bisect` on that pool."""
    from llorch_harness.cli import bisect_cmd

    b = top.add_parser("bisect", allow_abbrev=False,
                       help="llorch-harness bisect on a pool: --host POOL ...",
                       description="Run `llorch-harness bisect` on the pool (in its checkout, "
                       "with its env and root) and bring its --json and --html back.")
    bisect_cmd.add_arguments(b)
    _global_opts(b)
    b.add_argument("--host", required=True, help="pool name from the pools file")
    b.add_argument("--timeout", type=_positive_seconds, metavar="S",
                   help="give up after S seconds (the remote bisect is stopped)")
    b.set_defaults(func=cmd_bisect)


def cmd_bisect(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from llorch_harness.bisect import report
    from llorch_harness.bisect.driver import check_items
    from llorch_harness.bisect.remote import bisect_words, run_remote_bisect
    from llorch_harness.cli.bisect_cmd import check_backend, forwarded_args

    check_backend(ns)
    check_items(ns.item, ns.backend)  # a mistyped item costs no ssh
    json_path = report.check_target(Path(ns.json), "--json") if ns.json else None
    html_path = report.check_target(Path(ns.html), "--html") if ns.html else None
    config = resolve_pool(ns.host, _pools(ns))
    words = forwarded_args(ns)
    if getattr(ns, "dry_run", False):
        from llorch_harness.remote.transport import SshTransport

        shown = redact_env_words(bisect_words(config, words, "TMP"), config)
        print(SshTransport(config).display(shown, cwd=config.checkout))
        return 0
    return run_remote_bisect(config, words, json_path, html_path, timeout=ns.timeout,
                             connect_timeout=getattr(ns, "connect_timeout", None))


def redact_env_words(words: list[str], config: PoolConfig) -> list[str]:
    """`env K=V` words with the pool's secret values masked (for a dry run)."""
    shown = config.redacted_env()
    return [f"{w.split('=', 1)[0]}={shown[w.split('=', 1)[0]]}"
            if "=" in w and w.split("=", 1)[0] in shown else w for w in words]


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


def _print_table(rows: Sequence[Sequence[str]]) -> None:
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
    with sigterm_interrupts():  # a stopped `llorch` stops its remote command too
        return run_handler(func, ns)


if __name__ == "__main__":
    raise SystemExit(main())
