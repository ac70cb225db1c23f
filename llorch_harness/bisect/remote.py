"""`llorch bisect --host POOL`: the bisect on a pool, over the one SSH transport, with its JSON
and HTML report brought back.

Why the bisect runs there and not here: it builds and runs the worker on the pool's own
hardware, and it holds the pool's device lease for its whole length. Like `gate run`, the
command runs in the pool's harness checkout (pools file `checkout`, its `.venv`), with the
pool's `env` and pool root; its progress streams to this terminal; the reports are written
into a `mktemp -d` there, read back with `cat` over the same transport, and the temp dir is
removed. Every word is quoted by the transport; stopping `llorch` (Ctrl-C, SIGTERM) stops
the remote bisect, which then removes its worktree and releases its lease.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llorch_harness.errors import HarnessError
from llorch_harness.remote.poolsfile import PoolConfig
from llorch_harness.remote.transport import STEP_TIMEOUT_S, Output, SshTransport

REMOTE_PYTHON = ".venv/bin/python"  # the README's install puts the venv in the checkout


def bisect_words(pool: PoolConfig, forwarded: Sequence[str], tmp: str) -> list[str]:
    """`env K=V ... python -m llorch_harness.cli.harness_main bisect ...` as words."""
    words = ["env", *(f"{k}={v}" for k, v in pool.env.items()), REMOTE_PYTHON, "-m",
             "llorch_harness.cli.harness_main", "bisect", *forwarded,
             f"--json={tmp}/bisect.json", f"--html={tmp}/bisect.html"]
    if pool.root:
        words.append(f"--pool-root={pool.root}")
    return words


def run_remote_bisect(pool: PoolConfig, forwarded: Sequence[str], json_dest: Path | None,
                      html_dest: Path | None, *, timeout: float | None = None,
                      connect_timeout: int | None = None) -> int:
    """The remote bisect's exit status; its reports land at json_dest / html_dest."""
    if not pool.checkout:
        raise HarnessError(f"pool {pool.name} has no checkout in the pools file",
                           f"set pools.{pool.name}.checkout: the llorch-harness checkout "
                           "(with its .venv) there", exit_code=2)
    conn = SshTransport(pool, connect_timeout=connect_timeout)
    tmp = conn.make_temp_dir("llorch-bisect")
    try:
        res = conn.run(bisect_words(pool, forwarded, tmp), cwd=pool.checkout, timeout=timeout,
                       stdout=Output.INHERIT, echo_stderr=True)
        for remote, dest in (("bisect.json", json_dest), ("bisect.html", html_dest)):
            if dest is not None and res.returncode in (0, 1):
                if not conn.fetch(f"{tmp}/{remote}", dest):
                    raise HarnessError(f"the bisect on pool {pool.name} wrote no {remote}")
                print(f"{remote.split('.')[1]} (from {pool.name}): {dest}", flush=True)
        return res.returncode
    finally:
        try:
            conn.run(["rm", "-rf", "--", tmp], timeout=STEP_TIMEOUT_S)
        except (HarnessError, OSError, KeyboardInterrupt):
            pass  # best effort: a pool gone mid-run keeps its temp dir
