"""Local Hugging Face hub: a real HTTP server over a directory, with fault injection.

Why: the harness must prove that downloads, resumes and sha256 checks work without the
real Hub (unreachable from test machines). This server speaks the subset of the Hub
protocol that `huggingface_hub` 2.4 (`snapshot_download`, `hf download`) uses over plain
HTTP, and lets tests break it on purpose (dropped connections, corrupted bytes, 5xx,
404s, stalls). It never sends Xet headers, so clients always use plain HTTP.

Layout served: every `ROOT/ORG/NAME/` directory is the model repo `ORG/NAME` (files may
sit in subfolders; dot-directories such as `.cache` are ignored). Revisions: `main` and
the repo sha (sha1 over the sorted (path, git blob oid) list, so it changes with content).

Stdlib only, so it runs anywhere the harness runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fnmatch
import hashlib
import http.server
import json
import logging
import os
import re
import signal
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "HubFaults",
    "LocalHub",
    "RequestRecord",
    "add_serve_arguments",
    "build_embedded_hub_root",
    "is_lfs_path",
    "run_serve",
    "serve_main",
]

logger = logging.getLogger("llorch_harness.lab.hub")

DEFAULT_PAGE_SIZE = 1000
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
LFS_POINTER_SIZE = 134
SEND_CHUNK = 1 << 20  # body chunk when bytes must pass through Python (faults)
SENDFILE_CHUNK = 8 << 20  # sendfile slice; on a broken pipe bytes_sent is exact to a slice
HASH_CHUNK = 8 << 20
IDLE_TIMEOUT_S = 120.0  # keep-alive connections idle longer than this are closed

_HOST_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,300}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_FLIP = bytes(b ^ 0xFF for b in range(256))


def is_lfs_path(path: str, size: int) -> bool:
    """Whether the Hub would store this file in LFS (weights, or anything > 10 MB)."""
    return path.lower().endswith(LFS_SUFFIXES) or size > LFS_SIZE_THRESHOLD


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RequestRecord:
    """One answered request, as tests see it. `time` is the wall-clock start.

    `route` is one of info, tree, resolve, telemetry, unknown, bad, method; `file` is
    the repo-relative path for resolve requests; `fault` names the fault applied.
    """

    method: str
    path: str
    status: int
    range: str | None
    bytes_sent: int
    time: float
    route: str = ""
    repo: str | None = None
    file: str | None = None
    lfs: bool = False
    duration: float = 0.0
    fault: str | None = None


@dataclass
class _Live:
    """A request's record while it is answered; published before its headers go out.

    Why: a client may act on the last byte before the handler thread runs again, so
    the log must already be complete when that byte is written.
    """

    method: str
    path: str
    range: str | None
    time: float
    status: int = 0
    bytes_sent: int = 0
    route: str = "unknown"
    repo: str | None = None
    file: str | None = None
    lfs: bool = False
    end: float | None = None
    faults: list[str] = field(default_factory=list)
    published: bool = False

    def freeze(self) -> RequestRecord:
        return RequestRecord(
            self.method, self.path, self.status, self.range, self.bytes_sent, self.time,
            self.route, self.repo, self.file, self.lfs,
            (self.end or time.time()) - self.time, ",".join(self.faults) or None,
        )


# --------------------------------------------------------------------------- faults


@dataclass
class _Rule:
    kind: str
    glob: str | None
    remaining: int | None  # None = forever
    n_bytes: int = 0
    status: int = 0
    error_code: str = ""
    seconds: float = 0.0
    after_bytes: int | None = None
    mode: str = ""


@dataclass(frozen=True)
class _BodyFaults:
    drop_after: int | None = None
    corrupt: bool = False
    stall_after: int | None = None
    stall_seconds: float = 0.0
    trickle_bytes: int | None = None  # send the body this many bytes at a time ...
    trickle_seconds: float = 0.0  # ... with this pause between (progress, never enough)

    @property
    def names(self) -> list[str]:
        out = []
        if self.drop_after is not None:
            out.append("drop_after")
        if self.corrupt:
            out.append("corrupt")
        if self.stall_after is not None:
            out.append("stall")
        if self.trickle_bytes is not None:
            out.append("trickle")
        return out


class HubFaults:
    """Faults that tests switch on at runtime; thread-safe.

    A glob is matched with `fnmatch` against the repo-relative file path (for resolve
    and tree requests, e.g. `"*.safetensors"`), against `ORG/NAME/FILE`, and against
    the decoded URL path (e.g. `"/api/models/*"`); `None` matches every request.
    `times=None` means forever.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []

    def drop_after(self, path_glob: str, n_bytes: int, times: int | None = 1) -> None:
        """Close the connection after `n_bytes` of body of a matching resolve GET.

        huggingface_hub 2.4 reads bodies in 10 MiB chunks: a drop before the first
        10 MiB makes it start the file again (200), a later one resumes with a Range
        at the last 10 MiB boundary (206).
        """
        self._add(_Rule("drop_after", path_glob, times, n_bytes=max(0, n_bytes)))

    def corrupt(self, path_glob: str, times: int | None = None) -> None:
        """Serve same-size flipped bytes for matching resolve GETs; headers stay true."""
        self._add(_Rule("corrupt", path_glob, times))

    def fail_5xx(
        self, status: int = 503, times: int | None = 1, path_glob: str | None = None
    ) -> None:
        """Answer the next `times` matching requests (any kind) with `status`."""
        if not 500 <= status <= 599:
            raise ValueError(f"fail_5xx needs a 5xx status, got {status}")
        self._add(_Rule("fail_5xx", path_glob, times, status=status))

    def not_found(
        self, path_glob: str, error_code: str = "EntryNotFound", times: int | None = None
    ) -> None:
        """Answer matching requests with 404 and `X-Error-Code: error_code`."""
        self._add(_Rule("not_found", path_glob, times, error_code=error_code))

    def stall(
        self,
        path_glob: str,
        seconds: float,
        after_bytes: int | None = None,
        times: int | None = 1,
    ) -> None:
        """Sleep `seconds` before answering, or after `after_bytes` of a resolve GET body."""
        self._add(_Rule("stall", path_glob, times, seconds=seconds, after_bytes=after_bytes))

    def trickle(
        self,
        path_glob: str | None,
        n_bytes: int = 1,
        seconds: float = 0.1,
        times: int | None = None,
    ) -> None:
        """Send matching answers `n_bytes` at a time with `seconds` between: bytes keep
        coming, so no per-read timeout ever fires, yet a file never completes. Applies to
        resolve GET bodies and to API answers (info, tree) alike; ends when the hub stops."""
        self._add(_Rule("trickle", path_glob, times, n_bytes=max(1, n_bytes),
                        seconds=max(0.0, seconds)))

    def tree_links(self, mode: str = "self", times: int | None = None) -> None:
        """Break tree pagination: every listing page carries `Link: rel="next"` to
        `self` (the same URL again), `cycle` (two URLs that link to each other), or
        `endless` (a new URL every time, the same entries on each page)."""
        if mode not in ("self", "cycle", "endless"):
            raise ValueError(f"tree_links mode must be self, cycle or endless, not {mode!r}")
        self._add(_Rule("tree_links", None, times, mode=mode))

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._rules.clear()

    def active(self) -> list[str]:
        """Describe the faults still armed (for logs and assertions)."""
        with self._lock:
            return [f"{r.kind}({r.glob!r}, remaining={r.remaining})" for r in self._rules]

    def _add(self, rule: _Rule) -> None:
        if rule.remaining is not None and rule.remaining <= 0:
            return
        with self._lock:
            self._rules.append(rule)

    def _take(self, kind: str, targets: list[str], pred: Any = None) -> _Rule | None:
        """Consume one use of the first matching rule of `kind`."""
        with self._lock:
            for rule in self._rules:
                if rule.kind != kind or (pred is not None and not pred(rule)):
                    continue
                if rule.glob is not None and not any(
                    fnmatch.fnmatchcase(t, rule.glob) for t in targets
                ):
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                return rule
        return None


# --------------------------------------------------------------------------- repo model


@dataclass(frozen=True)
class _File:
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
class _Repo:
    repo_id: str
    files: dict[str, _File]
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


class _HashCache:
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


def _within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def _valid_component(part: str) -> bool:
    return (
        part not in ("", ".", "..")
        and "\\" not in part
        and "\0" not in part
        and not any(ord(c) < 32 for c in part)
    )


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _BadPath(Exception):
    """The URL path could escape the root or is malformed."""


def _decode(raw: str) -> list[str]:
    """Percent-decode one raw URL segment into validated path components."""
    parts = unquote(raw, errors="strict").split("/")
    if not all(_valid_component(p) for p in parts):
        raise _BadPath(raw)
    return parts


# --------------------------------------------------------------------------- server


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: LocalHub

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # clients hanging up mid-body is normal (and what faults cause)
        logger.exception("hub: error while serving %s", client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llorch-local-hub/1"
    timeout = IDLE_TIMEOUT_S
    server: _Server

    # ---- plumbing

    def setup(self) -> None:
        super().setup()
        self.server.hub._track(self.connection, True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.hub._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every request is logged once, in _record

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _refuse(self) -> None:
        self.close_connection = True  # we never read request bodies
        self._start()
        try:
            self._error(405, "method not allowed", route="method")
        finally:
            self._record()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _start(self) -> None:
        self._live = _Live(self.command, self.path, self.headers.get("Range"), time.time())

    def _dispatch(self) -> None:
        self._start()
        try:
            self._route_request()
        except OSError:
            self.close_connection = True  # the client hung up, or a fault cut it off
        except Exception:
            logger.exception("hub: bug while answering %s %s", self.command, self.path)
            self.close_connection = True
            if not self._live.published:  # headers not sent yet: say so instead of hanging up
                with contextlib.suppress(OSError):
                    self._error(500, "internal error in the local hub")
        finally:
            self._record()

    def _record(self) -> None:
        self._live.end = time.time()
        hub = self.server.hub
        if not self._live.published:
            self._live.published = True
            hub._add_record(self._live)
        hub._log_record(self._live)

    def _head(self, status: int, headers: dict[str, str], length: int) -> None:
        self._live.status = status
        if not self._live.published:
            self._live.published = True
            self.server.hub._add_record(self._live)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _body(self, data: bytes) -> None:
        if self.command != "HEAD" and data:
            self._live.bytes_sent += len(data)  # counted first: see _Live
            self.wfile.write(data)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self._head(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
                   len(data))
        trickle = getattr(self, "_trickle", None)
        if trickle is None or self.command == "HEAD":
            self._body(data)
            return
        hub = self.server.hub
        for i in range(0, len(data), trickle.n_bytes):  # bytes keep coming, never enough
            self._body(data[i:i + trickle.n_bytes])
            self.wfile.flush()
            if hub._stopping.wait(trickle.seconds):
                self.close_connection = True
                return

    def _error(
        self, status: int, message: str, code: str | None = None, route: str | None = None
    ) -> None:
        if route is not None:
            self._live.route = route
        # Header values must be latin-1; repo paths may not be.
        headers = {"X-Error-Message": message.encode("ascii", "backslashreplace").decode()}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    # ---- routing

    def _route_request(self) -> None:
        hub = self.server.hub
        raw_path, _, query = self.path.partition("?")
        if not raw_path.startswith("/"):
            self._error(400, "request target must be an absolute path", route="bad")
            return
        raw = raw_path[1:].split("/")
        if raw and raw[-1] == "" and len(raw) > 1:
            raw.pop()  # tolerate one trailing slash
        try:
            if "\\" in raw_path:
                raise _BadPath(raw_path)
            segs = [_decode(r) for r in raw]
        except (_BadPath, UnicodeDecodeError):
            self._error(400, "invalid path", route="bad")
            return
        flat = [p for s in segs for p in s]
        url_path = "/" + "/".join(flat)

        route, repo_id, rev, rel = self._classify(raw, segs)
        self._live.route = route
        self._live.repo = repo_id
        self._live.file = rel if route == "resolve" else None
        targets = [url_path]
        if repo_id is not None and rel is not None:
            targets += [rel, f"{repo_id}/{rel}"]

        rule = hub.faults._take("fail_5xx", targets)
        if rule is not None:
            self._live.faults.append("fail_5xx")
            self._error(rule.status, f"injected {rule.status}")
            return
        rule = hub.faults._take("not_found", targets)
        if rule is not None:
            self._live.faults.append("not_found")
            self._error(404, f"injected {rule.error_code}", rule.error_code)
            return
        rule = hub.faults._take(
            "stall", targets, pred=lambda r: r.after_bytes is None or route != "resolve"
        )
        if rule is not None:
            self._live.faults.append("stall")
            hub._stopping.wait(rule.seconds)
        self._trickle = None
        if route in ("info", "tree"):  # resolve bodies take theirs in _resolve
            self._trickle = hub.faults._take("trickle", targets)
            if self._trickle is not None:
                self._live.faults.append("trickle")

        if route == "telemetry":
            self._error(404, "not served by the local hub")
        elif route in ("info", "tree", "resolve"):
            assert repo_id is not None and rev is not None
            repo = hub._load_repo(repo_id)
            if repo is None:
                self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
            elif rev not in ("main", repo.sha):
                self._error(404, f"Revision {rev} not found in {repo_id}", "RevisionNotFound")
            elif route == "info":
                self._json(200, self._info(repo))
            elif route == "tree":
                self._tree(repo, rev, rel or "", parse_qs(query))
            else:
                self._resolve(repo, rel or "", targets)
        else:
            logger.warning("hub: unexpected request %s %s", self.command, self.path)
            self._error(404, f"no route for {url_path}")

    @staticmethod
    def _classify(
        raw: list[str], segs: list[list[str]]
    ) -> tuple[str, str | None, str | None, str | None]:
        """-> (route, repo_id, revision, repo-relative path)."""

        def one(i: int) -> str | None:  # a segment that must be one component
            return segs[i][0] if len(segs[i]) == 1 else None

        def repo_at(i: int) -> str | None:
            org, name = one(i), one(i + 1)
            if org is None or name is None:
                return None
            if not (_NAME_RE.match(org) and _NAME_RE.match(name)):
                return None
            return f"{org}/{name}"

        def rest(i: int) -> str:
            return "/".join(p for s in segs[i:] for p in s)

        n = len(raw)
        if raw[:2] == ["api", "agent-harnesses"] and n == 2:
            return "telemetry", None, None, None
        if n >= 4 and raw[:2] == ["api", "models"]:
            repo_id = repo_at(2)
            if repo_id is None:
                return "unknown", None, None, None
            if n == 4:
                return "info", repo_id, "main", None
            rev = "/".join(segs[5]) if n >= 6 else None
            if n == 6 and raw[4] == "revision":
                return "info", repo_id, rev, None
            if n >= 6 and raw[4] == "tree":
                return "tree", repo_id, rev, rest(6)
        if n >= 5 and raw[2] == "resolve":
            repo_id = repo_at(0)
            if repo_id is not None:
                return "resolve", repo_id, "/".join(segs[3]), rest(4)
        return "unknown", None, None, None

    # ---- endpoints

    def _info(self, repo: _Repo) -> dict[str, Any]:
        org = repo.repo_id.split("/")[0]
        return {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": org,
            "sha": repo.sha,
            "lastModified": _iso(repo.last_modified),
            "createdAt": _iso(repo.last_modified),
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": p} for p in sorted(repo.files)],
            "usedStorage": sum(f.size for f in repo.files.values()),
        }

    def _tree(self, repo: _Repo, rev: str, rel: str, q: dict[str, list[str]]) -> None:
        recursive = q.get("recursive", ["false"])[0].lower() in ("1", "true")
        dirs = repo.dirs()
        if rel and rel not in dirs:
            self._error(404, f"{rel} is not a folder of {repo.repo_id}", "EntryNotFound")
            return
        prefix = f"{rel}/" if rel else ""

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])

        entries: list[dict[str, Any]] = [
            {"type": "directory", "oid": oid, "path": d} for d, oid in dirs.items() if wanted(d)
        ]
        entries += [f.tree_entry() for p, f in repo.files.items() if wanted(p)]
        entries.sort(key=lambda e: e["path"])

        try:
            start = int(q.get("cursor", ["0"])[0])
        except ValueError:
            start = -1
        if start < 0 or start > len(entries):
            self._error(400, "invalid cursor")
            return
        size = max(1, self.server.hub.page_size)
        page = entries[start:start + size]
        headers: dict[str, str] = {}
        if start + size < len(entries):
            host = self.headers.get("Host", "")
            if not _HOST_RE.match(host):  # echo only a plausible Host into the Link
                host = self.server.hub.url.split("://", 1)[1]
            path_part = f"/{quote(rel, safe='')}" if rel else ""
            nxt = (
                f"http://{host}/api/models/{repo.repo_id}/tree/{quote(rev, safe='')}{path_part}"
                f"?recursive={str(recursive).lower()}"
                f"&expand={q.get('expand', ['false'])[0]}&cursor={start + size}"
            )
            headers["Link"] = f'<{nxt}>; rel="next"'
        links = self.server.hub.faults._take("tree_links", [])
        if links is not None:
            self._live.faults.append(f"tree_links:{links.mode}")
            headers["Link"] = f'<{self._broken_next(links.mode)}>; rel="next"'
        self._json(200, page, headers)

    def _broken_next(self, mode: str) -> str:
        """The next-page URL a broken hub sends: itself, its twin, or a new one each time."""
        host = self.headers.get("Host", "")
        if not _HOST_RE.match(host):
            host = self.server.hub.url.split("://", 1)[1]
        base = f"http://{host}{self.path}"
        if mode == "self":
            return base
        plain = re.sub(r"[&?]loop=\d+", "", base)
        sep = "&" if "?" in plain else "?"
        if mode == "cycle":
            return plain if plain != base else f"{plain}{sep}loop=1"
        return f"{plain}{sep}loop={self.server.hub._next_loop()}"

    def _resolve(self, repo: _Repo, rel: str, targets: list[str]) -> None:
        hub = self.server.hub
        f = repo.files.get(rel)
        if f is None:
            self._error(404, f"{rel} not found in {repo.repo_id}", "EntryNotFound")
            return
        self._live.lfs = f.lfs
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "X-Repo-Commit": repo.sha,
            "X-Linked-Size": str(f.size),
            "ETag": f'"{f.sha256 if f.lfs else f.oid}"',
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
        start, end = 0, f.size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng is not None:
            parsed = _parse_range(rng, f.size)
            if parsed == "unsatisfiable":
                self._json(416, {"error": "range not satisfiable"},
                           {"Content-Range": f"bytes */{f.size}"})
                return
            if parsed is not None:
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        length = end - start + 1 if f.size else 0

        if self.command == "HEAD":
            self._head(status, headers, length)
            return
        drop = hub.faults._take("drop_after", targets)
        bad = hub.faults._take("corrupt", targets)
        stall = hub.faults._take("stall", targets, pred=lambda r: r.after_bytes is not None)
        trickle = hub.faults._take("trickle", targets)
        body = _BodyFaults(
            drop_after=drop.n_bytes if drop else None,
            corrupt=bad is not None,
            stall_after=stall.after_bytes if stall else None,
            stall_seconds=stall.seconds if stall else 0.0,
            trickle_bytes=trickle.n_bytes if trickle else None,
            trickle_seconds=trickle.seconds if trickle else 0.0,
        )
        self._live.faults += body.names
        try:
            fh = open(f.abs_path, "rb")  # closed below, after streaming
        except OSError:
            self._error(404, f"{rel} vanished from {repo.repo_id}", "EntryNotFound")
            return
        with fh:
            self._head(status, headers, length)
            self._stream(fh, start, length, body)

    def _stream(self, fh: Any, start: int, length: int, faults: _BodyFaults) -> None:
        """Send `length` bytes from `start`; sendfile unless a fault needs the bytes."""
        hub = self.server.hub
        limit = length if faults.drop_after is None else min(length, faults.drop_after)
        pos = 0
        stalled = faults.stall_after is None
        while pos < limit:
            if not stalled and pos >= faults.stall_after:
                hub._stopping.wait(faults.stall_seconds)
                stalled = True
            stop = limit if stalled else min(limit, faults.stall_after or 0)
            want = min(SENDFILE_CHUNK, stop - pos)
            if faults.trickle_bytes is not None:
                if pos and hub._stopping.wait(faults.trickle_seconds):
                    break  # the hub stops: end the trickle (the client sees a short body)
                want = min(want, faults.trickle_bytes)
            self._live.bytes_sent += want  # counted first (see _Live), corrected below
            if faults.corrupt:
                fh.seek(start + pos)
                chunk = fh.read(min(SEND_CHUNK, want))
                self._live.bytes_sent -= want - len(chunk)
                if not chunk:
                    break
                self.wfile.write(chunk.translate(_FLIP))
                n = len(chunk)
            else:
                n = 0
                try:
                    n = self.connection.sendfile(fh, start + pos, want)
                finally:
                    self._live.bytes_sent -= want - n
                if n == 0:
                    break
            pos += n
        if not stalled:
            hub._stopping.wait(faults.stall_seconds)
        if pos < length:  # dropped on purpose, or the file shrank: the client must notice
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """`bytes=a-`, `bytes=a-b`, `bytes=-n` -> (first, last); None = ignore the header."""
    m = _RANGE_RE.match(value.strip().replace(" ", ""))
    if m is None or (not m.group(1) and not m.group(2)):
        return None  # multiple or malformed ranges: RFC 9110 lets us send the whole file
    if not m.group(1):
        n = int(m.group(2))
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size:
        return "unsatisfiable"
    if last < first:
        return None
    return first, min(last, size - 1)


# --------------------------------------------------------------------------- public hub


class LocalHub:
    """A real HTTP hub on `host:port` (0 = free port) serving `root`; a context manager."""

    def __init__(
        self,
        root: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        log_requests: bool = False,
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port
        self.page_size = page_size
        self.log_requests = log_requests
        self.faults = HubFaults()
        self._root_real = os.path.realpath(self.root)
        self._hashes = _HashCache()
        self._records: list[_Live] = []
        self._records_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._stopping = threading.Event()
        self._loop_counter = 0
        self._loop_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("LocalHub is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> LocalHub:
        if self._server is not None:
            return self
        if not self.root.is_dir():
            raise FileNotFoundError(f"hub root is not a directory: {self.root}")
        cls = _Server6 if ":" in self.host else _Server
        server = cls((self.host, self.port), _Handler)
        server.hub = self
        self.port = server.server_address[1]
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name=f"local-hub:{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:  # idle keep-alive connections would otherwise linger
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- request log

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request answered so far, oldest first."""
        with self._records_lock:
            return [live.freeze() for live in self._records]

    def clear_requests(self) -> None:
        with self._records_lock:
            self._records.clear()

    def weight_bytes_sent(self) -> int:
        """Body bytes sent for LFS files (weights): shows whether a download re-fetched."""
        return sum(
            r.bytes_sent for r in self.requests if r.route == "resolve" and r.method == "GET"
            and r.lfs
        )

    def repo_sha(self, repo_id: str) -> str:
        """The commit sha the hub advertises for `repo_id` right now."""
        repo = self._load_repo(repo_id)
        if repo is None:
            raise KeyError(repo_id)
        return repo.sha

    def _next_loop(self) -> int:
        with self._loop_lock:
            self._loop_counter += 1
            return self._loop_counter

    def _add_record(self, live: _Live) -> None:
        with self._records_lock:
            self._records.append(live)

    def _log_record(self, live: _Live) -> None:
        if self.log_requests:
            rec = live.freeze()
            logger.info(
                "%s %s -> %d (%d bytes%s%s)", rec.method, rec.path, rec.status, rec.bytes_sent,
                f", range {rec.range}" if rec.range else "",
                f", fault {rec.fault}" if rec.fault else "",
            )

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # ---- repositories

    def _load_repo(self, repo_id: str) -> _Repo | None:
        """Scan ROOT/ORG/NAME now (cheap: hashes are cached by path, size and mtime)."""
        org, _, name = repo_id.partition("/")
        if not (_NAME_RE.match(org) and _NAME_RE.match(name)):
            return None
        repo_dir = os.path.join(self._root_real, org, name)
        real = os.path.realpath(repo_dir)
        if not _within(real, self._root_real) or not os.path.isdir(real):
            return None
        files: dict[str, _File] = {}
        newest = 0.0
        for dirpath, dirnames, filenames in os.walk(real):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                rel = os.path.relpath(full, real).replace(os.sep, "/")
                if not all(_valid_component(p) for p in rel.split("/")):
                    continue
                if os.path.islink(full) and not _within(os.path.realpath(full), self._root_real):
                    continue  # never serve bytes from outside ROOT
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                try:
                    oid, sha256 = self._hashes.get(full, st.st_size, st.st_mtime_ns)
                except OSError as exc:  # unreadable: leave it out rather than fail the repo
                    logger.warning("hub: skipping %s: %s", full, exc)
                    continue
                files[rel] = _File(rel, full, st.st_size, oid, sha256,
                                   is_lfs_path(rel, st.st_size))
                newest = max(newest, st.st_mtime)
        if not files:
            return None
        listing = "\n".join(f"{p}\0{files[p].oid}" for p in sorted(files))
        sha = hashlib.sha1(listing.encode()).hexdigest()
        return _Repo(repo_id, files, sha, newest)

    def prime(self) -> list[str]:
        """Hash every repo now, so the first client request is not slowed by hashing.

        Why: hashing runs at ~1 GiB/s, and the client gives a HEAD only 10 s.
        """
        served = []
        for repo_id in self.repos():
            if self._load_repo(repo_id) is not None:
                served.append(repo_id)
        return served

    def repos(self) -> list[str]:
        """Every `ORG/NAME` under the root that would be served."""
        out = []
        for org in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if org.is_dir() and _NAME_RE.match(org.name):
                for name in sorted(org.iterdir()):
                    if name.is_dir() and _NAME_RE.match(name.name):
                        out.append(f"{org.name}/{name.name}")
        return out


# --------------------------------------------------------------------------- helpers


def build_embedded_hub_root(dest: Path, seed: int = 0) -> Path:
    """Create `dest/llorch-test/tiny-qwen/` (the tiny model) so a LocalHub can serve it."""
    from llorch_harness.lab import tinymodel  # lazy: keeps the hub importable on its own

    repo_id = getattr(tinymodel, "TINY_QWEN_REPO", "llorch-test/tiny-qwen")
    repo_dir = Path(dest) / repo_id
    repo_dir.mkdir(parents=True, exist_ok=True)
    tinymodel.build_tiny_model(repo_dir, seed)
    return Path(dest)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llorch-harness hub serve`."""
    from llorch_harness.cli.common import (
        int_in_range as _int_arg,  # the one integer-range argument type
    )

    parser.add_argument("dir", metavar="DIR", help="hub root: repos live in DIR/ORG/NAME/")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=_int_arg(0, 65535, "port"), default=0,
                        help="port 0..65535 (default 0: a free one)")
    parser.add_argument("--page-size", type=_int_arg(1, 10**6, "page size"),
                        default=DEFAULT_PAGE_SIZE,
                        help=f"tree entries per page (default {DEFAULT_PAGE_SIZE})")


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; prints `hub serving DIR at URL` once ready."""
    root = Path(args.dir)
    if not root.is_dir():
        print(f"error: hub root is not a directory: {root} (create it, with repos in "
              "DIR/ORG/NAME/)", file=sys.stderr)
        return 1
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    hub = LocalHub(root, args.host, args.port, page_size=getattr(args, "page_size",
                                                                  DEFAULT_PAGE_SIZE),
                   log_requests=True)
    try:
        hub.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
              "(pick another --port)", file=sys.stderr)
        return 1
    done = threading.Event()
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda *_: done.set())
    try:
        logger.info("hub: hashing repos under %s", root)
        logger.info("hub: serving %s", ", ".join(hub.prime()) or "no repos yet")
        print(f"hub serving {root} at {hub.url}", flush=True)
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0


def serve_main(argv: list[str] | None = None) -> int:
    """`llorch-harness hub serve DIR [--host H] [--port P]` as a standalone entry point."""
    parser = argparse.ArgumentParser(prog="llorch-harness hub serve",
                                     description="Serve DIR/ORG/NAME repos as a local HF hub.")
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(serve_main())
