"""A gate run's results: the CP3 roll-up, the gate JSON, the terminal checklist, the HTML
summary. Registered per config by session.activate (nested pytester runs keep their own)."""

from __future__ import annotations

import contextlib
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from llorch_harness.errors import HarnessError
from llorch_harness.gate import checklist as gate
from llorch_harness.plugin import firstscreen, labs, memory
from llorch_harness.plugin import report as rpt
from llorch_harness.plugin.activation import is_xdist_worker
from llorch_harness.plugin.fixtures import LAB_KEY, stop_tracked


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def lab_dict(config: pytest.Config) -> dict[str, Any]:
    """The decision as the reports show it (JSON, with the banner)."""
    decision = config.stash[LAB_KEY]
    data = decision.to_json()
    data["banner"] = decision.banner()
    return data


class GateResults:
    """Roll-up on this process; JSON, terminal checklist and HTML summary on the controller."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.collector = gate.GateCollector()
        self.started_at = now()
        self.health: Any = None  # devicehealth.session.SessionHealth on the controller
        self.memory: list[dict[str, Any]] = []  # every worker life's memory (controller)
        firstscreen.make_self_contained(config)  # a report stays true after later runs

    @property
    def decision(self) -> labs.LabDecision:
        return self.config.stash[LAB_KEY]

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.started_at = now()
        gpus = [n for n, st in self.decision.backends.items() if st.usable and st.selected]
        if not is_xdist_worker(self.config) and any(g in ("cuda", "metal") for g in gpus):
            from llorch_harness.pool.devicehealth.session import SessionHealth

            self.health = SessionHealth.start(gpus)  # before the first test (issue 15)
            self._health_rows()
        self._escape_environment()  # before pytest-html reads the table (trylast)

    def _escape_environment(self) -> None:
        """On the controller only: an xdist worker sends its metadata back over execnet,
        which carries plain strings (the controller escapes them after the merge)."""
        if is_xdist_worker(self.config):
            return
        with contextlib.suppress(ImportError, KeyError):
            from pytest_metadata.plugin import metadata_key

            rpt.escape_environment(self.config.stash[metadata_key])

    def _health_rows(self) -> None:
        """The devices' health in the report's environment (controller only)."""
        try:
            from pytest_metadata.plugin import metadata_key
        except ImportError:
            return
        if metadata_key in self.config.stash:
            rows = self.health.metadata_rows(rpt.HARNESS_PREFIX)
            self.config.stash[metadata_key].update(
                {k: labs.redact(v) for k, v in rows.items()})

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist controller: its workers write their worker lives' memory where it reads."""
        node.workerinput[memory.WORKERINPUT_KEY] = str(memory.ledger(self.config).directory)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        self.collector.add_report(
            report.nodeid, report.when, report.outcome, props, report.longrepr,
            report.duration, wasxfail=hasattr(report, "wasxfail"),
        )

    @pytest.hookimpl(tryfirst=True)  # before pytest-html writes the environment table
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        stop_tracked()
        if self.health is not None:
            self.health.finish()
            self._health_rows()
        perf = None if is_xdist_worker(self.config) else self._perf_finish()
        if not is_xdist_worker(self.config):
            self.memory = memory.collect(self.config)
        path = self.decision.settings.gate_json
        if is_xdist_worker(self.config) or not path:
            return
        doc = gate.gate_document(self.collector, lab_dict(self.config),
                                 started_at=self.started_at, finished_at=now(),
                                 exitstatus=int(exitstatus))
        if perf is not None:
            doc["performance"] = perf
        if self.health is not None:
            doc["device_health"] = self.health.to_json()
        doc["memory"] = self.memory
        try:  # atomic, and one line instead of an INTERNALERROR traceback on failure
            gate.write_gate_json(path, labs.redact(gate.dumps(doc)))
        except HarnessError as err:
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"error: {err.one_line()}", red=True)
            else:
                print(f"error: {err.one_line()}", file=sys.stderr)
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _perf_finish(self) -> list[dict[str, Any]] | None:
        """The run's gate verdict onto its performance records, and the records with their
        trends for the gate JSON; nothing is imported when no record was made."""
        from llorch_harness.perf import runkey

        if not runkey.ran_perf(self.config, self.collector):
            return None
        from llorch_harness.perf import session as perf

        try:
            return perf.finish(self.config, self.decision, self.collector)
        except HarnessError as err:
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            line = f"error: performance records: {err.one_line()}"
            if reporter is not None:
                reporter.write_line(line, red=True)
            else:
                print(line, file=sys.stderr)
            return None

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter,
                                exitstatus: int) -> None:
        if is_xdist_worker(self.config) or not self.collector.results:
            return
        terminalreporter.section("CP3 gate checklist")
        terminalreporter.write_line(self.decision.banner())
        for line in rpt.terminal_checklist(self.collector.item_rollup(),
                                           self.collector.verdict(),
                                           self.collector.verdict_line()):
            terminalreporter.write_line(line)
        for line in rpt.lab_lines(*self._lab()):  # the lab's failures: a section of their own
            terminalreporter.write_line(line)
        runs = self.collector.model_runs(lab_dict(self.config))
        if len(self.decision.gate_models) > 1 and runs:
            terminalreporter.write_line(f"Models on this pool (CP4, {len(runs)} runs):")
            for line in rpt.model_run_lines(runs):
                terminalreporter.write_line(line)

    def _lab(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        from llorch_harness.gate import labcause

        results = self.collector.results.values()
        return labcause.lab_failures(results), labcause.retries(results)

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_html(self, report: pytest.TestReport,
                                       data: list[str]) -> None:
        firstscreen.clean_log(report, data)  # a skip as its sentence, not a Python tuple

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_report_title(self, report: Any) -> None:
        report.title = rpt.report_title(self.decision.hostname, self.decision.lab)

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list[str], summary: list[str],
                                    postfix: list[str], session: pytest.Session) -> None:
        self._escape_environment()  # again: the workers' merged rows, the health rows
        collector = self.collector
        here = [n for n, st in self.decision.backends.items() if st.usable]
        prefix.append(firstscreen.FIRST_SCREEN_CSS)  # the verdict first, then the banner
        prefix.append(firstscreen.verdict_html(collector.item_rollup(), collector.verdict(),
                                               collector.verdict_line(), here))
        prefix.append(rpt.banner_html(self.decision.banner(), self.decision.lab))
        prefix.append(rpt.checklist_html(collector.item_rollup(), collector.verdict(),
                                         collector.verdict_line()))
        lab = rpt.lab_html(*self._lab())
        if lab:
            prefix.append(lab)
        runs = collector.model_runs(lab_dict(self.config))
        if runs:
            prefix.append(rpt.model_runs_html(runs))
        if self.memory:
            prefix.append(memory.report_html(self.memory))
        from llorch_harness.perf import runkey

        if runkey.ran_perf(self.config, collector):
            from llorch_harness.perf import session as perf

            section = perf.report_html(self.config, self.decision, collector)
            if section:
                prefix.append(section)
