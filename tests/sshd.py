"""A real OpenSSH server on 127.0.0.1 for the remote-pool tests.

Why real: quoting, exit statuses, host key refusal and BatchMode behaviour are
properties of ssh and the remote shell; only a real sshd proves them. Keys are
made for the run, the client's known_hosts is pinned to this server's key,
and host key checking stays strict. The server is stopped in teardown, even
when a test fails.

Use: `sshd = make_sshd_fixture()` in a test module gives a module-scoped
fixture yielding an `SshdServer`.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SSHD = "/usr/sbin/sshd"  # sshd insists on an absolute path (it re-executes itself)
ALIAS = "testpool"
BAD_KEY_ALIAS = "badkey"  # same server, known_hosts pinned to another key
UNKNOWN_KEY_ALIAS = "unknownkey"  # same server, empty known_hosts
START_TIMEOUT_S = 20.0


class SshdUnavailable(Exception):
    """sshd or ssh-keygen is missing or will not start here: tests skip with this reason."""


@dataclass
class SshdServer:
    """What a test needs to reach the server: alias, port, client config, a remote pool root."""

    alias: str
    port: int
    config: Path  # pass as `ssh -F` / pools file `ssh_config`
    known_hosts: Path
    remote_root: Path  # stands for the pool root on the remote machine
    bin_dir: Path  # where llorch-pool lives; on the sessions' PATH
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def llorch_pool(self) -> str:
        return str(self.bin_dir / "llorch-pool")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> str:
    """A fresh ed25519 key pair; returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "llorch-test", "-f", str(path)],
        check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        timeout=30,
    )
    return path.with_suffix(".pub").read_text().strip()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Ready means the port answers with an SSH banner (not merely accepts)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SshdUnavailable(f"sshd exited with status {proc.returncode}: "
                                  f"{log.read_text(errors='replace').strip()[-300:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.settimeout(2)
            if s.recv(64).startswith(b"SSH-"):
                return
        time.sleep(0.1)
    raise SshdUnavailable(f"sshd did not answer on port {port} within {START_TIMEOUT_S:.0f}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _client_config(base: Path, port: int, user: str, key: Path, known: Path) -> str:
    def host(alias: str, known_hosts: Path) -> str:
        return "\n".join([
            f"Host {alias}",
            "  HostName 127.0.0.1",
            f"  Port {port}",
            f"  User {user}",
            f"  IdentityFile {key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {known_hosts}",
            "  GlobalKnownHostsFile " + str(base / "global_known_hosts"),
            "  StrictHostKeyChecking yes",
            "  BatchMode yes",
            "",
        ])

    return "".join([
        host(ALIAS, known),
        host(BAD_KEY_ALIAS, base / "known_hosts_wrong"),
        host(UNKNOWN_KEY_ALIAS, base / "known_hosts_empty"),
    ])


@contextlib.contextmanager
def start_sshd(base: Path, bin_dir: Path | None = None) -> Iterator[SshdServer]:
    """Start sshd under `base` (keys, configs, logs, remote pool root); stop it on exit."""
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None or not shutil.which("ssh"):
        raise SshdUnavailable(f"OpenSSH is not installed ({SSHD}, ssh, ssh-keygen needed; "
                              "Debian: apt-get install openssh-server openssh-client)")
    bin_dir = bin_dir or Path(sys.executable).parent
    base.mkdir(parents=True, exist_ok=True)
    host_pub = _keygen(base / "host_ed25519")
    client_pub = _keygen(base / "client_ed25519")
    wrong_pub = _keygen(base / "other_host_ed25519")
    (base / "authorized_keys").write_text(client_pub + "\n")
    for p in (base / "host_ed25519", base / "client_ed25519"):
        p.chmod(0o600)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privsep dir
    remote_root = base / "remote-pool"
    remote_root.mkdir()
    user = getpass.getuser()
    path_env = f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"
    log = base / "sshd.log"
    last_error = "sshd did not start"
    for _attempt in range(3):  # a free port can be taken between probe and bind
        port = free_port()
        cfg = base / "sshd_config"
        cfg.write_text("\n".join([
            "ListenAddress 127.0.0.1",
            f"Port {port}",
            f"HostKey {base / 'host_ed25519'}",
            f"AuthorizedKeysFile {base / 'authorized_keys'}",
            f"PidFile {base / 'sshd.pid'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {user}",
            "UsePAM no",
            "StrictModes no",
            "PrintMotd no",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "MaxStartups 64:30:128",
            f"SetEnv PATH={path_env}",
            "LogLevel VERBOSE",
            "",
        ]))
        with log.open("ab") as log_fh:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                    stdout=log_fh, stderr=log_fh, start_new_session=True)
        try:
            _wait_ready(proc, port, log)
        except SshdUnavailable as exc:
            _stop(proc)
            last_error = str(exc)
            if "Address already in use" in last_error:
                continue
            raise
        except BaseException:
            _stop(proc)
            raise
        break
    else:
        raise SshdUnavailable(last_error)
    try:
        known = base / "known_hosts"
        key_part = " ".join(host_pub.split()[:2])
        known.write_text(f"[127.0.0.1]:{port} {key_part}\n")
        wrong_part = " ".join(wrong_pub.split()[:2])
        (base / "known_hosts_wrong").write_text(f"[127.0.0.1]:{port} {wrong_part}\n")
        (base / "known_hosts_empty").write_text("")
        (base / "global_known_hosts").write_text("")
        client_cfg = base / "ssh_config"
        client_cfg.write_text(
            _client_config(base, port, user, base / "client_ed25519", known))
        yield SshdServer(ALIAS, port, client_cfg, known, remote_root, bin_dir, log, proc)
    finally:
        _stop(proc)


def make_sshd_fixture(scope: Any = "module") -> Any:
    """A pytest fixture (assign it to a name in a test module) yielding a running SshdServer."""

    @pytest.fixture(scope=scope)
    def _sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
        base = tmp_path_factory.mktemp("sshd")
        try:
            ctx = start_sshd(base)
            server = ctx.__enter__()
        except SshdUnavailable as exc:
            pytest.skip(f"cannot start a test sshd: {exc}")
        try:
            yield server
        finally:
            ctx.__exit__(None, None, None)

    return _sshd
