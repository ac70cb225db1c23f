"""The hub's HTTP server: one handler thread per connection, faults applied on the way.

Why: the answers are the real Hub's (`routes`), the bytes come from the repo model
(`repo`), and this module only sends them, with the faults a test armed (`faults`):
before an answer (5xx, 404, stall, trickle of API answers) and inside a file body (drop,
corrupt, stall, trickle). Every request is recorded (`records.Live`) before its headers
go out. File bodies go by sendfile unless a fault needs the bytes.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import socket
import sys
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from llorch_harness.lab.hub.faults import BodyFaults, Rule
from llorch_harness.lab.hub.records import Live
from llorch_harness.lab.hub.repo import Repo
from llorch_harness.lab.hub.routes import (
    HOST_RE,
    BadTarget,
    Target,
    broken_next_url,
    info_json,
    next_page_url,
    parse_range,
    parse_target,
    tree_entries,
)

if TYPE_CHECKING:
    from llorch_harness.lab.hub.localhub import LocalHub

logger = logging.getLogger("llorch_harness.lab.hub")

SEND_CHUNK = 1 << 20  # body chunk when bytes must pass through Python (faults)
SENDFILE_CHUNK = 8 << 20  # sendfile slice; on a broken pipe bytes_sent is exact to a slice
IDLE_TIMEOUT_S = 120.0  # keep-alive connections idle longer than this are closed
_FLIP = bytes(b ^ 0xFF for b in range(256))


class Server(http.server.ThreadingHTTPServer):
    """The listening socket; `hub` is the LocalHub it serves."""

    daemon_threads = True
    allow_reuse_address = True
    hub: LocalHub

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # clients hanging up mid-body is normal (and what faults cause)
        logger.exception("hub: error while serving %s", client_address)


class Server6(Server):
    address_family = socket.AF_INET6


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection's requests (keep-alive): route, apply faults, answer, record."""

    protocol_version = "HTTP/1.1"
    server_version = "llorch-local-hub/1"
    timeout = IDLE_TIMEOUT_S
    server: Server
    _trickle: Rule | None = None  # an API answer sent a few bytes at a time

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
        self._live = Live(self.command, self.path, self.headers.get("Range"), time.time())
        self._trickle = None

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
            self._live.bytes_sent += len(data)  # counted first: see records.Live
            self.wfile.write(data)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self._head(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
                   len(data))
        trickle = self._trickle
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
        try:
            target = parse_target(self.path)
        except BadTarget as exc:
            self._error(400, str(exc), route="bad")
            return
        self._live.route = target.route
        self._live.repo = target.repo_id
        self._live.file = target.rel if target.route == "resolve" else None
        if not self._request_faults(target):
            self._answer(target)

    def _request_faults(self, target: Target) -> bool:
        """Apply the faults armed for the whole request; True when one answered it."""
        faults, hub, targets = self.server.hub.faults, self.server.hub, target.fault_targets
        rule = faults._take("fail_5xx", targets)
        if rule is not None:
            self._live.faults.append("fail_5xx")
            self._error(rule.status, f"injected {rule.status}")
            return True
        rule = faults._take("not_found", targets)
        if rule is not None:
            self._live.faults.append("not_found")
            self._error(404, f"injected {rule.error_code}", rule.error_code)
            return True
        rule = faults._take(
            "stall", targets, pred=lambda r: r.after_bytes is None or target.route != "resolve"
        )
        if rule is not None:
            self._live.faults.append("stall")
            hub._stopping.wait(rule.seconds)
        if target.route in ("info", "tree"):  # resolve bodies take theirs in _resolve
            self._trickle = faults._take("trickle", targets)
            if self._trickle is not None:
                self._live.faults.append("trickle")
        return False

    def _answer(self, target: Target) -> None:
        route, repo_id, rev = target.route, target.repo_id, target.rev
        if route == "telemetry":
            self._error(404, "not served by the local hub")
            return
        if route not in ("info", "tree", "resolve") or repo_id is None or rev is None:
            logger.warning("hub: unexpected request %s %s", self.command, self.path)
            self._error(404, f"no route for {target.url_path}")
            return
        repo = self.server.hub._load_repo(repo_id)
        if repo is None:
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
        elif rev not in ("main", repo.sha):
            self._error(404, f"Revision {rev} not found in {repo_id}", "RevisionNotFound")
        elif route == "info":
            self._json(200, info_json(repo))
        elif route == "tree":
            self._tree(repo, rev, target.rel or "", parse_qs(target.query))
        else:
            self._resolve(repo, target.rel or "", target.fault_targets)

    # ---- endpoints

    def _host(self) -> str:
        """The Host header when plausible (it is echoed into links), else the hub's own."""
        host = self.headers.get("Host", "")
        return host if HOST_RE.match(host) else self.server.hub.url.split("://", 1)[1]

    def _tree(self, repo: Repo, rev: str, rel: str, q: dict[str, list[str]]) -> None:
        recursive = q.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries = tree_entries(repo, rel, recursive)
        if entries is None:
            self._error(404, f"{rel} is not a folder of {repo.repo_id}", "EntryNotFound")
            return
        try:
            start = int(q.get("cursor", ["0"])[0])
        except ValueError:
            start = -1
        if start < 0 or start > len(entries):
            self._error(400, "invalid cursor")
            return
        size = max(1, self.server.hub.page_size)
        headers: dict[str, str] = {}
        if start + size < len(entries):
            nxt = next_page_url(self._host(), repo, rev, rel, q, recursive, start + size)
            headers["Link"] = f'<{nxt}>; rel="next"'
        links = self.server.hub.faults._take("tree_links", [])
        if links is not None:
            self._live.faults.append(f"tree_links:{links.mode}")
            broken = broken_next_url(f"http://{self._host()}{self.path}", links.mode,
                                     self.server.hub._next_loop)
            headers["Link"] = f'<{broken}>; rel="next"'
        self._json(200, entries[start:start + size], headers)

    def _resolve(self, repo: Repo, rel: str, targets: list[str]) -> None:
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
        span = self._range(f.size, headers)
        if span is None:
            return
        status, start, length = span
        if self.command == "HEAD":
            self._head(status, headers, length)
            return
        body = self.server.hub.faults.take_body(targets)
        self._live.faults += body.names
        try:
            fh = open(f.abs_path, "rb")  # closed below, after streaming
        except OSError:
            self._error(404, f"{rel} vanished from {repo.repo_id}", "EntryNotFound")
            return
        with fh:
            self._head(status, headers, length)
            self._stream(fh, start, length, body)

    def _range(self, size: int, headers: dict[str, str]) -> tuple[int, int, int] | None:
        """(status, first byte, length) the Range header asks for, Content-Range added to
        `headers`; None once a 416 has been sent."""
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng is not None:
            parsed = parse_range(rng, size)
            if parsed == "unsatisfiable":
                self._json(416, {"error": "range not satisfiable"},
                           {"Content-Range": f"bytes */{size}"})
                return None
            if isinstance(parsed, tuple):
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return status, start, (end - start + 1 if size else 0)

    def _stream(self, fh: Any, start: int, length: int, faults: BodyFaults) -> None:
        """Send `length` bytes from `start`; sendfile unless a fault needs the bytes."""
        hub = self.server.hub
        limit = length if faults.drop_after is None else min(length, faults.drop_after)
        pos = 0
        stalled = faults.stall_after is None
        while pos < limit:
            if not stalled and pos >= (faults.stall_after or 0):
                hub._stopping.wait(faults.stall_seconds)
                stalled = True
            stop = limit if stalled else min(limit, faults.stall_after or 0)
            want = min(SENDFILE_CHUNK, stop - pos)
            if faults.trickle_bytes is not None:
                if pos and hub._stopping.wait(faults.trickle_seconds):
                    break  # the hub stops: end the trickle (the client sees a short body)
                want = min(want, faults.trickle_bytes)
            self._live.bytes_sent += want  # counted first (see records.Live), corrected below
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
