"""The pools file (`pools.toml`): every pool, its host, root, command, env and backends.

A host or pool name ends up on an `ssh` command line, so it is validated here,
strictly, before anything runs: a value ssh could read as an option
(`-oProxyCommand=...`) or a shell could read as syntax never gets through.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llorch_harness import redaction
from llorch_harness.choices import did_you_mean
from llorch_harness.errors import HarnessError
from llorch_harness.pool.backends import BACKEND_NAMES
from llorch_harness.pool.paths import POOL_ROOT_ENV, printable, resolve_pool_root
from llorch_harness.remote.hosts import (
    USER_RE,
    Destination,
    normalize_remote_root,
    parse_destination,
    parse_port,
    validate_pool_name,
)

POOLS_FILENAME = "pools.toml"
MAX_POOLS_FILE_BYTES = 1024 * 1024
SSH_CONFIG_ENV = "LLORCH_SSH_CONFIG"
DEFAULT_LLORCH_POOL = "llorch-pool"
DEFAULT_CONNECT_TIMEOUT = 10
VALID_BACKENDS = BACKEND_NAMES  # the one backend table (pool/backends.py)

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_TOP_KEYS = {"pools", "ssh_config", "connect_timeout"}
_POOL_KEYS = {
    "host", "root", "llorch_pool", "backends", "env", "port", "ssh_config", "user",
    "connect_timeout", "checkout",
}


@dataclass(frozen=True)
class PoolConfig:
    """One pool: where to ssh, where its pool root is there, what to run there."""

    name: str
    destination: Destination
    root: str | None = None
    checkout: str | None = None  # the harness checkout there, for `llorch-harness gate run`
    llorch_pool: tuple[str, ...] = (DEFAULT_LLORCH_POOL,)
    backends: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ssh_config: Path | None = None
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    source: Path | None = None
    # an ad-hoc --host close to a pool's name in the file (a typo?): named if ssh fails
    near_pools: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        return str(self.destination)

    def label(self) -> str:
        """`name` for ad-hoc hosts, `name (host)` for pools from a file."""
        return self.name if self.name == self.host else f"{self.name} ({self.host})"

    def redacted_env(self) -> dict[str, str]:
        """For display: secret names, token-shaped values and URL credentials masked."""
        return redaction.redact_env(self.env)


@dataclass(frozen=True)
class PoolsFile:
    path: Path | None
    pools: dict[str, PoolConfig]

    def get(self, name: str) -> PoolConfig | None:
        return self.pools.get(name)


def user_pools_file() -> Path | None:
    """`$XDG_CONFIG_HOME/llorch/pools.toml`, else `~/.config/llorch/pools.toml`.

    A relative XDG_CONFIG_HOME is ignored (the XDG rule): it would name a directory below
    wherever the command happens to run."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "llorch" / POOLS_FILENAME
    try:
        return Path.home() / ".config" / "llorch" / POOLS_FILENAME
    except RuntimeError:  # no home directory known
        return None


def default_pools_file(pool_root: str | None = None) -> Path | None:
    """`pools.toml` in the pool root the user *named* (--pool-root or $LLORCH_POOL_ROOT),
    else the user's config file; None if neither exists.

    Never the current directory by default: a pools file can make ssh run commands
    (`ssh_config` with ProxyCommand, `llorch_pool`), so one planted in a directory someone
    merely `cd`s into must not be loaded. Every file found is still checked by
    load_pools_file (owner, permissions).
    """
    candidates: list[Path] = []
    named_root = pool_root if pool_root not in (None, "") else os.environ.get(POOL_ROOT_ENV)
    if named_root:
        candidates.append(resolve_pool_root(named_root) / POOLS_FILENAME)
    user_file = user_pools_file()
    if user_file is not None:
        candidates.append(user_file)
    return next((c for c in candidates if c.is_file()), None)


def check_trusted_file(path: Path, what: str, st: os.stat_result | None = None) -> None:
    """A file that decides what runs (a pools file, the ssh config it names) must be a
    regular file owned by the user (or root) and writable by nobody else; else one line
    naming the file and the fix (exit 2). The same rule ssh applies to ~/.ssh/config."""
    if st is None:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise HarnessError(f"cannot read {what} {path}: {exc.strerror or exc}",
                               exit_code=2) from None
    if not stat.S_ISREG(st.st_mode):
        raise HarnessError(f"{what} {path} is not a regular file",
                           "point to a regular file you own", exit_code=2)
    geteuid = getattr(os, "geteuid", None)
    if geteuid is not None and st.st_uid not in (geteuid(), 0):
        raise HarnessError(
            f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {geteuid()})",
            "only your own files are trusted: copy it, check it, then chown it to yourself",
            exit_code=2)
    if st.st_mode & 0o022:
        who = {0o020: "group", 0o002: "others"}.get(st.st_mode & 0o022, "group and others")
        raise HarnessError(
            f"{what} {path} is writable by {who}",
            f"run: chmod go-w {shlex.quote(str(path))}", exit_code=2)


def find_pools_file(explicit: str | None, pool_root: str | None = None) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise HarnessError(f"pools file {path} not found", "check --pools-file", exit_code=2)
        return path
    return default_pools_file(pool_root)


def load_pools(explicit: str | None = None, pool_root: str | None = None) -> PoolsFile:
    path = find_pools_file(explicit, pool_root)
    return PoolsFile(None, {}) if path is None else load_pools_file(path)


def load_pools_file(path: Path) -> PoolsFile:
    """Parse and validate the whole file; the first problem is one line naming file and key."""
    try:
        with open(path, "rb") as fh:  # checked on the open file: no swap between check and read
            check_trusted_file(path, "pools file", os.fstat(fh.fileno()))
            data = fh.read(MAX_POOLS_FILE_BYTES + 1)
        if len(data) > MAX_POOLS_FILE_BYTES:
            raise HarnessError(f"pools file {path} is larger than "
                               f"{MAX_POOLS_FILE_BYTES // 1024} KiB", exit_code=2)
        raw = tomllib.loads(data.decode("utf-8"))
    except OSError as exc:
        raise HarnessError(f"cannot read pools file {path}: {exc.strerror or exc}",
                           exit_code=2) from None
    except UnicodeDecodeError:
        raise HarnessError(f"pools file {path} is not UTF-8 text", exit_code=2) from None
    except tomllib.TOMLDecodeError as exc:
        raise HarnessError(f"pools file {path} is not valid TOML: {exc}", exit_code=2) from None
    return _parse(path, raw)


def _fail(path: Path, key: str, problem: str) -> HarnessError:
    return HarnessError(f"pools file {path}: {key}: {problem}", exit_code=2)


def _parse(path: Path, raw: dict[str, Any]) -> PoolsFile:
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise _fail(path, unknown[0], f"unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")
    default_cfg = _ssh_config(path, "ssh_config", raw.get("ssh_config"))
    default_timeout = _timeout(path, "connect_timeout", raw.get("connect_timeout"))
    table = raw.get("pools", {})
    if not isinstance(table, dict):
        raise _fail(path, "pools", "must be a table of [pools.NAME] sections")
    pools: dict[str, PoolConfig] = {}
    for name, body in table.items():
        try:
            validate_pool_name(name)
        except HarnessError as err:
            raise _fail(path, f"pools.{printable(name)}", err.one_line()) from None
        pools[name] = _parse_pool(path, name, body, default_cfg, default_timeout)
    return PoolsFile(path, pools)


def _parse_pool(
    path: Path, name: str, body: Any, default_cfg: Path | None, default_timeout: int | None
) -> PoolConfig:
    where = f"pools.{name}"
    if not isinstance(body, dict):
        raise _fail(path, where, "must be a table")
    unknown = sorted(set(body) - _POOL_KEYS)
    if unknown:
        raise _fail(path, f"{where}.{unknown[0]}",
                    f"unknown key (allowed: {', '.join(sorted(_POOL_KEYS))})")
    return PoolConfig(  # checked in this order: the first problem is the one reported
        name=name,
        destination=_destination(path, where, body),
        root=_remote_dir(path, where, body, "root"),
        checkout=_remote_dir(path, where, body, "checkout"),
        llorch_pool=_command(path, where, body),
        backends=_backends(path, where, body),
        env=_env(path, where, body),
        ssh_config=_ssh_config(path, f"{where}.ssh_config", body.get("ssh_config"))
        or default_cfg,
        connect_timeout=_timeout(path, f"{where}.connect_timeout", body.get("connect_timeout"))
        or default_timeout or DEFAULT_CONNECT_TIMEOUT,
        source=path,
    )


def _destination(path: Path, where: str, body: dict[str, Any]) -> Destination:
    """`host`, with `user` and `port` merged in (each may be given once)."""
    if "host" not in body:
        raise _fail(path, f"{where}.host", "missing (the ssh destination or ~/.ssh/config alias)")
    host = body["host"]
    try:
        if not isinstance(host, str):
            raise HarnessError("must be a string")
        dest = parse_destination(host)
    except HarnessError as err:
        raise _fail(path, f"{where}.host", err.one_line()) from None
    user = body.get("user")
    if user is not None:
        if not isinstance(user, str) or not USER_RE.fullmatch(user):
            raise _fail(path, f"{where}.user", f"invalid user name {printable(user)}")
        if dest.user and dest.user != user:
            raise _fail(path, f"{where}.user", "conflicts with the user in 'host'")
    port = None
    if "port" in body:
        port = parse_port(body["port"]) if isinstance(body["port"], int) else None
        if port is None:
            raise _fail(path, f"{where}.port", "must be an integer from 1 to 65535")
        if dest.port and dest.port != port:
            raise _fail(path, f"{where}.port", "conflicts with the port in 'host'")
    return Destination(dest.host, user or dest.user, port or dest.port)


def _command(path: Path, where: str, body: dict[str, Any]) -> tuple[str, ...]:
    command = body.get("llorch_pool", DEFAULT_LLORCH_POOL)
    try:
        words = tuple(shlex.split(command)) if isinstance(command, str) else ()
    except ValueError as exc:
        raise _fail(path, f"{where}.llorch_pool", f"cannot split into words: {exc}") from None
    if not words:
        raise _fail(path, f"{where}.llorch_pool", "must be a non-empty command string")
    return words


def _backends(path: Path, where: str, body: dict[str, Any]) -> tuple[str, ...]:
    backends = body.get("backends", [])
    if not isinstance(backends, list) or any(b not in VALID_BACKENDS for b in backends):
        raise _fail(path, f"{where}.backends",
                    f"must be a list drawn from {', '.join(VALID_BACKENDS)}")
    return tuple(backends)


def _env(path: Path, where: str, body: dict[str, Any]) -> dict[str, str]:
    env = body.get("env", {})
    if not isinstance(env, dict):
        raise _fail(path, f"{where}.env", "must be a table of NAME = \"value\"")
    for key, value in env.items():
        if not _ENV_NAME_RE.fullmatch(key):
            raise _fail(path, f"{where}.env.{printable(key)}", "invalid variable name")
        if not isinstance(value, str) or "\0" in value:
            raise _fail(path, f"{where}.env.{key}", "must be a string")
    return dict(env)


def _remote_dir(path: Path, where: str, body: dict[str, Any], key: str) -> str | None:
    """A directory on the pool (`root`, `checkout`), normalised; errors name the key."""
    value = body.get(key)
    if value is None:
        return None
    try:
        return normalize_remote_root(value)
    except HarnessError as err:
        raise _fail(path, f"{where}.{key}", err.message) from None


def _ssh_config(path: Path, key: str, value: Any) -> Path | None:
    """Relative paths are relative to the pools file, so the file can travel with its config."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise _fail(path, key, "must be a path string")
    cfg = Path(value).expanduser()
    if not cfg.is_absolute():
        cfg = path.parent / cfg
    if not cfg.is_file():
        raise _fail(path, key, f"ssh config file {cfg} not found")
    try:
        check_trusted_file(cfg, "ssh config file")
    except HarnessError as err:
        raise _fail(path, key, err.one_line()) from None
    return cfg


def _timeout(path: Path, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 300:
        raise _fail(path, key, "must be an integer number of seconds from 1 to 300")
    return value


def resolve_pool(target: str, pools: PoolsFile) -> PoolConfig:
    """`--host` is a pool name from the file, else a plain ssh destination (checked)."""
    found = pools.get(target) if isinstance(target, str) else None
    if found is not None:
        return found
    dest = parse_destination(target)
    return PoolConfig(name=target, destination=dest,
                      near_pools=tuple(did_you_mean(target, pools.pools)))


def env_ssh_config() -> Path | None:
    """`$LLORCH_SSH_CONFIG` (used when a pool names none): an `ssh -F` file."""
    value = os.environ.get(SSH_CONFIG_ENV)
    if not value:
        return None
    cfg = Path(value).expanduser()
    if not cfg.is_file():
        raise HarnessError(f"${SSH_CONFIG_ENV} names {cfg}, which is not a file", exit_code=2)
    return cfg
