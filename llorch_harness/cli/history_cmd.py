"""`llorch-harness history`: the performance records of a pool, as a table, trends, a page.

Reads the results store the gate writes (`--results-db`, else $LLORCH_RESULTS_DB, else
`.runtime/gate/results.sqlite` in the pool root, else, when the pool root has none and was
not named, the embedded lab's store in the user's data directory) or an export of one;
never creates a store; says which store it read. `--accept ID` marks a record as the start
of a new baseline: the way to take an intended change (a slower but more exact build)
without the gate failing on it forever.
"""

from __future__ import annotations

import argparse
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from llorch_harness.choices import check_name
from llorch_harness.errors import HarnessError
from llorch_harness.pool.backends import BACKEND_NAMES

RESULTS_DB_ENV = "LLORCH_RESULTS_DB"
_RELATIVE = re.compile(r"(\d+)([dh])")


def parse_since(text: str) -> str:
    """`7d`, `12h`, `2026-11-28` or an ISO time -> the store's UTC timestamp form."""
    t = text.strip()
    m = _RELATIVE.fullmatch(t)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        when = datetime.now(UTC) - (timedelta(days=n) if unit == "d" else timedelta(hours=n))
    else:
        try:
            when = datetime.fromisoformat(t.replace("Z", "+00:00"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected 7d, 12h, 2026-11-28 or an ISO time, got {text!r}") from None
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `history` to the `llorch-harness` subcommands."""
    h = sub.add_parser(
        "history", help="performance records of worker builds: table, trends, --html plots",
        description="Show what gate runs measured per model, backend and pool, and each "
        "figure against its baseline (the median of the last passing runs with the same "
        "fingerprint except the worker binary).")
    h.add_argument("--results-db", metavar="PATH",
                   help=f"results store or export (default ${RESULTS_DB_ENV}, else "
                   ".runtime/gate/results.sqlite in the pool root, else the embedded lab's "
                   "store in the user's data directory)")
    h.add_argument("--pool-root", metavar="DIR",
                   help="pool root whose store to read (default $LLORCH_POOL_ROOT or cwd)")
    h.add_argument("--model", help="only this catalog model id")
    h.add_argument("--backend", metavar="BACKEND",
                   help=f"only this backend ({', '.join(BACKEND_NAMES)})")
    h.add_argument("--pool", help="only this pool (host name as the gate recorded it)")
    h.add_argument("--since", type=parse_since, metavar="WHEN",
                   help="only records since WHEN: 7d, 12h, 2026-11-28 or an ISO time")
    h.add_argument("--last", type=_positive, metavar="N", help="only the newest N records")
    h.add_argument("--html", metavar="FILE",
                   help="write a self-contained page: each figure over runs, latest run and "
                   "baseline band marked")
    h.add_argument("--export", metavar="FILE",
                   help="write the selected records as JSON (for `gate merge --perf`)")
    h.add_argument("--accept", type=_positive, metavar="ID",
                   help="accept record ID as the start of a new baseline (an intended change)")
    h.add_argument("--reason", default="accepted with llorch-harness history --accept",
                   help="why the change is intended (kept with the acceptance)")
    h.set_defaults(func=cmd_history)


def store_path(args: argparse.Namespace) -> Path:
    """--results-db, else $LLORCH_RESULTS_DB, else the pool root's store; when that does not
    exist and no pool root was named, the embedded lab's store (the README's gate runs)."""
    given = args.results_db or os.environ.get(RESULTS_DB_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    from llorch_harness.perf.store import DEFAULT_NAME
    from llorch_harness.pool.paths import POOL_ROOT_ENV, RUNTIME_DIRNAME, resolve_pool_root

    in_pool = resolve_pool_root(args.pool_root) / RUNTIME_DIRNAME / "gate" / DEFAULT_NAME
    if in_pool.exists() or args.pool_root or os.environ.get(POOL_ROOT_ENV):
        return in_pool
    from llorch_harness.perf.session import embedded_store

    embedded = embedded_store()
    return embedded if embedded.exists() else in_pool


def cmd_history(args: argparse.Namespace) -> int:
    from llorch_harness.perf import export, render
    from llorch_harness.perf.baseline import Rule
    from llorch_harness.perf.store import ResultsStore

    if args.backend is not None:  # a typo has the backend status, as everywhere
        check_name("backend", args.backend, BACKEND_NAMES)
    path = store_path(args)
    if args.accept is not None:
        with ResultsStore.open(path, create=False) as store:
            run = store.accept(args.accept, args.reason)
        need = Rule().min_runs - 1
        print(f"accepted run #{run.id} ({run.model} on {run.backend}, pool {run.pool}, "
              f"{run.recorded_at}) as the start of a new baseline: older runs no longer count; "
              f"the next {need} passing run(s) only record, then checks resume against the "
              "new level")
        return 0
    runs = [r for r in export.load_runs(path)
            if (args.model is None or r.model == args.model)
            and (args.backend is None or r.backend == args.backend)
            and (args.pool is None or r.pool == args.pool)
            and (args.since is None or r.recorded_at >= args.since)]
    if args.last:
        runs = runs[-args.last:]
    if not runs:
        print(f"no performance records in {path} match")
        return 0
    for line in render.history_table(runs):
        print(line)
    panels = render.latest_panels(runs)
    print()
    for line in render.trend_lines(panels):
        print(line)
    _write_outputs(args, path, runs, panels)
    print(f"\nresults store: {path} ({len(runs)} record(s) shown)")
    return 0


def _write_outputs(args: argparse.Namespace, path: Path, runs: list, panels: list) -> None:
    from llorch_harness.fsutil import atomic_write_text
    from llorch_harness.perf import export, render
    from llorch_harness.redaction import redact

    try:
        if args.html:
            page = render.page_html(panels, "llorch-harness performance history",
                                    f"{len(runs)} record(s) from {path}")
            atomic_write_text(Path(args.html), page)
            print(f"history page: {args.html}")
        if args.export:
            atomic_write_text(Path(args.export),
                              redact(export.dumps(export.export_doc(runs, str(path)))))
            print(f"export: {args.export}")
    except OSError as exc:
        raise HarnessError(f"cannot write {exc.filename or 'output'}: {exc.strerror or exc}",
                           "pick a writable path") from None
