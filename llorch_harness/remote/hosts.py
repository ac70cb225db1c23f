"""Host, pool and remote-path names: checked strictly before they reach an ssh command line.

A value ssh could read as an option (`-oProxyCommand=...`) or a shell could read as syntax
never gets through; each part of a destination goes to ssh as its own checked argument.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from llorch_harness.errors import HarnessError
from llorch_harness.pool.paths import printable

POOL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,252}")
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}")


@dataclass(frozen=True)
class Destination:
    """An ssh destination split into parts, so each goes to ssh as its own checked argument."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host


def parse_destination(text: str) -> Destination:
    """`[user@]host[:port]` or `[user@][v6addr][:port]`; anything else is refused.

    Only letters, digits, `._-`, one `@`, `:` and IPv6 brackets are allowed, and
    no part may start with `-`, so ssh can never take a destination for an option.
    """
    bad = HarnessError(
        f"invalid host {printable(text)}",
        "use [user@]host[:port] with letters, digits, '.', '_', '-' (or [IPv6]); "
        "no spaces, quotes or shell characters",
        exit_code=2,
    )
    if not isinstance(text, str) or not text or len(text) > 300:
        raise bad
    if not re.fullmatch(r"[A-Za-z0-9._@:\[\]-]+", text) or text.startswith("-"):
        raise bad
    user: str | None = None
    rest = text
    if "@" in text:
        user, _, rest = text.partition("@")
        if not USER_RE.fullmatch(user) or "@" in rest:
            raise bad
    port_text: str | None = None
    if rest.startswith("["):
        inner, sep, tail = rest[1:].partition("]")
        if not sep or not _IPV6_RE.fullmatch(inner) or ":" not in inner:
            raise bad
        host = inner
        if tail:
            if not tail.startswith(":"):
                raise bad
            port_text = tail[1:]
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    elif ":" in rest:
        host = rest  # a bare IPv6 address: no port possible without brackets
        if not _IPV6_RE.fullmatch(host):
            raise bad
    else:
        host = rest
    if "[" in host or "]" in host:
        raise bad
    if ":" not in host and not _HOSTNAME_RE.fullmatch(host):
        raise bad
    port = None
    if port_text is not None:
        port = parse_port(port_text)
        if port is None:
            raise bad
    return Destination(host=host, user=user, port=port)


def parse_port(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit():
            return None
        value = int(value)
    if isinstance(value, int) and 1 <= value <= 65535:
        return value
    return None


def validate_pool_name(name: str) -> str:
    """Pool names are printed and matched against `--host`, so they stay plain words."""
    if not isinstance(name, str) or not POOL_NAME_RE.fullmatch(name):
        raise HarnessError(
            f"invalid pool name {printable(name)}",
            "use letters, digits, '.', '_' and '-', starting with a letter or digit",
            exit_code=2,
        )
    return name


def normalize_remote_root(root: str) -> str:
    """A remote pool root: absolute, or relative to the remote home (`~/x` means `x`).

    The value is quoted on the way, so `~` would not expand there: translate it here.
    """
    if not isinstance(root, str) or not root.strip():
        raise HarnessError("remote pool root must be a non-empty string", exit_code=2)
    if any(ord(c) < 32 or ord(c) == 127 for c in root):
        raise HarnessError(f"remote pool root {printable(root)} holds control characters",
                           exit_code=2)
    if root == "~":
        return "."
    if root.startswith("~/"):
        root = root[2:] or "."
    elif root.startswith("~"):
        raise HarnessError(
            f"remote pool root {printable(root)} uses ~user", "write the absolute path", exit_code=2
        )
    return str(PurePosixPath(root))
