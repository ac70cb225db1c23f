"""Run `llorch-pool` on a pool through the system `ssh` client.

Why the system client: `~/.ssh/config`, agents and known_hosts then work as the
user set them up. The harness adds only what keeps a run safe and unattended:
`BatchMode=yes` (never hang on a prompt), a connect timeout, keep-alives, and a
remote command built from `shlex.quote`d words only. Host key checking is left
at the user's setting and never weakened.

The remote login shell must be POSIX-like (sh, bash, dash, zsh): that is the
quoting `shlex.quote` produces.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import IO, TypeVar

from llorch_harness import redaction
from llorch_harness.errors import HarnessError
from llorch_harness.remote.poolsfile import PoolConfig, env_ssh_config, normalize_remote_root

T = TypeVar("T")
R = TypeVar("R")

SSH_FAILED = 255  # ssh's own status for "could not connect / authenticate / verify"
TIMED_OUT = 124
SERVER_ALIVE_INTERVAL = 15
SERVER_ALIVE_COUNT = 4
_TAIL_BYTES = 8192


class SshConnectionError(HarnessError):
    """ssh itself failed (status 255): unreachable, refused, auth or host key problem."""

    def __init__(self, pool: PoolConfig, detail: str) -> None:
        super().__init__(
            f"cannot reach pool {pool.label()} over ssh: {detail or 'ssh exited with status 255'}",
            _hint_for(detail),
            exit_code=SSH_FAILED,
        )
        self.pool = pool
        self.detail = detail


def _hint_for(detail: str) -> str | None:
    low = detail.lower()
    if "host key" in low or "host identification" in low:
        return "the host key does not match known_hosts; verify the pool's key before updating it"
    if "permission denied" in low:
        return "key-based login failed; BatchMode=yes never asks for a password"
    if "timed out" in low or "refused" in low or "resolve" in low or "no route" in low:
        return "check the host name, port and that sshd runs there"
    return None


@dataclass(frozen=True)
class CompletedRemote:
    """What one remote command did. stdout is empty when it was streamed instead of captured."""

    pool: str
    host: str
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def stderr_tail(self, lines: int = 5) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()][-lines:]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    line = "".join(c for c in lines[-1] if c.isprintable())
    return line if len(line) <= 200 else line[:197] + "..."


class RemotePool:
    """One pool reached over ssh. `run(args)` runs `llorch-pool ARGS` there."""

    def __init__(
        self,
        config: PoolConfig,
        *,
        connect_timeout: int | None = None,
        remote_root: str | None = None,
        ssh: str = "ssh",
    ) -> None:
        self.config = config
        self.connect_timeout = connect_timeout or config.connect_timeout
        self.root = normalize_remote_root(remote_root) if remote_root else config.root
        self.ssh = ssh

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def host(self) -> str:
        return self.config.host

    def _words(self, args: Sequence[str], env: dict[str, str]) -> list[str]:
        words: list[str] = []
        if env:
            words += ["env", *(f"{k}={v}" for k, v in env.items())]
        words += self.config.llorch_pool
        if self.root:
            words.append(f"--pool-root={self.root}")  # '=' form: a root may start with '-'
        words += [str(a) for a in args]
        if any("\0" in w for w in words):
            raise HarnessError("an argument for the remote command holds a NUL character",
                               exit_code=2)
        return words

    def remote_command(self, args: Sequence[str]) -> str:
        """The one string ssh hands to the remote shell: every word quoted, nothing else."""
        return " ".join(shlex.quote(w) for w in self._words(args, self.config.env))

    def ssh_options(self) -> list[str]:
        cfg = self.config.ssh_config or env_ssh_config()
        opts = ["-F", str(cfg)] if cfg else []
        opts += [
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={self.connect_timeout}",
            "-o", f"ServerAliveInterval={SERVER_ALIVE_INTERVAL}",
            "-o", f"ServerAliveCountMax={SERVER_ALIVE_COUNT}",
        ]
        if self.config.destination.port:
            opts += ["-p", str(self.config.destination.port)]
        return [*opts, "-T"]

    def ssh_argv(self, args: Sequence[str]) -> list[str]:
        """Options first, then `--`, then the validated destination and the quoted command."""
        return [self.ssh, *self.ssh_options(), "--", self.host, self.remote_command(args)]

    def display_command(self, args: Sequence[str]) -> str:
        """The ssh command line for people to read, with secret-looking env values masked."""
        masked = redaction.redact_env(self.config.env)
        remote = " ".join(shlex.quote(w) for w in self._words(args, masked))
        return redaction.redact(shlex.join([self.ssh, *self.ssh_options(), "--", self.host,
                                            remote]))

    def _popen(self, args: Sequence[str], stdout: int | None) -> subprocess.Popen[bytes]:
        if shutil.which(self.ssh) is None:
            raise HarnessError(f"ssh client {self.ssh!r} not found on PATH",
                               "install openssh-client")
        return subprocess.Popen(
            self.ssh_argv(args), stdin=subprocess.DEVNULL, stdout=stdout,
            stderr=subprocess.PIPE,
        )

    def run(
        self, args: Sequence[str], *, capture: bool = False, timeout: float | None = None
    ) -> CompletedRemote:
        """Run `llorch-pool ARGS` on the pool; returncode is the remote command's.

        capture=False streams stdout and stderr live to ours; capture=True collects both.
        Raises SshConnectionError when ssh itself fails (255), HarnessError (124) on timeout.
        """
        start = time.monotonic()
        if not capture:
            sys.stdout.flush()  # our earlier lines stay before the remote's
        proc = self._popen(args, subprocess.PIPE if capture else None)
        err_buf = bytearray()
        out_buf = bytearray()
        pumps = [threading.Thread(target=_pump, args=(proc.stderr, None if capture else _stderr(),
                                                      err_buf), daemon=True)]
        if capture:
            pumps.append(threading.Thread(target=_pump, args=(proc.stdout, None, out_buf),
                                          daemon=True))
        for t in pumps:
            t.start()
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            end_process(proc)
            raise HarnessError(
                f"pool {self.config.label()}: remote command did not finish within {timeout:g}s",
                "the remote command may still be running there", exit_code=TIMED_OUT,
            ) from None
        except BaseException:
            end_process(proc)
            raise
        finally:
            for t in pumps:
                t.join(timeout=10)
        stderr = err_buf.decode("utf-8", "replace")
        if returncode == SSH_FAILED:
            raise SshConnectionError(self.config, _last_line(stderr))
        return CompletedRemote(
            pool=self.name, host=self.host, args=tuple(args), returncode=returncode,
            stdout=out_buf.decode("utf-8", "replace"), stderr=stderr,
            seconds=time.monotonic() - start,
        )


def _stderr() -> IO[bytes] | None:
    return getattr(sys.stderr, "buffer", None)


def _pump(src: IO[bytes] | None, sink: IO[bytes] | None, keep: bytearray) -> None:
    """Copy a pipe as bytes arrive (progress bars use '\\r', not lines) and keep its text."""
    if src is None:
        return
    fd = src.fileno()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        keep += chunk
        if sink is not None:
            try:
                sink.write(chunk)
                sink.flush()
            except (OSError, ValueError):
                sink = None
        elif len(keep) > 64 * 1024 * 1024:
            del keep[: len(keep) - 64 * 1024 * 1024]  # bound memory on endless output
    if sink is not None and len(keep) > _TAIL_BYTES:
        del keep[: len(keep) - _TAIL_BYTES]  # streamed already: keep only the tail
    src.close()


def end_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, wait briefly, then kill: no ssh client outlives its command."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_remote(
    pool: PoolConfig, args: Sequence[str], *, stream: bool = True,
    timeout: float | None = None, connect_timeout: int | None = None,
) -> int:
    """Run `llorch-pool ARGS` on one pool; the remote exit status, or SshConnectionError."""
    remote = RemotePool(pool, connect_timeout=connect_timeout)
    return remote.run(args, capture=not stream, timeout=timeout).returncode


@dataclass(frozen=True)
class PoolOutcome:
    """One pool's share of a run across pools: a result, or the error that prevented one."""

    pool: PoolConfig
    result: CompletedRemote | None
    error: HarnessError | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.ok

    @property
    def exit_code(self) -> int:
        if self.result is not None:
            return self.result.returncode
        return self.error.exit_code if self.error is not None else 1

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        if isinstance(self.error, SshConnectionError):
            return "unreachable"
        if self.error is not None and self.error.exit_code == TIMED_OUT:
            return "timed out"
        return "failed"

    @property
    def detail(self) -> str:
        if self.error is not None:
            return self.error.one_line()
        assert self.result is not None
        tail = self.result.stderr_tail(1)
        return tail[0].strip() if tail and not self.ok else ""


def run_on_pools(
    pools: Sequence[PoolConfig],
    args: Sequence[str],
    *,
    timeout: float | None = None,
    connect_timeout: int | None = None,
    on_done: Callable[[PoolOutcome], None] | None = None,
    on_wait: Callable[[list[str], float], None] | None = None,
    wait_interval: float = 30.0,
) -> list[PoolOutcome]:
    """Run the same `llorch-pool ARGS` on every pool at once (threads; ssh does the work).

    on_done fires as each pool finishes; on_wait every wait_interval seconds with the
    pools still running. The outcomes come back in the order of `pools`.
    """

    def one(cfg: PoolConfig) -> PoolOutcome:
        t0 = time.monotonic()
        try:
            res = RemotePool(cfg, connect_timeout=connect_timeout).run(
                args, capture=True, timeout=timeout)
            return PoolOutcome(cfg, res, None, time.monotonic() - t0)
        except HarnessError as err:
            return PoolOutcome(cfg, None, err, time.monotonic() - t0)
        except OSError as exc:
            err = HarnessError(f"pool {cfg.label()}: cannot run ssh: {exc.strerror or exc}")
            return PoolOutcome(cfg, None, err, time.monotonic() - t0)

    return fan_out(pools, one, lambda cfg: cfg.name, on_done=on_done, on_wait=on_wait,
                   every=wait_interval)


def fan_out(
    items: Sequence[T],
    work: Callable[[T], R],
    name: Callable[[T], str],
    *,
    on_done: Callable[[R], None] | None = None,
    on_wait: Callable[[list[str], float], None] | None = None,
    every: float = 30.0,
) -> list[R]:
    """`work` on every item at once (one thread each, ssh does the work), results in order.

    on_done fires as each finishes; on_wait every `every` seconds with the names still
    running and the seconds since the start.
    """
    start = time.monotonic()
    results: dict[int, R] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(len(items), 16)),
                            thread_name_prefix="llorch-pool") as ex:
        futures: dict[Future[R], int] = {ex.submit(work, it): i for i, it in enumerate(items)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=every, return_when=FIRST_COMPLETED)
            for fut in done:
                result = fut.result()
                results[futures[fut]] = result
                if on_done is not None:
                    on_done(result)
            if not done and pending and on_wait is not None:
                on_wait(sorted(name(items[futures[f]]) for f in pending),
                        time.monotonic() - start)
    return [results[i] for i in range(len(items))]
