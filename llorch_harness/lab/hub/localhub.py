"""`LocalHub`: the hub as tests and `llorch-harness hub serve` use it.

Why apart: the lifecycle (start on a free port, stop without leaving a thread or an idle
keep-alive connection behind), the request log and the repo scans are what callers see;
the server, the routes and the faults are the parts it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path

from llorch_harness.lab.hub.faults import HubFaults
from llorch_harness.lab.hub.records import Live, RequestRecord
from llorch_harness.lab.hub.repo import HashCache, Repo, list_repos, scan_repo
from llorch_harness.lab.hub.server import Handler, Server, Server6

logger = logging.getLogger("llorch_harness.lab.hub")

DEFAULT_PAGE_SIZE = 1000


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
        self._hashes = HashCache()
        self._records: list[Live] = []
        self._records_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._stopping = threading.Event()
        self._loop_counter = 0
        self._loop_lock = threading.Lock()
        self._server: Server | None = None
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
        cls = Server6 if ":" in self.host else Server
        server = cls((self.host, self.port), Handler)
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

    def _add_record(self, live: Live) -> None:
        with self._records_lock:
            self._records.append(live)

    def _log_record(self, live: Live) -> None:
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

    def _load_repo(self, repo_id: str) -> Repo | None:
        """Scan ROOT/ORG/NAME now (cheap: hashes are cached by path, size and mtime)."""
        return scan_repo(self._root_real, repo_id, self._hashes)

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
        return list_repos(self.root)


def build_embedded_hub_root(dest: Path, seed: int = 0) -> Path:
    """Create `dest/llorch-test/tiny-qwen/` (the tiny model) and the other architectures'
    tiny repos (`tinymodel.EXTRA_TINY_REPOS`: tiny-llama, -phi3, -mistral) so a LocalHub
    can serve them."""
    from llorch_harness.lab import tinymodel  # lazy: keeps the hub importable on its own

    repo_id = getattr(tinymodel, "TINY_QWEN_REPO", "llorch-test/tiny-qwen")
    repo_dir = Path(dest) / repo_id
    repo_dir.mkdir(parents=True, exist_ok=True)
    tinymodel.build_tiny_model(repo_dir, seed)
    for other, arch in getattr(tinymodel, "EXTRA_TINY_REPOS", {}).items():
        tinymodel.build_tiny_model(Path(dest) / other, seed, architecture=arch)
    return Path(dest)
