"""The gate's side of performance history: where the store is, what one run measures and
records, and what the run's end and its reports show.

Why here and not in the plugin: the plugin must stay light (it is loaded by every pytest
run in a checkout); it calls into this module only when a gate run measures or reports.
A run is one pytest session: its key (`run_key`) is made on the controller and handed to
xdist workers, so every record of one run carries the same key and the run's end can set
the gate verdict on all of them (a record of a run that never finished, killed or still
running, has none and never becomes a baseline).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llorch_harness import __version__
from llorch_harness.errors import HarnessError
from llorch_harness.perf.baseline import DEFAULT_RULE, PerfVerdict, Rule, compare
from llorch_harness.perf.figures import Figure, best_of
from llorch_harness.perf.fingerprint import (
    DEFAULT_PROTOCOL,
    Protocol,
    baseline_key,
    fingerprint,
)
from llorch_harness.perf.runkey import RUN_KEY, ran_perf, run_key
from llorch_harness.perf.store import DEFAULT_NAME, NewRun, ResultsStore, check_target

_PANELS_KEY = pytest.StashKey[list[Any]]()


def db_path(results_db: str | None, pool_root: Path) -> Path:
    """--results-db (env, ini) when given, else `.runtime/gate/results.sqlite` in the pool."""
    if results_db:
        return check_target(Path(results_db).expanduser().absolute())
    from llorch_harness.pool.paths import PoolPaths

    paths = PoolPaths.at(pool_root)
    return check_target(paths.writable_dir(paths.runtime_dir / "gate") / DEFAULT_NAME)


def controller_db_path(config: pytest.Config, lab: Any) -> Path:
    """The store of this session as the fixtures chose the pool root."""
    from llorch_harness.plugin.fixtures import default_pool_root

    factory = config._tmp_path_factory  # type: ignore[attr-defined]
    return db_path(lab.settings.results_db, default_pool_root(lab, factory))


def parallel() -> int:
    try:
        return max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    except ValueError:
        return 1


def gate_fingerprint(lab: Any, backend: str, handle: Any, model_id: str,
                     model_files: dict[str, str], revision: str | None,
                     protocol: Protocol) -> dict[str, Any]:
    from llorch_harness.pool.backends import device_info

    return fingerprint(
        pool=lab.hostname, lab=lab.lab, model=model_id, backend=backend,
        device=device_info(backend, getattr(handle, "gpu", 0)),
        worker_kind=lab.backends[backend].worker or lab.worker_kind,
        binary_sha256=handle.binary_sha256, model_revision=revision, model_files=model_files,
        harness_version=__version__, protocol=protocol.label(parallel()))


@dataclass
class PerfOutcome:
    """What the gate item shows: the record, its check, where to look."""

    record_id: int
    db: Path
    fingerprint: dict[str, Any]
    figures: dict[str, Figure]
    verdict: PerfVerdict
    store_s: float  # the store's and the check's own time (recording cost)
    measurements: int = 1  # 2 when a suspected regression was measured again

    @property
    def where(self) -> str:
        fp = self.fingerprint
        return (f"llorch-harness history --results-db {self.db} --model {fp['model']} "
                f"--backend {fp['backend']} (an intended change: llorch-harness history "
                f"--results-db {self.db} --accept {self.record_id})")

    def summary(self) -> dict[str, Any]:
        return {"record": self.record_id, "store": str(self.db), "status": self.verdict.status,
                "message": self.verdict.message(), "store_and_check_s": round(self.store_s, 4),
                "measurements": self.measurements,
                "figures": {n: f.value for n, f in self.figures.items()},
                "unavailable": {n: f.note for n, f in self.figures.items() if f.value is None}}


def record_and_check(db: Path, key: str, fp: dict[str, Any], figures: dict[str, Figure],
                     rule: Rule = DEFAULT_RULE,
                     remeasure: Callable[[], dict[str, Figure]] | None = None) -> PerfOutcome:
    """Compare with the baseline, then append the record with its verdict.

    A suspected regression is measured once more (`remeasure`) and fails only when the
    better of the two measurements is still beyond the band: a burst of load on the pool
    during one measurement is not a slower build; a slower build is slow both times.
    """
    t0 = time.perf_counter()
    bkey = baseline_key(fp)
    with ResultsStore.open(db) as store:
        history = store.baseline_runs(bkey, exclude_run_key=key, limit=rule.runs)
    verdict = compare(figures, history, rule)
    spent = time.perf_counter() - t0
    measured = 1
    if verdict.status == "fail" and remeasure is not None:
        figures = best_of(figures, remeasure())
        measured = 2
        verdict = compare(figures, history, rule)
    t1 = time.perf_counter()
    with ResultsStore.open(db) as store:
        rid = store.record(NewRun(run_key=key, pool=fp["pool"], model=fp["model"],
                                  backend=fp["backend"], baseline_key=bkey,
                                  binary_sha256=fp.get("worker_binary_sha256"), fingerprint=fp,
                                  status=verdict.status, figures=figures,
                                  check={**verdict.to_json(), "measurements": measured}))
    spent += time.perf_counter() - t1
    return PerfOutcome(rid, db, fp, figures, verdict, spent, measured)


def measure_and_check(config: pytest.Config, lab: Any, pool_paths: Any, factory: Any,
                      backend: str, protocol: Protocol = DEFAULT_PROTOCOL) -> PerfOutcome:
    """The gate item's body: measure fresh workers of `backend`, record, compare."""
    from llorch_harness.perf.measure import measure
    from llorch_harness.pool.catalog import read_catalog

    db = db_path(lab.settings.results_db, Path(pool_paths.root))
    handles: list[Any] = []

    def spawn(i: int) -> Any:
        handle = factory.spawn(backend, worker_id=factory.default_id(backend, 0, f"perf{i}"))
        handles.append(handle)
        return handle

    def again() -> dict[str, Figure]:
        return measure(spawn, factory.stop, backend, protocol).figures()

    figures = again()
    entry = read_catalog(pool_paths).find(factory.model_id)
    revision = entry.metadata.get("revision") if entry is not None else None
    gm = factory.gate_model
    fp = gate_fingerprint(lab, backend, handles[-1], factory.model_id,
                          gm.file_hashes if gm is not None else {},
                          str(revision) if revision else None, protocol)
    return record_and_check(db, run_key(config), fp, figures, remeasure=again)


# --------------------------------------------------------------------------- run's end


def finish(config: pytest.Config, lab: Any, collector: Any) -> list[dict[str, Any]] | None:
    """At the controller's session end: the gate verdict onto this run's records; the
    records with their trends for the gate JSON (None when no record was made)."""
    from llorch_harness.perf.render import panels_for_run, summary_json

    key = config.stash.get(RUN_KEY, None)
    if key is None or not ran_perf(config, collector):
        return None
    db = controller_db_path(config, lab)
    if not db.exists():
        return None
    with ResultsStore.open(db) as store:
        store.set_gate_verdict(key, collector.verdict())
        panels = panels_for_run(store, key)
    config.stash[_PANELS_KEY] = panels
    return [summary_json(p) for p in panels]


def report_html(config: pytest.Config, lab: Any, collector: Any) -> str | None:
    """The per-pool report's performance section (None when no record was made)."""
    from llorch_harness.perf.render import panels_for_run, section_html

    key = config.stash.get(RUN_KEY, None)
    if key is None or not ran_perf(config, collector):
        return None
    panels = config.stash.get(_PANELS_KEY, None)
    if panels is None:
        with contextlib.suppress(HarnessError):
            db = controller_db_path(config, lab)
            if db.exists():
                with ResultsStore.open(db) as store:
                    panels = panels_for_run(store, key)
    return section_html(panels or [], "Performance (this run against its baseline)")
