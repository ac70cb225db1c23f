"""Session-scoped fixtures of the gate: lab, pool, catalog, hub, downloaded model, workers.

Why here and not in a conftest: the plugin registers this module once a run turns out to
be a gate run (plugin/activation.py), so the gate works in any checkout and costs other
pytest runs nothing. Plain helpers (the worker factory, the model fetch) live at module
level so they can be tested without pytest.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest
from filelock import FileLock

from llorch_harness.errors import HarnessError
from llorch_harness.plugin.labs import LabDecision, device_group
from llorch_harness.plugin.memory import MemoryLedger, ledger
from llorch_harness.pool import procs

if TYPE_CHECKING:
    from llorch_harness.checks.agreement import ReferenceRunner
    from llorch_harness.lab.hub import LocalHub
    from llorch_harness.pool.catalog import Catalog, ModelEntry
    from llorch_harness.pool.paths import PoolPaths
    from llorch_harness.pool.workers import StopResult, WorkerHandle

LAB_KEY = pytest.StashKey[LabDecision]()
RECORD_KEY = pytest.StashKey[dict[str, Any]]()
# the backend a test runs on (None: no backend marker, or it does not run)
BACKEND_KEY = pytest.StashKey[str | None]()


# --------------------------------------------------------------------------- paths


def xdist_worker_name() -> str | None:
    return os.environ.get("PYTEST_XDIST_WORKER")


def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory every xdist worker of this run shares (the run's basetemp)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if xdist_worker_name() else base


def default_pool_root(lab: LabDecision, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """--pool-root wins; else embedded: a shared fresh pool; real: $LLORCH_POOL_ROOT or cwd."""
    from llorch_harness.pool.paths import resolve_pool_root

    if lab.pool_root:
        return Path(lab.pool_root)
    if lab.lab == "embedded":
        root = shared_dir(tmp_path_factory) / "pool"
        root.mkdir(parents=True, exist_ok=True)
        return root.resolve()
    return resolve_pool_root(None)


def is_embedded_model(model_id: str) -> bool:
    from llorch_harness.pool.catalog import known_models

    entry = known_models().get(model_id)
    return bool(entry and entry.metadata.get("embedded"))


# --------------------------------------------------------------------------- model


@dataclass
class GateModel:
    """The downloaded, verified gate model as the tests see it."""

    model_id: str
    path: Path
    repo: str
    size_gb: float
    files: dict[str, dict[str, Any]]
    already_downloaded: bool
    fetched: list[str]
    endpoint: str | None

    @property
    def file_hashes(self) -> dict[str, str]:
        """sha256 for LFS files (weights), the git blob sha1 the hub lists for the rest."""
        return {n: (f"sha256:{r['sha256']}" if r.get("sha256") else f"git-sha1:{r.get('git_sha1')}")
                for n, r in sorted(self.files.items())}


def record_download(paths: PoolPaths, entry: dict[str, Any]) -> None:
    """One JSON line per process that asked for the model: the evidence of download-once."""
    log = paths.runtime_dir / "gate" / "downloads.jsonl"
    paths.writable_dir(log.parent)  # no symlinked directory under the pool root
    with FileLock(str(log) + ".lock", timeout=60), open(log, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def fetch_gate_model(paths: PoolPaths, model_id: str, endpoint: str | None,
                     hub: LocalHub | None = None) -> GateModel:
    from llorch_harness.pool.download import download_model

    buf = io.StringIO()
    before = hub.weight_bytes_sent() if hub is not None else 0
    res = download_model(paths, model_id, endpoint=endpoint, out=buf)
    record_download(paths, {
        "xdist_worker": xdist_worker_name() or "main", "pid": os.getpid(),
        "already_downloaded": res.already_downloaded, "fetched": sorted(res.fetched),
        "hub_weight_bytes": (hub.weight_bytes_sent() - before) if hub is not None else None,
    })
    return GateModel(
        model_id=model_id, path=Path(res.path), repo=res.repo, size_gb=res.size_gb,
        files=dict(res.files), already_downloaded=res.already_downloaded,
        fetched=list(res.fetched), endpoint=endpoint,
    )


# --------------------------------------------------------------------------- workers


class Stoppable(Protocol):
    """What the atexit and teardown safety net needs of a worker: a way to stop it."""

    def stop(self, grace: float = ...) -> object: ...


_TRACKED: dict[int, Stoppable] = {}
_TRACKED_LOCK = threading.Lock()


def _track(handle: Stoppable) -> None:
    with _TRACKED_LOCK:
        _TRACKED[id(handle)] = handle


def _untrack(handle: Stoppable) -> None:
    with _TRACKED_LOCK:
        _TRACKED.pop(id(handle), None)


def stop_tracked(grace: float = 5.0) -> int:
    """Stop every worker this process started and still holds (teardown and atexit)."""
    with _TRACKED_LOCK:
        handles = list(_TRACKED.values())
        _TRACKED.clear()
    for h in handles:
        with contextlib.suppress(Exception):
            h.stop(grace=grace)
    return len(handles)


atexit.register(stop_tracked)


@dataclass
class WorkerFactory:
    """Spawns workers of the lab's kind; one live worker per (backend, gpu) is shared."""

    lab: LabDecision
    paths: PoolPaths
    model_id: str
    gate_model: GateModel | None = None  # for the model files' hashes in every report
    live_workers: dict[tuple[str, int], WorkerHandle] = field(default_factory=dict)
    spawned: list[WorkerHandle] = field(default_factory=list)
    memory: MemoryLedger = field(default_factory=MemoryLedger)  # each life's memory (issue 15)

    def worker_kind(self, backend: str) -> str:
        st = self.lab.backends[backend]
        if not st.usable:
            pytest.skip(st.reason or f"{backend} not usable")
        return st.worker or self.lab.worker_kind

    def default_id(self, backend: str, gpu: int, tag: str = "gate") -> str:
        return f"{tag}-{backend}-{gpu}-{xdist_worker_name() or 'main'}"

    def spawn(self, backend: str, gpu: int = 0, *, worker_id: str | None = None,
              ready_timeout: float | None = None, extra_env: dict[str, str] | None = None,
              ) -> WorkerHandle:
        """A fresh worker, stopped at session end at the latest (the test may stop it first)."""
        from llorch_harness.pool.workers import spawn_worker

        kind = self.worker_kind(backend)
        before = self.memory.before(backend, gpu)
        handle = spawn_worker(
            self.paths, backend, self.model_id, gpu=gpu, port=0, worker=kind,
            bin_dir=self.lab.settings.bin_dir,
            ready_timeout=ready_timeout or self.lab.settings.ready_timeout,
            extra_env=extra_env, worker_id=worker_id or self.default_id(backend, gpu, "spawn"),
            die_with_parent=True, lease_dir=self.lab.settings.lease_dir,
            lease_wait=self.lab.settings.lease_wait,
            lease_out=sys.__stderr__,  # a wait for a leased device is said at once, past capture
        )
        _track(handle)
        self.spawned.append(handle)
        self.memory.start(handle, before)
        return handle

    def live(self, backend: str, gpu: int = 0) -> WorkerHandle:
        """The shared worker for (backend, gpu); respawned if it died."""
        key = (backend, gpu)
        handle = self.live_workers.get(key)
        if handle is not None and handle.poll() is None:
            return handle
        if handle is not None:
            self.stop(handle)
        handle = self.spawn(backend, gpu, worker_id=self.default_id(backend, gpu))
        self.live_workers[key] = handle
        return handle

    def restart(self, backend: str, gpu: int = 0) -> WorkerHandle:
        """Stop the live worker and start it again (same id, same model)."""
        key = (backend, gpu)
        old = self.live_workers.pop(key, None)
        if old is not None:
            self.stop(old)
        return self.live(backend, gpu)

    def stop(self, handle: WorkerHandle, grace: float | None = None) -> StopResult:
        """SIGINT with a grace longer than a generation (workers.STOP_GRACE_S)."""
        from llorch_harness.pool.workers import STOP_GRACE_S

        grace = STOP_GRACE_S if grace is None else grace
        try:
            return handle.stop(grace=grace)
        finally:
            _untrack(handle)
            self.memory.finish(handle)

    def stop_all(self) -> None:
        for handle in [*self.spawned]:
            with contextlib.suppress(Exception):
                self.stop(handle)
        self.live_workers.clear()
        self.spawned.clear()


def worker_facts(handle: WorkerHandle, gate_model: GateModel | None = None) -> dict[str, Any]:
    """What a report needs to know about the worker a result came from."""
    from llorch_harness.pool.backends import device_info

    facts: dict[str, Any] = {
        "worker_id": handle.worker_id,
        "command": list(handle.command),
        "binary": str(handle.binary_path),
        "binary_sha256": handle.binary_sha256,
        "uri": handle.uri,
        "log_path": str(handle.log_path),
        "ready_seconds": handle.ready_seconds,
        "vram_bytes": handle.vram_bytes,
        "device": device_info(handle.backend, handle.gpu),
    }
    if gate_model is not None:
        facts["model"] = gate_model.model_id
        facts["model_files"] = gate_model.file_hashes
    return facts


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> LabDecision:
    """The run's lab decision (identical on every xdist worker)."""
    return request.config.stash[LAB_KEY]


@pytest.fixture(scope="session")
def pool_paths(lab: LabDecision, tmp_path_factory: pytest.TempPathFactory) -> PoolPaths:
    from llorch_harness.pool.paths import PoolPaths

    return PoolPaths.at(default_pool_root(lab, tmp_path_factory))


@dataclass
class PoolCatalog:
    """The pool's catalog, read fresh on every call (other processes update it)."""

    paths: PoolPaths

    def load(self) -> Catalog:
        from llorch_harness.pool.catalog import read_catalog

        return read_catalog(self.paths)

    def entry(self, model_id: str) -> ModelEntry | None:
        return self.load().find(model_id)


@pytest.fixture(scope="session")
def catalog(pool_paths: PoolPaths) -> PoolCatalog:
    return PoolCatalog(pool_paths)


@pytest.fixture(scope="session")
def hub(lab: LabDecision, tmp_path_factory: pytest.TempPathFactory,
        ) -> Iterator[LocalHub | None]:
    """A local hub serving the embedded model; None when the gate model is a real hub model."""
    if not is_embedded_model(lab.gate_model):
        yield None
        return
    from llorch_harness.lab.hub import LocalHub
    from llorch_harness.lab.tinymodel import EMBEDDED_VOCAB, TINY_QWEN_REPO, build_tiny_model

    root = shared_dir(tmp_path_factory) / "hub"
    with FileLock(str(root) + ".lock", timeout=600):
        if not (root / ".built").exists():
            # Qwen2.5's real vocabulary, so the piece checks meet real BPE pieces
            # (docs/tiny-model.md); hub.build_embedded_hub_root keeps the small one.
            build_tiny_model(root / TINY_QWEN_REPO, vocab=EMBEDDED_VOCAB)
            (root / ".built").write_text("ok\n")
    with LocalHub(root) as server:
        yield server


@pytest.fixture(scope="session")
def downloaded_model(lab: LabDecision, pool_paths: PoolPaths, hub: LocalHub | None,
                     ) -> GateModel:
    """The gate model, downloaded and verified once per pool (the download lock spans xdist)."""
    endpoint = hub.url if hub is not None else None
    return fetch_gate_model(pool_paths, lab.gate_model, endpoint, hub)


@pytest.fixture(scope="session")
def worker_factory(lab: LabDecision, pool_paths: PoolPaths, downloaded_model: GateModel,
                   request: pytest.FixtureRequest) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(lab, pool_paths, downloaded_model.model_id, downloaded_model,
                            memory=ledger(request.config))
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def reference_runner(lab: LabDecision, pool_paths: PoolPaths, downloaded_model: GateModel,
                     ) -> ReferenceRunner | None:
    """The independent reference for the gate model (None with --reference off): loaded once
    per process, its greedy outputs cached in the pool root for every backend and rerun."""
    from llorch_harness.checks.agreement import ReferenceRunner
    from llorch_harness.checks.reference import load_reference

    st = lab.settings
    try:
        ref = load_reference(downloaded_model.path, st.reference)
    except HarnessError as exc:
        pytest.fail(exc.one_line(), pytrace=False)
    if ref is None:
        return None
    cache = pool_paths.runtime_dir / "reference"
    return ReferenceRunner(ref, delta=st.reference_delta, k=st.reference_top_k,
                           model_files=downloaded_model.file_hashes, cache_dir=cache)


@pytest.fixture
def gate_record(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A dict the test fills with facts; the report attaches it as extras."""
    rec: dict[str, Any] = {}
    request.node.stash[RECORD_KEY] = rec
    return rec


@pytest.fixture
def gate_backend(request: pytest.FixtureRequest) -> str:
    """The backend this test runs on (its backend marker, or the primary one)."""
    backend: str | None = request.node.stash.get(BACKEND_KEY, None)
    if backend is None:
        pytest.skip("test has no backend marker and no usable backend")
    return backend


def note_log(record: dict[str, Any], path: str | Path) -> None:
    paths = record.setdefault("log_paths", [])
    if str(path) not in paths:
        paths.append(str(path))


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not procs.process_alive(pid):
            return True
        time.sleep(0.05)
    return not procs.process_alive(pid)


__all__ = [
    "GateModel", "PoolCatalog", "WorkerFactory", "catalog", "device_group", "downloaded_model",
    "gate_backend", "gate_record", "hub", "lab", "pool_paths", "worker_factory",
]
