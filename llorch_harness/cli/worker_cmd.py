"""`llorch-pool worker spawn|list|stop|logs|reap`: thin layer over llorch_harness.pool.workers.

The arguments are defined in cli/pool_commands.py (shared with `llorch pool`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO, cast

import psutil

from llorch_harness.cli.common import pool_line, pool_paths, require_pool
from llorch_harness.cli.prettylog import LineWriter, pretty_text, pretty_writer
from llorch_harness.errors import HarnessError
from llorch_harness.pool.paths import PoolPaths
from llorch_harness.pool.procs import read_marker
from llorch_harness.pool.workers.defaults import LOG_TAIL_LINES
from llorch_harness.pool.workers.listing import list_workers
from llorch_harness.pool.workers.logs import follow_logs, worker_logs
from llorch_harness.pool.workers.spawn import WorkerStartError, spawn_worker
from llorch_harness.pool.workers.stop import (
    StopFailure,
    StopResult,
    find_orphans,
    reap_orphans,
    stop_every,
    stop_worker,
)
from llorch_harness.redaction import redact


def cmd_spawn(args: argparse.Namespace) -> int:
    paths = pool_paths(args)
    # the pool line comes with the spawn's first line: input refused before any step
    # (a mistyped id) stays one error line
    out = cast(TextIO, HeadedWriter(sys.stderr if args.json else sys.stdout,
                                    pool_line(paths, args, writes=True)))
    try:
        handle = spawn_worker(
            paths, args.backend, args.model, gpu=args.gpu, port=args.port, worker=args.worker,
            bin_dir=args.llorch_bin_dir, ready_timeout=args.ready_timeout,
            worker_id=args.worker_id, out=out, lease_dir=args.lease_dir,
            lease_wait=args.lease_wait,
        )
    except WorkerStartError as err:
        print(f"--- last {LOG_TAIL_LINES} lines of {err.log_path} ---", file=sys.stderr)
        for line in err.log_tail.splitlines():
            print(f"  | {line}", file=sys.stderr)
        raise
    if args.json:
        print(json.dumps(handle.record.to_json(), indent=2))
    return 0  # the worker is detached: it outlives this command


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def cmd_list(args: argparse.Namespace) -> int:
    paths = pool_paths(args)
    rows = list_workers(paths)
    orphans = find_orphans(paths)
    if args.json:
        print(json.dumps({
            "pool_root": str(paths.root),
            "workers": [r.to_json() for r in rows],
            "orphans": [_orphan_json(p) for p in orphans],
        }, indent=2))
        return 0
    print(pool_line(paths, args))
    if not rows and not orphans:
        print("No workers running in this pool")
        return 0
    print("\nWorkers")
    print("=" * 100)
    print(f"{'Worker ID':<20} {'PID':<8} {'Model':<15} {'Backend':<8} {'Port':<6} "
          f"{'Status':<9} {'Health':<12} {'Uptime'}")
    print("-" * 100)
    for r in rows:
        mark = {"running": "✅", "starting": "⏳"}.get(r.status, "❌")
        print(f"{r.worker_id:<20} {r.pid or '-':<8} {r.model_id:<15} {r.backend:<8} "
              f"{r.port or '-':<6} {r.status:<9} {r.health:<12} {_uptime(r.uptime_s):<7} {mark}"
              + (f"  ({r.note})" if r.note else ""))
    for o in orphans:
        j = _orphan_json(o)
        print(f"{j['worker_id']:<20} {j['pid']:<8} {'-':<15} {'-':<8} {'-':<6} {'orphan':<9} "
              f"{'-':<12} {'-':<7} ⚠️  (no record: llorch-pool worker reap)")
    print("=" * 100)
    return 0


def _orphan_json(proc: psutil.Process) -> dict[str, object]:
    marker = read_marker(proc)
    return {"pid": proc.pid, "worker_id": marker[0] if marker else "?",
            "pool_root": marker[1] if marker else None}


def cmd_stop(args: argparse.Namespace) -> int:
    paths = pool_paths(args)
    if args.all == bool(args.worker_id):
        raise HarnessError("give a worker id or --all (not both)",
                           "e.g. llorch-pool worker stop worker-cpu-0", exit_code=2)
    failures: list[StopFailure] = []
    if args.all:  # every worker it can; the records it cannot handle are reported after
        results, failures = stop_every(paths, grace=args.grace)
    else:
        results = [_stop_one(paths, args.worker_id, args.grace)]
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        print(pool_line(paths, args))
    if not args.json and not results and not failures:
        print("No workers to stop: none is recorded in this pool")
    for r in results if not args.json else []:
        if r.step == NOT_RUNNING:
            print(f"Worker {r.worker_id} is not running (no record in this pool): nothing "
                  "to stop")
            continue
        how = {"sigint": "stopped gracefully (SIGINT)", "sigterm": "stopped by SIGTERM",
               "sigkill": "killed (SIGKILL)", "already_dead": "was already dead",
               "stale_record": "had a stale record (pid reused); nothing signalled"}[r.step]
        port = "port free" if r.port_free else "PORT STILL IN USE"
        print(f"✅ Worker {r.worker_id} {how} in {r.seconds:.2f} s; {port}; record removed")
    if failures:
        sys.stdout.flush()
        for f in failures:
            print(redact(f"  not handled: {f.record}: {f.message}"), file=sys.stderr)
        print(f"error: {len(failures)} worker record(s) not handled, {len(results)} handled "
              f"(look at the records named above, fix or move them aside, then run "
              f"llorch-pool worker stop --all again)", file=sys.stderr, flush=True)
        return 1
    return 0 if all(r.port_free for r in results) else 1


NOT_RUNNING = "not_running"  # `worker stop ID` of a worker with no record: nothing to do


def _stop_one(paths: PoolPaths, worker_id: str, grace: float) -> StopResult:
    """The one rule of `worker stop` (docs/workers.md): the goal is "not running", so a
    worker that is not running (no record: stopped before, or never started) is success
    with step `not_running`, as `stop --all` of nothing is; processes it left without a
    record are still an error (they need `worker reap`)."""
    try:
        return stop_worker(paths, worker_id, grace=grace)
    except HarnessError as err:
        if not err.message.startswith(f"no worker {worker_id} ") or "reap" in (err.hint or ""):
            raise
        return StopResult(worker_id, NOT_RUNNING, 0.0, True)


def cmd_logs(args: argparse.Namespace) -> int:
    paths = require_pool(args)
    if args.lines < 0:
        raise HarnessError("-n must be 0 or more", "e.g. -n 100", exit_code=2)
    if args.follow:
        # whole lines through the one redaction: a secret split across two reads is whole here
        redacting = LineWriter(sys.stdout, redact)
        out = pretty_writer(redacting) if args.pretty else redacting  # type: ignore[arg-type]
        try:
            follow_logs(paths, args.worker_id, args.lines, out=out)  # type: ignore[arg-type]
        except KeyboardInterrupt:
            return 0
        finally:
            out.close()
            redacting.close()
        return 0
    text = worker_logs(paths, args.worker_id, args.lines)
    if text:
        text = redact(text)  # the worker's own output may hold a token
        print(pretty_text(text) if args.pretty else text)
    return 0


class HeadedWriter:
    """A text stream that writes `head` (one line) before the first text written to it."""

    def __init__(self, out: TextIO, head: str) -> None:
        self.out = out
        self.head: str | None = head

    def write(self, text: str) -> int:
        if self.head is not None and text:
            self.out.write(self.head + "\n")
            self.head = None
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def cmd_reap(args: argparse.Namespace) -> int:
    paths = None if args.all_pools else pool_paths(args)
    pids = reap_orphans(paths, grace=args.grace)
    if paths is not None:
        print(pool_line(paths, args))
    if pids:
        print(f"✅ Reaped {len(pids)} orphan process(es): {', '.join(map(str, pids))}")
    else:
        print("No orphans" + (" of this pool" if paths is not None else " in any pool"))
    return 0
