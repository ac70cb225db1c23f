"""The hub's repository model: `ROOT/ORG/NAME/` directories scanned into served repos.

Why: the hub lists and serves whatever lies under its root right now, with the hashes
the real Hub lists (git blob sha1 for every file, sha256 for LFS ones), hashed once per
(path, size, mtime). A file outside the root (through a symlink), a special file or an
unsafe name is never served.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("llorch_harness.lab.hub")

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
LFS_POINTER_SIZE = 134
HASH_CHUNK = 8 << 20
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def is_lfs_path(path: str, size: int) -> bool:
    """Whether the Hub would store this file in LFS (weights, or anything > 10 MB)."""
    return path.lower().endswith(LFS_SUFFIXES) or size > LFS_SIZE_THRESHOLD


@dataclass(frozen=True)
class File:
    """One served file: where it lies, its size and both hashes the hub lists."""

    path: str
    abs_path: str
    size: int
    oid: str  # git blob sha1
    sha256: str
    lfs: bool

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "file", "oid": self.oid, "size": self.size, "path": self.path,
        }
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": LFS_POINTER_SIZE}
        return entry


@dataclass(frozen=True)
class Repo:
    """A repo as served now: its files and the sha over their listing."""

    repo_id: str
    files: dict[str, File]
    sha: str
    last_modified: float

    def dirs(self) -> dict[str, str]:
        """Every folder path -> deterministic oid over its contents."""
        members: dict[str, list[str]] = {}
        for f in self.files.values():
            parts = f.path.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                members.setdefault(d, []).append(f"{f.path[len(d) + 1:]}\0{f.oid}")
        return {
            d: hashlib.sha1("\n".join(sorted(m)).encode()).hexdigest() for d, m in members.items()
        }


class HashCache:
    """(path, size, mtime_ns) -> (git blob sha1, sha256); each file hashed once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[tuple[str, int, int], tuple[str, str]] = {}
        self._busy: dict[tuple[str, int, int], threading.Lock] = {}

    def get(self, path: str, size: int, mtime_ns: int) -> tuple[str, str]:
        key = (path, size, mtime_ns)
        with self._lock:
            hit = self._done.get(key)
            if hit is not None:
                return hit
            key_lock = self._busy.setdefault(key, threading.Lock())
        with key_lock:  # concurrent requests wait for one hasher instead of all hashing
            with self._lock:
                hit = self._done.get(key)
                if hit is not None:
                    return hit
            result = _hash_file(path, size)
            with self._lock:
                self._done[key] = result
                self._busy.pop(key, None)
        return result


def _hash_file(path: str, size: int) -> tuple[str, str]:
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    sha256 = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            sha1.update(view[:n])
            sha256.update(view[:n])
    return sha1.hexdigest(), sha256.hexdigest()


def within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def valid_component(part: str) -> bool:
    return (
        part not in ("", ".", "..")
        and "\\" not in part
        and "\0" not in part
        and not any(ord(c) < 32 for c in part)
    )


def scan_repo(root_real: str, repo_id: str, hashes: HashCache) -> Repo | None:
    """Scan ROOT/ORG/NAME now (cheap: hashes are cached by path, size and mtime)."""
    org, _, name = repo_id.partition("/")
    if not (NAME_RE.match(org) and NAME_RE.match(name)):
        return None
    real = os.path.realpath(os.path.join(root_real, org, name))
    if not within(real, root_real) or not os.path.isdir(real):
        return None
    files: dict[str, File] = {}
    newest = 0.0
    for dirpath, dirnames, filenames in os.walk(real):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            found = _scan_file(os.path.join(dirpath, fn), real, root_real, hashes)
            if found is not None:
                files[found[0].path] = found[0]
                newest = max(newest, found[1])
    if not files:
        return None
    listing = "\n".join(f"{p}\0{files[p].oid}" for p in sorted(files))
    sha = hashlib.sha1(listing.encode()).hexdigest()
    return Repo(repo_id, files, sha, newest)


def _scan_file(full: str, repo_real: str, root_real: str,
               hashes: HashCache) -> tuple[File, float] | None:
    """One file as served, with its mtime; None when it must not be served."""
    rel = os.path.relpath(full, repo_real).replace(os.sep, "/")
    if not all(valid_component(p) for p in rel.split("/")):
        return None
    if os.path.islink(full) and not within(os.path.realpath(full), root_real):
        return None  # never serve bytes from outside ROOT
    try:
        st = os.stat(full)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        oid, sha256 = hashes.get(full, st.st_size, st.st_mtime_ns)
    except OSError as exc:  # unreadable: leave it out rather than fail the repo
        logger.warning("hub: skipping %s: %s", full, exc)
        return None
    return File(rel, full, st.st_size, oid, sha256, is_lfs_path(rel, st.st_size)), st.st_mtime


def list_repos(root: Path) -> list[str]:
    """Every `ORG/NAME` under `root` that would be served."""
    out = []
    for org in sorted(root.iterdir()) if root.is_dir() else []:
        if org.is_dir() and NAME_RE.match(org.name):
            for name in sorted(org.iterdir()):
                if name.is_dir() and NAME_RE.match(name.name):
                    out.append(f"{org.name}/{name.name}")
    return out
