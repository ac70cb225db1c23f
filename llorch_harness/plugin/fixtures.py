"""Session-scoped fixtures of the gate: lab, pool, catalog, hub, downloaded model, workers.

Why here and not in a conftest: the plugin registers this module once a run turns out to
be a gate run (plugin/activation.py), so the gate works in any checkout and costs other
pytest runs nothing. Plain helpers (the worker factory, the model fetch) live at module
level so they can be tested without pytest.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from filelock import FileLock

from llorch_harness.errors import HarnessError
from llorch_harness.plugin.factory import WorkerFactory, stop_tracked, xdist_worker_name
from llorch_harness.plugin.labs import LabDecision, device_group
from llorch_harness.plugin.memory import ledger
from llorch_harness.plugin.models import MODEL_ARG, ModelRegistry, ModelUnderTest
from llorch_harness.pool import procs

if TYPE_CHECKING:
    from llorch_harness.checks.agreement import ReferenceRunner
    from llorch_harness.lab.hub import LocalHub
    from llorch_harness.pool.catalog import Catalog, ModelEntry
    from llorch_harness.pool.paths import PoolPaths
    from llorch_harness.pool.workers import WorkerHandle

LAB_KEY = pytest.StashKey[LabDecision]()
RECORD_KEY = pytest.StashKey[dict[str, Any]]()
# the backend a test runs on (None: no backend marker, or it does not run)
BACKEND_KEY = pytest.StashKey[str | None]()


# --------------------------------------------------------------------------- paths


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


def where_lines(config: pytest.Config, lab: LabDecision) -> list[str]:
    """The gate header's `pool root` and `results store` line: where this run reads and
    writes (issue 28 item 5), so a second run or `llorch-harness history` finds them."""
    from llorch_harness.errors import HarnessError
    from llorch_harness.perf.session import controller_db_path

    root = default_pool_root(lab, config._tmp_path_factory)  # type: ignore[attr-defined]
    how = ("a fresh directory of this run" if lab.lab == "embedded" and not lab.pool_root
           else "--pool-root or $LLORCH_POOL_ROOT" if lab.pool_root else "the current directory")
    if lab.settings.no_perf_gate:
        store = "not used (--no-perf-gate)"
    else:
        try:
            store = str(controller_db_path(config, lab))
        except HarnessError as err:
            store = f"unusable: {err.one_line()}"
    return [f"  pool root: {root} ({how})", f"  results store: {store}"]


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


# the tiny-model builder's architecture for each embedded model's catalog architecture
_TINY_ARCH = {"qwen": "qwen2", "qwen2": "qwen2", "llama": "llama", "phi3": "phi3",
              "mistral": "mistral"}


def build_hub_repos(root: Path, model_ids: list[str]) -> list[str]:
    """Build each embedded model of `model_ids` under root/ORG/NAME once (a marker per repo);
    the repos built. tiny-qwen speaks Qwen2.5's real vocabulary, so the piece checks meet
    real BPE pieces (docs/tiny-model.md)."""
    from llorch_harness.lab.tinymodel import EMBEDDED_VOCAB, TINY_QWEN_REPO, build_tiny_model
    from llorch_harness.pool.catalog import known_models

    built = []
    for model_id in model_ids:
        entry = known_models().get(model_id)
        if entry is None or not entry.metadata.get("embedded"):
            continue
        marker = root / f".built-{model_id}"
        with FileLock(str(root) + f".{model_id}.lock", timeout=600):
            if not marker.exists():
                arch = _TINY_ARCH[str(entry.architecture)]
                vocab = EMBEDDED_VOCAB if entry.repo == TINY_QWEN_REPO else None
                build_tiny_model(root / entry.repo, vocab=vocab, architecture=arch)
                marker.write_text("ok\n")
        built.append(entry.repo)
    return built


@pytest.fixture(scope="session")
def hub(lab: LabDecision, tmp_path_factory: pytest.TempPathFactory,
        ) -> Iterator[LocalHub | None]:
    """A local hub serving the embedded models among the gate models; None when every gate
    model is a real hub model."""
    embedded = [m for m in lab.gate_models if is_embedded_model(m)]
    if not embedded:
        yield None
        return
    from llorch_harness.lab.hub import LocalHub

    root = shared_dir(tmp_path_factory) / "hub"
    root.mkdir(parents=True, exist_ok=True)
    build_hub_repos(root, embedded)
    with LocalHub(root) as server:
        yield server


def model_endpoint(model_id: str, hub: LocalHub | None) -> str | None:
    """Where a model downloads from: the local hub for an embedded model, else HF_ENDPOINT
    (or huggingface.co)."""
    return hub.url if hub is not None and is_embedded_model(model_id) else None


@pytest.fixture(scope="session")
def downloaded_model(lab: LabDecision, pool_paths: PoolPaths, hub: LocalHub | None,
                     ) -> GateModel:
    """The gate model, downloaded and verified once per pool (the download lock spans xdist)."""
    return fetch_gate_model(pool_paths, lab.gate_model, model_endpoint(lab.gate_model, hub), hub)


@pytest.fixture(scope="session")
def worker_factory(lab: LabDecision, pool_paths: PoolPaths, downloaded_model: GateModel,
                   request: pytest.FixtureRequest) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(lab, pool_paths, downloaded_model.model_id, downloaded_model,
                            memory=ledger(request.config))
    try:
        yield factory
    finally:
        factory.stop_all()


def make_reference(lab: LabDecision, pool_paths: PoolPaths, model: GateModel,
                   ) -> ReferenceRunner | None:
    """The independent reference for a model (None with --reference off); HarnessError when
    none can load."""
    from llorch_harness.checks.agreement import ReferenceRunner
    from llorch_harness.checks.reference import load_reference

    st = lab.settings
    ref = load_reference(model.path, st.reference)
    if ref is None:
        return None
    cache = pool_paths.runtime_dir / "reference"
    return ReferenceRunner(ref, delta=st.reference_delta, k=st.reference_top_k,
                           model_files=model.file_hashes, cache_dir=cache)


@pytest.fixture(scope="session")
def reference_runner(lab: LabDecision, pool_paths: PoolPaths, downloaded_model: GateModel,
                     ) -> ReferenceRunner | None:
    """The independent reference for the gate model (None with --reference off): loaded once
    per process, its greedy outputs cached in the pool root for every backend and rerun."""
    try:
        return make_reference(lab, pool_paths, downloaded_model)
    except HarnessError as exc:
        pytest.fail(exc.one_line(), pytrace=False)


@pytest.fixture(scope="session")
def model_registry(lab: LabDecision, pool_paths: PoolPaths, hub: LocalHub | None,
                   downloaded_model: GateModel, worker_factory: WorkerFactory,
                   request: pytest.FixtureRequest) -> Iterator[ModelRegistry]:
    """Every --gate-models model, prepared on first use; the first is the gate model with
    the session's own factory. A reference that cannot load fails that model's tests."""
    references: dict[str, ReferenceRunner | None | HarnessError] = {}

    def prepare(model_id: str) -> ModelUnderTest:
        model = fetch_gate_model(pool_paths, model_id, model_endpoint(model_id, hub), hub)
        factory = WorkerFactory(lab, pool_paths, model_id, model, memory=ledger(request.config),
                                id_tag=model_id)
        try:
            references[model_id] = make_reference(lab, pool_paths, model)
        except HarnessError as exc:
            references[model_id] = exc
        return ModelUnderTest(model, factory, None)

    registry = ModelRegistry(ModelUnderTest(downloaded_model, worker_factory, None), prepare,
                             references=references)
    try:
        yield registry
    finally:
        registry.stop_all()


@pytest.fixture(scope="session")
def gate_model_id(lab: LabDecision) -> str:
    """The model a model test runs on: the gate model, unless --gate-models parametrizes it."""
    return lab.gate_model


@pytest.fixture
def model_under_test(request: pytest.FixtureRequest, model_registry: ModelRegistry,
                     gate_model_id: str) -> ModelUnderTest:
    """This test's model: files, worker factory and reference (fails the test when the
    model cannot be downloaded or no reference can load it)."""
    try:
        mut = model_registry.get(gate_model_id)
    except HarnessError as exc:
        pytest.fail(f"model {gate_model_id}: {exc.one_line()}", pytrace=False)
    if mut is model_registry.primary:  # the session's reference: loaded once per process
        mut.reference = request.getfixturevalue("reference_runner")
        return mut
    ref = model_registry.references.get(gate_model_id)
    if isinstance(ref, HarnessError):
        pytest.fail(f"model {gate_model_id}: {ref.one_line()}", pytrace=False)
    mut.reference = ref
    return mut


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
    "MODEL_ARG", "GateModel", "PoolCatalog", "WorkerFactory", "catalog", "device_group",
    "downloaded_model", "gate_backend", "gate_model_id", "gate_record", "hub", "lab",
    "model_registry", "model_under_test", "pool_paths", "reference_runner", "stop_tracked",
    "worker_factory",
]
