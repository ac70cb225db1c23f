"""The gate run: what the plugin does once activation.py says a run is a gate run.

Why a separate object: like pytest-xdist's DSession, the hooks that change a run (the lab
decision and its banner, backend gating, device groups, report redaction, the fixtures)
are registered only for gate runs, so other pytest runs in the same environment neither
import this module nor see any of it. labs.py decides, gate/checklist.py rolls results
up, report.py renders, fixtures.py provides the fixtures, results.py writes the results.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import warnings
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from llorch_harness import redaction
from llorch_harness.errors import HarnessError
from llorch_harness.gate import checklist as gate
from llorch_harness.plugin import (
    fixtures,
    labs,
    models,
    results,
    rootcheck,
    sweep,
    typed,
    xdistgroups,
)
from llorch_harness.plugin import report as rpt
from llorch_harness.plugin.activation import WORKERINPUT_KEY, is_xdist_worker
from llorch_harness.plugin.fixtures import BACKEND_KEY, LAB_KEY, RECORD_KEY
from llorch_harness.plugin.results import lab_dict
from llorch_harness.pool import leaseholders
from llorch_harness.safetext import term_text

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

    SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

_VERDICT_KEY = pytest.StashKey[labs.ItemVerdict]()
# tests that start workers: they stay on one xdist worker per device (xdist_group)
_DEVICE_FIXTURES = ("worker_factory", "model_under_test")


def activate(config: pytest.Config, reason: str) -> None:
    """Make this run a gate run: decide the lab, prepare the process, register the hooks."""
    if not is_xdist_worker(config):
        moved = rootcheck.moved_rootdir(config)
        if moved is not None:
            raise pytest.UsageError(f"llorch-harness: {moved}")
    decision = _decision(config)
    if not is_xdist_worker(config):
        check_decision(decision)
        typed.check_typed(decision, config.getoption("markexpr", None),
                          typed.marker_names(config.getini("markers")))
    config.stash[LAB_KEY] = decision
    if config.getoption("dist", "no") == "load":
        # device groups must stay on one worker: loadgroup honours xdist_group, load does not
        config.option.dist = "loadgroup"
    _add_harness_metadata(config)
    if not is_xdist_worker(config):
        sweep.install_session_marker()
        with contextlib.suppress(Exception):
            # only workers of the pool roots this session may touch (sweep.sweep_scope)
            scope = sweep.sweep_scope(decision, config.getoption("basetemp", None))
            swept = sweep.sweep_dead_sessions(scope)
            if swept:
                decision.notes.append(f"reaped {len(swept)} worker(s) of dead earlier sessions")
    leaseholders.start_run()  # the session's processes share the devices it leases
    gate_session = GateSession(config, reason)
    gate_session.install_sigterm()
    config.pluginmanager.register(fixtures, "llorch-gate-fixtures")
    config.pluginmanager.register(gate_session, "llorch-gate-session")
    config.pluginmanager.register(results.GateResults(config), "llorch-gate-results")


def _decision(config: pytest.Config) -> labs.LabDecision:
    workerinput = getattr(config, "workerinput", {})
    if WORKERINPUT_KEY in workerinput:
        return labs.LabDecision.from_json(workerinput[WORKERINPUT_KEY])

    def ini(name: str) -> Any:
        try:
            return config.getini(name)
        except ValueError:
            return None

    try:
        settings = labs.resolve_settings(
            lambda dest: config.getoption(dest, None), ini, os.environ,
        )
        return labs.decide(settings, markexpr=config.getoption("markexpr", None))
    except labs.OptionError as exc:
        raise pytest.UsageError(f"llorch-harness: {exc}") from None
    except HarnessError as err:  # a mistyped name (choices.UnknownName): its own status
        typed.exit_on(err)


def check_decision(decision: labs.LabDecision) -> None:
    """Values that would fail every test's setup fail once, as one usage error (exit 4).

    Issue 20 #16: `--gate-model ../../etc` or a `--pool-root` naming a file gave 22 setup
    errors with tracebacks; an unwritable `--gate-json` failed only after the whole run.
    """
    from llorch_harness.pool.paths import resolve_pool_root, validate_model_id

    timeout = decision.settings.ready_timeout
    if not (math.isfinite(timeout) and timeout > 0):  # nan would never expire
        raise pytest.UsageError(f"llorch-harness: --ready-timeout must be a positive finite "
                                f"number of seconds, got {timeout!r}")
    for model_id in decision.gate_models:
        try:
            validate_model_id(model_id)
        except HarnessError as err:
            flag = "--gate-models" if len(decision.gate_models) > 1 else "--gate-model"
            raise pytest.UsageError(f"llorch-harness: {flag}: {err.one_line()}") from None
    if decision.pool_root:
        root = Path(decision.pool_root)
        try:
            resolve_pool_root(root)
            existing = next((p for p in (root, *root.parents) if p.exists()), None)
            if existing is not None and not existing.is_dir():
                raise HarnessError(f"pool root {root}: {existing} is not a directory",
                                   "pass --pool-root DIR")
        except HarnessError as err:
            raise pytest.UsageError(f"llorch-harness: --pool-root: {err.one_line()}") from None
    if decision.settings.gate_json:
        try:
            gate.check_gate_json_target(decision.settings.gate_json)
        except HarnessError as err:
            raise pytest.UsageError(f"llorch-harness: {err.one_line()}") from None
    if decision.settings.results_db:
        from llorch_harness.perf.store import check_target

        try:
            check_target(Path(decision.settings.results_db))
        except HarnessError as err:
            raise pytest.UsageError(f"llorch-harness: --results-db: {err.one_line()}") \
                from None


def _add_harness_metadata(config: pytest.Config) -> None:
    with contextlib.suppress(ImportError, KeyError):
        from pytest_metadata.plugin import metadata_key

        rpt.filter_metadata(config.stash[metadata_key], lab_dict(config))


def header_lines(decision: labs.LabDecision) -> list[str]:
    lines = [f"llorch-harness {decision.harness_version}: {decision.banner()}",
             f"  gate model {decision.gate_model}; pool {decision.hostname}; "
             f"lab requested {decision.requested}"]
    if len(decision.gate_models) > 1:
        lines.append(f"  gate models (CP4, in this order): {', '.join(decision.gate_models)}")
    for name in labs.BACKEND_ORDER:
        st = decision.backends[name]
        mark = "usable" if st.usable else f"not usable: {st.reason}"
        flags = "".join([" (selected)" if st.selected else "", " (required)" if st.required else "",
                         " (--backend-available)" if st.overridden else ""])
        lines.append(f"  {name}{flags}: {mark}")
    lines += [f"  note: {n}" for n in decision.notes]
    return [term_text(redaction.redact(line)) for line in lines]  # paths, reasons: no ESC


def apply_verdict(decision: labs.LabDecision, item: pytest.Item) -> str | None:
    """Gate properties, backend gating and the device group of one item; an error or None."""
    marked = [b for b in labs.BACKEND_NAMES if item.get_closest_marker(b) is not None]
    verdict = labs.item_verdict(decision, marked)
    item.stash[_VERDICT_KEY] = verdict
    item.stash[BACKEND_KEY] = verdict.backend if verdict.action == "run" else None
    gm = item.get_closest_marker("gate")
    if gm is not None:
        try:
            section, text = gate.gate_marker_args(gm.args, gm.kwargs)
        except ValueError as exc:
            return f"{item.nodeid}: {exc}"
        scope = "backend" if len(marked) == 1 else "pool"
        item.user_properties += [
            ("gate_section", section), ("gate_item", text),
            ("gate_backend", verdict.backend or ""), ("gate_scope", scope),
        ]
        model = models.item_model(item, decision.gate_model)
        if model is not None:
            item.user_properties.append((models.MODEL_PROPERTY, model))
    if verdict.action == "skip":
        item.add_marker(pytest.mark.skip(reason=verdict.reason or "backend not usable"))
    elif (verdict.action == "run" and verdict.backend
          and set(_DEVICE_FIXTURES) & set(getattr(item, "fixturenames", ()))):
        item.add_marker(pytest.mark.xdist_group(labs.device_group(verdict.backend)))
    return None


class GateSession:
    """The hooks of a gate run, registered per config (nested pytester runs keep theirs)."""

    def __init__(self, config: pytest.Config, reason: str) -> None:
        self.config = config
        self.reason = reason
        self.old_sigterm: SignalHandler = None
        self._groups_dir: Path | None = None

    @property
    def decision(self) -> labs.LabDecision:
        return self.config.stash[LAB_KEY]

    def install_sigterm(self) -> None:
        """SIGTERM becomes KeyboardInterrupt, so fixture teardown stops the workers we started."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def on_term(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt("SIGTERM")

        self.old_sigterm = signal.signal(signal.SIGTERM, on_term)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        fixtures.stop_tracked()
        if self._groups_dir is not None:
            import shutil

            shutil.rmtree(self._groups_dir, ignore_errors=True)
        if self.old_sigterm is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self.old_sigterm)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist controller: every worker gets the controller's decision, not its own,
        and the run's key for performance records (llorch_harness.perf.runkey)."""
        from llorch_harness.perf import runkey

        node.workerinput[WORKERINPUT_KEY] = self.decision.to_json()
        node.workerinput[xdistgroups.WORKERINPUT_KEY] = str(self.groups_dir())
        node.workerinput[runkey.WORKERINPUT_KEY] = runkey.run_key(self.config)

    def groups_dir(self) -> Path:
        """Where xdist workers write their device groups (made once, removed at the end)."""
        if self._groups_dir is None:
            import tempfile

            self._groups_dir = Path(tempfile.mkdtemp(prefix="llorch-groups-"))
        return self._groups_dir

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """loadgroup with the device groups the workers wrote (xdistgroups: why)."""
        if config.getoption("dist", "no") != "loadgroup":
            return None
        return xdistgroups.make_scheduler(config, log, self.groups_dir())

    @pytest.hookimpl(optionalhook=True)
    def pytest_metadata(self, metadata: dict[str, Any], config: pytest.Config) -> None:
        """Allow-list on every process (xdist workers merge theirs back into the report)."""
        rpt.filter_metadata(metadata, lab_dict(config) if LAB_KEY in config.stash else None)

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return header_lines(self.decision) + fixtures.where_lines(config, self.decision)

    def pytest_collection_modifyitems(self, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        """Deterministic on every xdist worker: the decision is the controller's. Model tests
        run model by model after the rest (models.order_by_model)."""
        errors = [e for e in (apply_verdict(self.decision, item) for item in items) if e]
        if errors:
            raise pytest.UsageError("invalid gate markers:\n  " + "\n  ".join(errors))
        models.order_by_model(items, self.decision.gate_models)  # model by model, last
        groups_dir = getattr(config, "workerinput", {}).get(xdistgroups.WORKERINPUT_KEY)
        if groups_dir:  # the controller schedules by these (xdistgroups: why not xdist's)
            xdistgroups.write_groups(groups_dir, xdistgroups.worker_name(),
                                     xdistgroups.groups_of(items))

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        models.parametrize_models(metafunc, self.decision.gate_models)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """What this process saw of each model test, for the CP4 items of its model."""
        props = dict(report.user_properties)
        model, backend = props.get(models.MODEL_PROPERTY), props.get("gate_backend")
        if model and backend:
            models.note_outcome(str(model), str(backend), models.test_name(report.nodeid),
                                report.when, report.outcome)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        verdict = item.stash.get(_VERDICT_KEY, None)
        if verdict is not None and verdict.action == "fail":
            pytest.fail(verdict.reason or "required backend missing", pytrace=False)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None],
                                  ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Extras, then the one redaction over the whole report. tryfirst makes this wrapper
        the outermost, so it runs after every other plugin added its part and before the
        terminal, JUnit XML, pytest-html, xdist and the gate JSON see the report."""
        rep = yield
        from llorch_harness import labretry
        from llorch_harness.gate import labcause

        # a failure whose cause is the lab's (hub, disk, ssh, lease, device tool) says so,
        # and the retries of transient causes made meanwhile go with the report
        rep.user_properties += labcause.report_properties(
            call.excinfo.value if call.excinfo is not None and rep.failed else None,
            labretry.drain())
        record = item.stash.get(RECORD_KEY, None)
        if record and (rep.when == "call" or rep.failed):
            extras = list(getattr(rep, "extras", []))
            rep.extras = extras + rpt.build_extras(record, rep.failed)  # type: ignore[attr-defined]
        rpt.redact_report(rep)
        return rep

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_make_collect_report(self, collector: pytest.Collector,
                                   ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
        """Collection errors are failure texts too (a conftest can print the environment)."""
        rep = yield
        rpt.redact_report(rep)
        return rep

    @pytest.hookimpl(tryfirst=True)
    def pytest_warning_recorded(self, warning_message: warnings.WarningMessage) -> None:
        """The warnings summary quotes the message: redact it before the terminal keeps it."""
        with contextlib.suppress(Exception):
            text = str(warning_message.message)
            clean = redaction.redact(text)
            if clean != text:
                warning_message.message = warning_message.category(clean)
