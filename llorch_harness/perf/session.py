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
from dataclasses import dataclass, field, replace
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
from llorch_harness.perf.hostload import (
    DEFAULT_CPU_SHARE,
    DEFAULT_QUIET_WAIT_S,
    BusyPolicy,
    HostConditions,
    HostWindow,
    wait_for_quiet,
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


EMBEDDED_STORE_DIR = "embedded"  # under the user's data directory (platformdirs)


def embedded_store() -> Path:
    """The embedded lab's store: in the user's data directory (`~/.local/share/llorch-harness/
    embedded/results.sqlite` on Linux), because that lab's pool is a fresh directory under
    pytest's basetemp, which pytest deletes after a few runs (issue 28 item 6)."""
    import platformdirs

    return platformdirs.user_data_path("llorch-harness") / EMBEDDED_STORE_DIR / DEFAULT_NAME


def store_for(lab: Any, pool_root: Path) -> Path:
    """This run's store: --results-db; else the embedded lab's own temporary pool keeps it
    in the user's data directory; else `.runtime/gate/results.sqlite` in the pool root."""
    if not lab.settings.results_db and lab.lab == "embedded" and not lab.pool_root:
        path = embedded_store()
        path.parent.mkdir(parents=True, exist_ok=True)
        return check_target(path)
    return db_path(lab.settings.results_db, pool_root)


def controller_db_path(config: pytest.Config, lab: Any) -> Path:
    """The store of this session as the fixtures chose the pool root."""
    from llorch_harness.plugin.fixtures import default_pool_root

    factory = config._tmp_path_factory  # type: ignore[attr-defined]
    return store_for(lab, default_pool_root(lab, factory))


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
class Attempt:
    """One measurement and the host's conditions over it (None: not watched)."""

    figures: dict[str, Figure]
    host: HostConditions | None = None
    waited_s: float = 0.0  # spent waiting for quiet before it (or, busy, in vain after it)
    quiet_probe: HostConditions | None = None  # the last probe of that wait

    @property
    def busy(self) -> bool:
        return self.host is not None and self.host.busy

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host.to_json() if self.host else None,
                "waited_for_quiet_s": round(self.waited_s, 2),
                "quiet_probe": self.quiet_probe.to_json() if self.quiet_probe else None}


@dataclass
class PerfOutcome:
    """What the gate item shows: the record, its check, where to look."""

    record_id: int
    db: Path
    fingerprint: dict[str, Any]
    figures: dict[str, Figure]
    verdict: PerfVerdict
    store_s: float  # the store's and the check's own time (recording cost)
    measurements: int = 1  # more when the host was busy or a regression was confirmed
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return self.verdict.status == "busy"

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
                "unavailable": {n: f.note for n, f in self.figures.items() if f.value is None},
                "host": [a.to_json() for a in self.attempts]}


Take = Callable[[], Attempt]
Wait = Callable[[], "tuple[bool, HostConditions | None, float]"]


def _quietly(take: Take, wait: Wait | None) -> list[Attempt]:
    """Measure; on a busy host wait (bounded) for quiet and measure once more. The last
    attempt decides: still busy means the figures cannot be judged."""
    first = take()
    if not first.busy or wait is None:
        return [first]
    quiet, probe, waited = wait()
    if not quiet:
        first.waited_s, first.quiet_probe = waited, probe
        return [first]
    second = take()
    second.waited_s, second.quiet_probe = waited, probe
    return [first, second]


def _judged(attempt: Attempt, history: list[Any], rule: Rule) -> PerfVerdict:
    verdict = compare(attempt.figures, history, rule)
    host = attempt.host.describe() if attempt.host else None
    if attempt.busy:
        assert attempt.host is not None
        waited = (f"; waited {attempt.waited_s:.0f} s for quiet in vain"
                  if attempt.waited_s else "")
        return replace(verdict, status="busy", host=host,
                       busy="; ".join(attempt.host.busy_reasons) + waited)
    return replace(verdict, host=host)


def check_measured(db: Path, key: str, fp: dict[str, Any], take: Take,
                   wait: Wait | None = None, rule: Rule = DEFAULT_RULE,
                   confirm: bool = True) -> PerfOutcome:
    """Measure (`take`), judge against the baseline, then append the record.

    A busy host is waited for (`wait`, bounded) and measured again; still busy, the record
    is `busy`: could not check, with the figures, never a failure and never a baseline. A
    suspected regression on a quiet host is measured once more the same way and fails only
    when the better of the two is still a regression: a burst of load the host conditions
    missed is not a slower build; a slower build is slow both times.
    """
    t0 = time.perf_counter()
    bkey = baseline_key(fp)
    with ResultsStore.open(db) as store:
        history = store.baseline_runs(bkey, exclude_run_key=key, limit=rule.runs)
    spent = time.perf_counter() - t0
    attempts = _quietly(take, wait)
    last = attempts[-1]
    figures = last.figures
    verdict = _judged(last, history, rule)
    if verdict.status == "fail" and confirm:
        more = _quietly(take, wait)
        attempts += more
        again = more[-1]
        figures = best_of(figures, again.figures)
        verdict = _judged(replace(again, figures=figures), history, rule)
    t1 = time.perf_counter()
    check = {**verdict.to_json(), "measurements": len(attempts),
             "host": [a.to_json() for a in attempts]}  # the store adds the samples
    with ResultsStore.open(db) as store:
        rid = store.record(NewRun(run_key=key, pool=fp["pool"], model=fp["model"],
                                  backend=fp["backend"], baseline_key=bkey,
                                  binary_sha256=fp.get("worker_binary_sha256"), fingerprint=fp,
                                  status=verdict.status, figures=figures, check=check))
    spent += time.perf_counter() - t1
    return PerfOutcome(rid, db, fp, figures, verdict, spent, len(attempts), attempts)


def record_and_check(db: Path, key: str, fp: dict[str, Any], figures: dict[str, Figure],
                     rule: Rule = DEFAULT_RULE,
                     remeasure: Callable[[], dict[str, Figure]] | None = None,
                     host: HostConditions | None = None) -> PerfOutcome:
    """`check_measured` for figures already measured (and `remeasure` to confirm)."""
    given = [Attempt(figures, host)]

    def take() -> Attempt:
        if given:
            return given.pop()
        assert remeasure is not None
        return Attempt(remeasure())

    return check_measured(db, key, fp, take, None, rule, confirm=remeasure is not None)


def measure_and_check(config: pytest.Config, lab: Any, pool_paths: Any, factory: Any,
                      backend: str, protocol: Protocol = DEFAULT_PROTOCOL) -> PerfOutcome:
    """The gate item's body: measure fresh workers of `backend` while watching the host,
    record, compare."""
    from llorch_harness.perf.measure import measure
    from llorch_harness.pool.catalog import read_catalog

    db = store_for(lab, Path(pool_paths.root))
    policy = busy_policy(lab.settings)
    handles: list[Any] = []

    def spawn(i: int) -> Any:
        handle = factory.spawn(backend, worker_id=factory.default_id(backend, 0, f"perf{i}"))
        handles.append(handle)
        return handle

    gpu = int(getattr(factory, "gpu", 0) or 0)

    def take() -> Attempt:
        window = HostWindow(policy, backend, gpu)
        with window.watching():
            figures = measure(spawn, factory.stop, backend, protocol).figures()
        return Attempt(figures, window.conditions)

    def wait() -> tuple[bool, HostConditions | None, float]:
        return wait_for_quiet(policy, backend, gpu)

    first = take()
    entry = read_catalog(pool_paths).find(factory.model_id)
    revision = entry.metadata.get("revision") if entry is not None else None
    gm = factory.gate_model
    fp = gate_fingerprint(lab, backend, handles[-1], factory.model_id,
                          gm.file_hashes if gm is not None else {},
                          str(revision) if revision else None, protocol)
    given = [first]
    return check_measured(db, run_key(config), fp,
                          lambda: given.pop() if given else take(), wait)


def busy_policy(settings: Any) -> BusyPolicy:
    """--perf-busy-share and --perf-quiet-wait (env, ini) over the defaults."""
    share = getattr(settings, "perf_busy_share", None)
    wait = getattr(settings, "perf_quiet_wait", None)
    return BusyPolicy(cpu_share=float(share) if share else DEFAULT_CPU_SHARE,
                      gpu_share=float(share) if share else DEFAULT_CPU_SHARE,
                      quiet_wait_s=float(wait) if wait is not None else DEFAULT_QUIET_WAIT_S)


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
