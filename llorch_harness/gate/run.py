"""`llorch-harness gate run`: run the gate on every pool over ssh at once, fetch, merge.

Why: labs without CI runners still need one CP3 verdict across the mac and the
workstation. Each pool runs the gate in its own harness checkout, with the pool's
backends required (`--require-backend`), so a missing GPU or binary fails instead of
skipping. Every remote step goes through the one SSH transport (remote/transport.py:
BatchMode, connect timeout, host key checking left on, every word `shlex.quote`d, and no
remote command outliving this one, Ctrl-C included). Results come back with `cat` over
the same transport (one set of options, no scp/sftp quoting rules), then the merge
judges them.

Per pool, in order: `mktemp -d` there; in CHECKOUT `env ... .venv/bin/pytest -m
BACKENDS --require-backend ... --gate-json TMP/... --html TMP/...`; `cat` the results
back into OUT; `rm -rf TMP` there. A pool that cannot be reached, or that wrote no
result, counts as missing in the merge.
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from llorch_harness import redaction
from llorch_harness.choices import UnknownName
from llorch_harness.errors import HarnessError, PoolUnreachable
from llorch_harness.gate import merge as gatemerge
from llorch_harness.remote import poolsfile as pools
from llorch_harness.remote.fanout import fan_out
from llorch_harness.remote.transport import STEP_TIMEOUT_S, SshTransport

REMOTE_PYTEST = ".venv/bin/pytest"  # the README's install puts the venv in the checkout
DEFAULT_TIMEOUT_S = 3600.0
PROGRESS_EVERY_S = 30.0


# --------------------------------------------------------------------------- pools


@dataclass(frozen=True)
class GatePool:
    """A pool from the pools file plus what the gate run needs there."""

    config: pools.PoolConfig
    checkout: str
    gate_models: tuple[str, ...] = ()  # --gate-models for the pool's pytest (CP4); () default

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def backends(self) -> tuple[str, ...]:
        return self.config.backends


def load_gate_pools(names: Sequence[str], pools_file: str | None,
                    pool_root: str | None = None) -> list[GatePool]:
    """The named pools with their checkout and backends; one-line error for what is missing."""
    path = pools.find_pools_file(pools_file, pool_root)
    if path is None:
        raise HarnessError("no pools file found",
                           "pass --pools-file, or create pools.toml in the pool root or "
                           "~/.config/llorch/pools.toml", exit_code=2)
    parsed = pools.load_pools_file(path)
    out = []
    for name in names:
        cfg = parsed.get(name)
        if cfg is None:
            raise UnknownName("pool", name, parsed.pools, extra_hint=f"pools file {path}")
        checkout = cfg.checkout
        if not checkout:
            raise HarnessError(f"pools file {path}: pools.{name}.checkout: missing",
                               "the directory holding the llorch-harness checkout (with its "
                               ".venv) on that pool", exit_code=2)
        if not cfg.backends:
            raise HarnessError(f"pools file {path}: pools.{name}.backends: missing",
                               'the backends this pool is the gate for, e.g. ["metal"]',
                               exit_code=2)
        out.append(GatePool(cfg, checkout))
    return out


# --------------------------------------------------------------------------- commands


def pytest_words(pool: GatePool, tmp: str) -> list[str]:
    """The gate's pytest command line on the pool (words, quoted later)."""
    expr = " or ".join(pool.backends)
    words = [REMOTE_PYTEST, "-p", "no:cacheprovider", "--color=no", "-m", expr]
    for b in pool.backends:
        words += ["--require-backend", b]
    if pool.config.root:
        words.append(f"--pool-root={pool.config.root}")
    if pool.gate_models:
        words.append(f"--gate-models={','.join(pool.gate_models)}")
    stem = f"{tmp}/{result_stem(pool.name)}"
    words += [f"--basetemp={tmp}/basetemp", f"--gate-json={stem}.json",
              f"--html={stem}.html", "--self-contained-html", f"--junitxml={stem}.xml"]
    return words


def run_words(pool: GatePool, tmp: str, env: dict[str, str] | None = None) -> list[str]:
    """`env K=V ... pytest ...` as words; the transport runs them in the checkout."""
    env = pool.config.env if env is None else env
    return ["env", *(f"{k}={v}" for k, v in env.items()), *pytest_words(pool, tmp)]


def display_run_command(pool: GatePool, tmp: str) -> str:
    """The command for people to read: secret-looking env values masked."""
    words = run_words(pool, tmp, pool.config.redacted_env())
    return (f"cd -- {shlex.quote(pool.checkout)} && "
            + redaction.redact(shlex.join(words)))


def result_stem(pool_name: str) -> str:
    return f"cp3-{pool_name}"


# --------------------------------------------------------------------------- one pool


@dataclass
class PoolRun:
    """What happened on one pool."""

    pool: GatePool
    status: str  # "ok" | "unreachable" | "no result" | "error"
    detail: str
    seconds: float
    pytest_exit: int | None = None
    result_json: Path | None = None
    report_html: Path | None = None
    log: Path | None = None
    gate_verdict: str | None = None


def _run_gate(conn: SshTransport, pool: GatePool, tmp: str, log: Path, timeout: float) -> int:
    """pytest in the pool's checkout, its output into `log`; returns pytest's exit status."""
    with log.open("wb") as fh:
        fh.write(f"$ ssh {pool.config.host} {display_run_command(pool, tmp)}\n".encode())
        fh.flush()
        res = conn.run(run_words(pool, tmp), cwd=pool.checkout, timeout=timeout, stdout=fh)
        fh.write(redaction.redact(res.stderr).encode())
    return res.returncode


def run_pool(pool: GatePool, out_dir: Path, *, timeout: float = DEFAULT_TIMEOUT_S,
             ssh: str = "ssh") -> PoolRun:
    """Run the gate on one pool and copy its results into out_dir. Never raises for the pool's
    own failures: they become the PoolRun's status."""
    t0 = time.monotonic()
    stem = result_stem(pool.name)
    log = out_dir / f"{stem}.log"
    conn = SshTransport(pool.config, ssh=ssh)
    tmp: str | None = None

    def done(status: str, detail: str, **kw: object) -> PoolRun:
        return PoolRun(pool, status, detail, time.monotonic() - t0, log=log, **kw)  # type: ignore[arg-type]

    try:
        tmp = conn.make_temp_dir("llorch-gate")
        pytest_exit = _run_gate(conn, pool, tmp, log, timeout)
        json_path = out_dir / f"{stem}.json"
        if not conn.fetch(f"{tmp}/{stem}.json", json_path):
            return done("no result", f"pytest exited {pytest_exit} and wrote no gate result "
                        f"(see {log})", pytest_exit=pytest_exit)
        html_path = out_dir / f"{stem}.html"
        have_html = conn.fetch(f"{tmp}/{stem}.html", html_path)
        conn.fetch(f"{tmp}/{stem}.xml", out_dir / f"{stem}.xml")
        return done("ok", f"pytest exited {pytest_exit}", pytest_exit=pytest_exit,
                    result_json=json_path, report_html=html_path if have_html else None)
    except PoolUnreachable as exc:
        return done("unreachable", f"host {exc.host}: {exc.detail or 'ssh failed'}")
    except HarnessError as exc:
        return done("error", exc.one_line())
    except OSError as exc:
        return done("error", f"cannot run ssh or write {out_dir}: {exc.strerror or exc}")
    finally:
        if tmp is not None:
            try:
                conn.run(["rm", "-rf", "--", tmp], timeout=STEP_TIMEOUT_S)
            except (HarnessError, OSError):
                pass  # best effort: a pool gone mid-run keeps its temp dir


# --------------------------------------------------------------------------- all pools


class Progress:
    """One line per event per pool; lines from threads never interleave."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            print(text, file=self.stream, flush=True)


def run_pools(gate_pools: Sequence[GatePool], out_dir: Path, *,
              timeout: float = DEFAULT_TIMEOUT_S, progress: Progress | None = None,
              ssh: str = "ssh", every: float = PROGRESS_EVERY_S,
              on_done: Callable[[PoolRun], None] | None = None) -> list[PoolRun]:
    """Every pool at once (one thread each; ssh does the work); runs in the order given."""
    shown = progress or Progress()
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in gate_pools:
        shown.line(f"[{p.name}] starting on {p.config.host}: pytest -m "
                   f"{shlex.quote(' or '.join(p.backends))} in {p.checkout}")

    def done(run: PoolRun) -> None:
        shown.line(_done_line(run))
        if on_done is not None:
            on_done(run)

    def waiting(names: list[str], seconds: float) -> None:
        shown.line(f"still running after {seconds:.0f}s: {', '.join(names)}")

    return fan_out(gate_pools, lambda p: run_pool(p, out_dir, timeout=timeout, ssh=ssh),
                   lambda p: p.name, on_done=done, on_wait=waiting, every=every)


def _done_line(run: PoolRun) -> str:
    head = f"[{run.pool.name}] "
    if run.status == "ok":
        return (f"{head}done in {run.seconds:.0f}s: {run.detail}; results in {run.result_json}"
                + (f", report {run.report_html}" if run.report_html else ""))
    if run.status == "unreachable":
        return f"{head}UNREACHABLE ({run.detail}); counts as a missing pool"
    return f"{head}{run.status.upper()}: {run.detail}; counts as a missing pool"


def merge_runs(runs: Sequence[PoolRun], *, max_age_h: float = gatemerge.DEFAULT_MAX_AGE_H,
               ) -> tuple[gatemerge.MergedGate, dict[str, Path | str | None]]:
    """Merge what came back; pools without a readable result are missing, with the reason."""
    results: list[gatemerge.PoolResult] = []
    absent: dict[str, str] = {}
    reports: dict[str, Path | str | None] = {}
    for run in runs:
        if run.status != "ok" or run.result_json is None:
            absent[run.pool.name] = f"{run.status}: {run.detail}"
            continue
        try:
            res = gatemerge.load_result(run.result_json, name=run.pool.name)
        except HarnessError as exc:
            absent[run.pool.name] = f"result unreadable: {exc.one_line()}"
            continue
        results.append(res)
        reports[res.name] = run.report_html
    merged = gatemerge.merge(results, expect_pools=[r.pool.name for r in runs],
                             absent=absent, max_age_h=max_age_h)
    return merged, reports
