"""Run `llorch-pool` on a pool over the one SSH transport (remote/transport.py).

`RemotePool` adds what is particular to `llorch-pool`: the pool's env as `env K=V` words,
its `llorch_pool` command, `--pool-root=ROOT`, then the arguments; the transport adds the
ssh options, the quoting, deadlines, output caps and the stop of the remote command when
the local one ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llorch_harness import redaction
from llorch_harness.errors import TIMED_OUT, HarnessError, PoolUnreachable
from llorch_harness.remote.fanout import fan_out
from llorch_harness.remote.hosts import normalize_remote_root
from llorch_harness.remote.poolsfile import PoolConfig
from llorch_harness.remote.transport import Output, SshTransport


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
        self.transport = SshTransport(config, connect_timeout=connect_timeout, ssh=ssh)
        self.root = normalize_remote_root(remote_root) if remote_root else config.root

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def host(self) -> str:
        return self.config.host

    def words(self, args: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
        """`env K=V ... llorch-pool --pool-root=ROOT ARGS` as words (quoted by the transport)."""
        env = self.config.env if env is None else env
        words: list[str] = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
        words += self.config.llorch_pool
        if self.root:
            words.append(f"--pool-root={self.root}")  # '=' form: a root may start with '-'
        return words + [str(a) for a in args]

    def ssh_options(self) -> list[str]:
        return self.transport.options()

    def ssh_argv(self, args: Sequence[str]) -> list[str]:
        """Options first, then `--`, then the validated destination and the quoted command."""
        return self.transport.argv(self.words(args))

    def display_command(self, args: Sequence[str]) -> str:
        """The ssh command line for people to read, with secret-looking env values masked."""
        return self.transport.display(self.words(args, redaction.redact_env(self.config.env)))

    def run(
        self, args: Sequence[str], *, capture: bool = False, timeout: float | None = None
    ) -> CompletedRemote:
        """Run `llorch-pool ARGS` on the pool; returncode is the remote command's.

        capture=False streams stdout and stderr live to ours; capture=True collects both.
        Raises PoolUnreachable when ssh itself fails (255), RemoteTimeout (124) past the
        timeout; the remote command never outlives this call (Ctrl-C included).
        """
        res = self.transport.run_retrying(  # a connect timeout once more, noted
            self.words(args), timeout=timeout,
            stdout=Output.CAPTURE if capture else Output.INHERIT, echo_stderr=not capture)
        return CompletedRemote(
            pool=self.name, host=self.host, args=tuple(args), returncode=res.returncode,
            stdout=res.stdout.decode("utf-8", "replace"), stderr=res.stderr,
            seconds=res.seconds,
        )


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
        if isinstance(self.error, PoolUnreachable):
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
            failed = HarnessError(f"pool {cfg.label()}: cannot run ssh: {exc.strerror or exc}")
            return PoolOutcome(cfg, None, failed, time.monotonic() - t0)

    return fan_out(pools, one, lambda cfg: cfg.name, on_done=on_done, on_wait=on_wait,
                   every=wait_interval)
