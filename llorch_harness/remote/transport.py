"""The one SSH transport: every remote command of `llorch pool(s)` and `gate run` goes here.

Why the system `ssh` client: `~/.ssh/config`, agents and known_hosts work as the user set
them up. The harness adds only what keeps a run safe and unattended: `BatchMode=yes` (never
hang on a prompt), a connect timeout and keep-alives; host key checking is left at the
user's setting and never weakened. The remote command is built from `shlex.quote`d words
only (the remote login shell must be POSIX-like: sh, bash, dash, zsh).

No remote process outlives the local one. Without a terminal, sshd does not signal a
command when its client goes away, so every command runs under `WRAPPER`: the command
runs in the foreground, a watcher reads the session's stdin, and when stdin ends it sends
SIGINT to the session's process group (sshd made the login shell its leader), then SIGTERM
once the command is gone or after 10 s, then SIGKILL. Locally, ssh's stdin is a pipe we
never write to: closing it (Ctrl-C, SIGTERM turned into KeyboardInterrupt, a deadline, an
output cap) or dying (even by SIGKILL: the kernel closes it) ends the remote command; the
local ssh is killed if it has not ended on its own within `STOP_GRACE_S`. `ssh -tt` would
do the same but mixes stderr into stdout and mangles output, so it is not used.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from llorch_harness import redaction
from llorch_harness.errors import (
    SSH_FAILED,
    HarnessError,
    PoolUnreachable,
    RemoteTimeout,
)
from llorch_harness.fsutil import atomic_write_bytes
from llorch_harness.labretry import retry_once
from llorch_harness.remote.poolsfile import PoolConfig, env_ssh_config

SERVER_ALIVE_INTERVAL = 15
SERVER_ALIVE_COUNT = 4
STOP_GRACE_S = 15.0  # local ssh after its stdin closed: the remote ladder takes <= ~12 s
KILL_WAIT_S = 5.0
STEP_TIMEOUT_S = 120.0  # a short step on the pool: mktemp, cat, rm
MAX_CAPTURE_BYTES = 64 * 1024 * 1024  # a captured answer larger than this is an error
STDERR_TAIL_BYTES = 64 * 1024  # stderr is kept as a tail (it is streamed or summarised)
WRAPPER_NAME = "llorch-remote"  # $0 of the wrapper: what `ps` shows on the pool

# $1: directory to run in ('' for none); the rest: the command's words. One line, so a
# dry run stays one line. `trap : INT` keeps the wrapper alive (a handler, not an ignore,
# so the command still gets SIGINT's default) until the command ends, and the watcher
# waits for that before SIGTERM. A background job of a non-interactive shell ignores
# SIGINT, which is why the command runs in the foreground and the watcher in background.
# No single quote inside: the command line stays readable once quoted (dry runs show it).
WRAPPER = (
    'if [ -n "$1" ]; then cd -- "$1" || exit 1; fi; shift; '
    "exec 3<&0 </dev/null; "
    '( while read -r line <&3; do :; done; trap "" INT TERM; kill -INT 0; n=0; '
    'while kill -0 $$ 2>/dev/null && [ "$n" -lt 10 ]; do sleep 1; n=$((n + 1)); done; '
    "kill -TERM 0; sleep 1; kill -KILL 0 ) >/dev/null 2>&1 & "
    'w=$!; exec 3<&-; trap : INT; "$@"; s=$?; kill "$w" 2>/dev/null; exit "$s"'
)


class Output:
    """Where a remote command's stdout goes: CAPTURE (returned), INHERIT (our stdout)."""

    CAPTURE = "capture"
    INHERIT = "inherit"


Stdout = str | IO[bytes]  # Output.CAPTURE, Output.INHERIT, or an open binary file


@dataclass(frozen=True)
class RemoteResult:
    """What one remote command did. stdout is empty unless captured; stderr is its tail."""

    returncode: int
    stdout: bytes
    stderr: str
    seconds: float


def last_line(text: str) -> str:
    """The last non-empty line, printable characters only, at most 200 of them."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    line = "".join(c for c in lines[-1] if c.isprintable())
    return line if len(line) <= 200 else line[:197] + "..."


def unreachable_hint(detail: str, config: PoolConfig | None = None) -> str | None:
    """What to do about ssh's own failure, from its last line; for an ad-hoc --host close
    to a pool's name in the pools file, that name first (a typo is likelier than a down
    host)."""
    hint = _ssh_hint(detail)
    if config is None or not config.near_pools:
        return hint
    typo = (f"{config.name!r} is not a pool in the pools file: did you mean "
            f"{' or '.join(config.near_pools)}?")
    return f"{typo}; {hint}" if hint else typo


def _ssh_hint(detail: str) -> str | None:
    low = detail.lower()
    if "host key" in low or "host identification" in low:
        return "the host key does not match known_hosts; verify the pool's key before updating it"
    if "permission denied" in low:
        return "key-based login failed; BatchMode=yes never asks for a password"
    if "timed out" in low or "refused" in low or "resolve" in low or "no route" in low:
        return "check the host name, port and that sshd runs there"
    return None


# --------------------------------------------------------------------------- live processes

_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()
_ABORT = threading.Event()


def interrupt_all() -> None:
    """End every remote command of this process (their threads then return) and refuse
    new ones until `clear_interrupt()`: a Ctrl-C during a run on several pools."""
    _ABORT.set()
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:
        _close_stdin(proc)
    # an ssh that cannot tell the pool (a dead link) is ended here, not after keep-alives
    timer = threading.Timer(STOP_GRACE_S, _end_all, args=(live,))
    timer.daemon = True
    timer.start()


def _end_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + KILL_WAIT_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def clear_interrupt() -> None:
    _ABORT.clear()


def _close_stdin(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass


def stop(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    """End one ssh: close its stdin (the remote command is stopped there), wait for ssh to
    report, then SIGTERM and SIGKILL. Never returns with the ssh process running."""
    try:
        _close_stdin(proc)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass
        proc.terminate()
        try:
            proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- transport


class SshTransport:
    """ssh to one pool with the harness's options; `run(words)` runs a command there."""

    def __init__(self, config: PoolConfig, *, connect_timeout: int | None = None,
                 ssh: str = "ssh") -> None:
        self.config = config
        self.connect_timeout = connect_timeout or config.connect_timeout
        self.ssh = ssh

    @property
    def host(self) -> str:
        return self.config.host

    def options(self) -> list[str]:
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

    def command(self, words: Sequence[str], cwd: str | None = None) -> str:
        """The one string ssh hands to the remote shell: the wrapper, then every word quoted."""
        words = [str(w) for w in words]
        if any("\0" in w for w in [*words, cwd or ""]):
            raise HarnessError("an argument for the remote command holds a NUL character",
                               exit_code=2)
        if not words:
            raise HarnessError("no remote command given", exit_code=2)
        parts = ["exec", "/bin/sh", "-c", WRAPPER, WRAPPER_NAME, cwd or "", *words]
        return " ".join(shlex.quote(p) for p in parts)

    def argv(self, words: Sequence[str], cwd: str | None = None) -> list[str]:
        """Options first, then `--`, then the validated destination and the quoted command."""
        return [self.ssh, *self.options(), "--", self.host, self.command(words, cwd)]

    def display(self, words: Sequence[str], cwd: str | None = None) -> str:
        """The ssh command line for people to read, through the one redaction (pass words
        whose secret env values are masked already: redaction cannot know every name)."""
        return redaction.redact(shlex.join(self.argv(words, cwd)))

    def run(self, words: Sequence[str], *, cwd: str | None = None,
            timeout: float | None = None, stdout: Stdout = Output.CAPTURE,
            echo_stderr: bool = False, max_stdout: int = MAX_CAPTURE_BYTES) -> RemoteResult:
        """Run `words` on the pool; returncode is the remote command's.

        Raises PoolUnreachable when ssh itself fails (255), RemoteTimeout past `timeout`
        (the remote command is stopped), HarnessError when a captured stdout exceeds
        `max_stdout`; on any exception (KeyboardInterrupt included) the remote command and
        the local ssh are ended before it propagates."""
        if _ABORT.is_set():
            raise KeyboardInterrupt
        argv = self.argv(words, cwd)
        if shutil.which(self.ssh) is None:
            raise HarnessError(f"ssh client {self.ssh!r} not found on PATH",
                               "install openssh-client")
        if stdout == Output.INHERIT:
            sys.stdout.flush()  # our earlier lines stay before the remote's
        start = time.monotonic()
        call = _Call(argv, stdout, echo_stderr, max_stdout)
        try:
            returncode = call.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RemoteTimeout(self.config.label(), float(timeout or 0)) from None
        stderr = call.stderr_text()
        if call.overflow:
            raise HarnessError(f"pool {self.config.label()}: answer larger than {max_stdout} "
                               "bytes", "the remote command was stopped")
        if returncode == SSH_FAILED:
            detail = last_line(stderr)
            raise PoolUnreachable(self.config.label(), self.host, detail,
                                  unreachable_hint(detail, self.config))
        return RemoteResult(returncode, bytes(call.out), stderr, time.monotonic() - start)

    def make_temp_dir(self, name: str, timeout: float = STEP_TIMEOUT_S) -> str:
        """`mktemp -d "${TMPDIR:-/tmp}/NAME.XXXXXXXX"` on the pool (where `gate run` and a
        remote bisect leave their reports); an answer that is not such a directory is refused
        before any use. `name` goes into a shell script, so it is a plain word or refused."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"not a temp dir name: {name!r}")
        script = f'mktemp -d "${{TMPDIR:-/tmp}}/{name}.XXXXXXXX"'
        res = self.run(["sh", "-c", script], timeout=timeout)
        if res.returncode != 0:
            raise HarnessError(f"mktemp failed on pool {self.config.label()} (exit "
                               f"{res.returncode}): {last_line(res.stderr)}")
        answer = res.stdout.decode("utf-8", "replace").strip()
        if not re.fullmatch(r"/[A-Za-z0-9._/+-]*/" + re.escape(name) + r"\.[A-Za-z0-9]{6,}",
                            answer):
            raise HarnessError(f"unexpected answer from mktemp: {answer[:80]!r}")
        return answer

    def fetch(self, remote: str, dest: Path, timeout: float = STEP_TIMEOUT_S,
              max_bytes: int = MAX_CAPTURE_BYTES) -> bool:
        """Copy one file from the pool (`cat` over this transport) to `dest`, atomically;
        False when the pool has no such file."""
        res = self.run(["cat", "--", remote], timeout=timeout, max_stdout=max_bytes)
        if res.returncode != 0:
            return False
        atomic_write_bytes(dest, res.stdout)
        return True

    def run_retrying(self, words: Sequence[str], **kw: Any) -> RemoteResult:
        """`run`, once more after ssh's own transient failure (a connect timeout or reset:
        nothing ran on the pool); the retry is noted for the report (`labretry`)."""
        return retry_once(lambda: self.run(words, **kw),
                          f"ssh to pool {self.config.label()}")


class _Call:
    """One ssh process with its pumps, registered as live until it has ended."""

    def __init__(self, argv: list[str], stdout: Stdout, echo_stderr: bool,
                 max_stdout: int) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.overflow = False
        self.max_stdout = max_stdout
        capture = stdout == Output.CAPTURE
        target: int | IO[bytes] | None = None
        if capture:
            target = subprocess.PIPE
        elif not isinstance(stdout, str):
            target = stdout
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=target, stderr=subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we end ssh in order
        )
        with _LIVE_LOCK:
            _LIVE.add(self.proc)
        sink = getattr(sys.stderr, "buffer", None) if echo_stderr else None
        self.pumps = [threading.Thread(target=self._pump_err, args=(sink,), daemon=True)]
        if capture:
            self.pumps.append(threading.Thread(target=self._pump_out, daemon=True))
        for t in self.pumps:
            t.start()

    def wait(self, timeout: float | None) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except BaseException:
            stop(self.proc)
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(self.proc)
            for t in self.pumps:
                t.join(timeout=10)
            _close_stdin(self.proc)

    def stderr_text(self) -> str:
        return self.err.decode("utf-8", "replace")

    def _pump_out(self) -> None:
        src = self.proc.stdout
        assert src is not None
        for chunk in _chunks(src):
            if len(self.out) + len(chunk) > self.max_stdout:
                self.overflow = True
                _close_stdin(self.proc)  # the remote command is stopped; keep draining
                continue
            self.out += chunk

    def _pump_err(self, sink: IO[bytes] | None) -> None:
        """Copy stderr as bytes arrive (progress bars use '\\r', not lines); keep its tail."""
        src = self.proc.stderr
        assert src is not None
        for chunk in _chunks(src):
            self.err += chunk
            if len(self.err) > 2 * STDERR_TAIL_BYTES:
                del self.err[: len(self.err) - STDERR_TAIL_BYTES]
            if sink is not None:
                try:
                    sink.write(chunk)
                    sink.flush()
                except (OSError, ValueError):
                    sink = None
        if len(self.err) > STDERR_TAIL_BYTES:
            del self.err[: len(self.err) - STDERR_TAIL_BYTES]


def _chunks(src: IO[bytes]) -> Iterator[bytes]:
    """Raw reads of a pipe as bytes arrive, until EOF or an error; then the pipe is closed."""
    fd = src.fileno()
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            yield chunk
    finally:
        src.close()
