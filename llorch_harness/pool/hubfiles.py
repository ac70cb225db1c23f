"""What the hub lists, and how a downloaded file is checked against it.

Why apart from the download: these are pure rules (which endpoint and token, which
files, whether a name is safe, whether a file's bytes match its listed hash) that the
download, `verify` and the benchmarks share; none of them touches the network or the
catalog.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from llorch_harness import redaction
from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import git_blob_sha1_file, sha256_file
from llorch_harness.pool.hfcli import DEFAULT_PATTERNS
from llorch_harness.pool.paths import safe_join, validate_hub_filename

DEFAULT_ENDPOINT = "https://huggingface.co"
SIZE_GB_DECIMALS = 6  # kB resolution: exact enough for tiny models, no float noise for big ones
SHA1_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RemoteFile:
    """One file of the hub listing, reduced to what verification needs."""

    path: str
    size: int
    git_sha1: str
    sha256: str | None = None  # set for LFS files (the tree's lfs.oid)

    def record(self) -> dict[str, Any]:
        """What the catalog keeps per file: size plus the hash `verify` checks."""
        if self.sha256:
            return {"size": self.size, "sha256": self.sha256}
        return {"size": self.size, "git_sha1": self.git_sha1}



def scrub(text: str, token: str | None) -> str:
    """Text we print, through the one redaction (redaction.py), the explicit token included."""
    return redaction.redact(text, extra=[token])


def public_endpoint(url: str) -> str:
    """The endpoint as recorded in the catalog and printed: no user:password, query or
    fragment. Never raises: an unparseable URL is shown redacted as text."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return redaction.redact(str(url), values=())
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def resolve_endpoint(endpoint: str | None) -> str:
    """Explicit argument, else $HF_ENDPOINT read now (huggingface_hub reads it only at import)."""
    raw = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    problem = None
    try:  # `http://[::1` and `ftp://h:99999` raise here: one usage line, not a traceback
        raw.strip().encode("utf-8")
        parts = urlsplit(raw.strip())
        _ = parts.port
    except ValueError as exc:  # UnicodeEncodeError included
        problem = str(exc) if not isinstance(exc, UnicodeError) else "not UTF-8 text"
    else:
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = "not http(s)://HOST[:PORT]"
        elif any(c.isspace() or not c.isprintable() for c in raw.strip()):
            problem = "it holds white space or control characters"
    if problem is not None:
        shown = public_endpoint(raw) if problem != "not UTF-8 text" else ascii(raw)
        raise HarnessError(
            f"invalid hub endpoint {shown!r}: {problem}",
            "set HF_ENDPOINT to http(s)://HOST[:PORT], or unset it for huggingface.co",
            exit_code=2,
        )
    return raw.strip().rstrip("/")


def resolve_token(token: str | None) -> str | None:
    """Explicit argument, else $HF_TOKEN read now; None lets huggingface_hub use a saved login."""
    return token or os.environ.get("HF_TOKEN") or None


def matches_patterns(path: str, patterns: Sequence[str] = DEFAULT_PATTERNS) -> bool:
    """fnmatchcase like huggingface_hub: `*` crosses `/`, so `*.json` matches `a/b.json`."""
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def select_files(
    listing: Iterable[RemoteFile], model_dir: Path, patterns: Sequence[str] = DEFAULT_PATTERNS,
) -> list[RemoteFile]:
    """Files to fetch, every name proven safe before anything is written.

    Raises HarnessError (exit 2) on a name with `..`, an absolute path, a backslash, NUL
    or control characters, or one that escapes `model_dir` through a symlink; on a
    listing hash that is not hex (it would make verification meaningless); and when no
    file matches (the repo is not a safetensors model).
    """
    chosen: list[RemoteFile] = []
    seen: set[str] = set()
    for f in listing:
        if not isinstance(f.path, str) or not matches_patterns(f.path, patterns):
            continue
        validate_hub_filename(f.path)
        safe_join(model_dir, f.path)
        if f.path in seen:
            raise HarnessError(f"hub listing names {f.path!r} twice", "check the hub", 2)
        if isinstance(f.size, bool) or not isinstance(f.size, int) or f.size < 0:
            raise HarnessError(f"hub listing gives {f.path!r} an invalid size {f.size!r}",
                               "check the hub", 2)
        if not SHA1_RE.fullmatch(f.git_sha1 or "") or (
            f.sha256 is not None and not _SHA256_RE.fullmatch(f.sha256)
        ):
            raise HarnessError(f"hub listing gives {f.path!r} no valid hash",
                               "the hub must list a git sha1 oid, and lfs.oid for LFS files", 2)
        seen.add(f.path)
        chosen.append(f)
    if not any(f.path.endswith(".safetensors") for f in chosen):
        raise HarnessError(
            "the hub repo has no *.safetensors file",
            f"the harness downloads {', '.join(patterns)}; pick a safetensors repo", 2,
        )
    return sorted(chosen, key=lambda f: f.path)


def check_file(path: Path, expected: dict[str, Any] | RemoteFile) -> str | None:
    """None if the file matches size and hash, else a short reason."""
    rec = expected.record() if isinstance(expected, RemoteFile) else expected
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if not path.is_file():
        return "not a regular file"
    if size != rec.get("size"):
        return f"size {size} bytes, expected {rec.get('size')}"
    if rec.get("sha256"):
        got = sha256_file(path)
        if got != rec["sha256"]:
            return f"sha256 {got[:12]}…, expected {str(rec['sha256'])[:12]}…"
    elif rec.get("git_sha1"):
        got = git_blob_sha1_file(path)
        if got != rec["git_sha1"]:
            return f"git sha1 {got[:12]}…, expected {str(rec['git_sha1'])[:12]}…"
    else:
        return "no recorded hash"
    return None


def size_gb(n_bytes: int) -> float:
    return round(n_bytes / 1e9, SIZE_GB_DECIMALS)
