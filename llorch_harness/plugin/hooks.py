"""pytest plugin entry point (pytest11). Hooks stay thin; logic lives in plain modules.

labs.py decides the lab and backend states, gate.py rolls results up into the CP3
checklist, report.py renders it, fixtures.py provides the session fixtures.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from llorch_harness import redaction
from llorch_harness.errors import HarnessError
from llorch_harness.gate import checklist as gate
from llorch_harness.plugin import labs
from llorch_harness.plugin import report as rpt
from llorch_harness.plugin.fixtures import (  # noqa: F401  (fixtures are registered by being module attributes)
    LAB_KEY,
    RECORD_KEY,
    catalog,
    downloaded_model,
    gate_backend,
    gate_record,
    hub,
    install_session_marker,
    lab,
    pool_paths,
    reference_runner,
    stop_tracked,
    sweep_dead_sessions,
    sweep_scope,
    worker_factory,
)

WORKERINPUT_KEY = "llorch_lab"
BACKEND_MARKERS = labs.BACKEND_NAMES
_STATE_KEY = pytest.StashKey["GateState"]()
_VERDICT_KEY = pytest.StashKey[labs.ItemVerdict]()

class GateState:
    """Per-run state on this process: the collector (controller), times, the old handler."""

    def __init__(self) -> None:
        self.collector = gate.GateCollector()
        self.started_at = _now()
        self.old_sigterm: Any = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def marker_lines(rootdir: Path) -> list[str]:
    """`name: description` lines from markers.ini next to the rootdir, else the packaged one.

    The repository's markers.ini is a link to the packaged file, so there is one source.
    """
    for candidate in (rootdir / "markers.ini", Path(__file__).parent.parent / "markers.ini"):
        try:
            text = candidate.read_text(encoding="utf-8")
        except OSError:
            continue
        lines = [ln.strip() for ln in text.splitlines()]
        found = [ln for ln in lines if ln and not ln.startswith(("#", ";", "[")) and ":" in ln]
        if found:
            return found
    raise pytest.UsageError("llorch-harness: markers.ini not found (reinstall llorch-harness)")


# --------------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llorch", "llorch-harness CP3 gate")
    for spec in labs.OPTIONS:
        kwargs: dict[str, Any] = {"dest": spec.dest, "default": None,
                                  "help": f"{spec.help} [env {spec.env}, ini {spec.ini}]"}
        if spec.kind == "bool":
            kwargs["action"] = "store_true"
            kwargs["default"] = False
        elif spec.kind == "list":
            kwargs["action"] = "append"
        if spec.metavar:
            kwargs["metavar"] = spec.metavar
        if spec.choices:
            kwargs["choices"] = list(spec.choices)
        group.addoption(spec.flag, **kwargs)
        ini_type = {"bool": "bool", "list": "args"}.get(spec.kind, "string")
        parser.addini(spec.ini, spec.help, type=ini_type,  # type: ignore[arg-type]
                      default=[] if spec.kind == "list" else None)


def _decision(config: pytest.Config) -> labs.LabDecision:
    if _is_xdist_worker(config) and WORKERINPUT_KEY in config.workerinput:  # type: ignore[attr-defined]
        return labs.LabDecision.from_json(config.workerinput[WORKERINPUT_KEY])  # type: ignore[attr-defined]

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
    try:
        validate_model_id(decision.gate_model)
    except HarnessError as err:
        raise pytest.UsageError(f"llorch-harness: --gate-model: {err.one_line()}") from None
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


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    repair_rootdir(early_config)


def repair_rootdir(config: pytest.Config) -> None:
    """Undo the rootdir a plugin option's separate value moved (issue 20 #16).

    pytest picks rootdir and ini file from the command line *before* it loads plugins
    from entry points, so in `--llorch-bin-dir DIR` it cannot know that DIR is a value:
    it takes DIR for a test path, roots the run there, ignores pyproject.toml (testpaths,
    markers, xfail_strict) and collects the harness's own tests/. Here, with every option
    known, the same setup is computed again from the real test paths; when it differs,
    the run is moved back. Nothing changes when --rootdir or -c was given. Should pytest's
    internals change, the user gets one usage error asking for `--option=DIR` instead.
    """
    ns = config.known_args_namespace
    if getattr(ns, "rootdir", None) or getattr(ns, "inifilename", None):
        return
    try:
        from _pytest.config.findpaths import determine_setup

        rootpath, inipath, inicfg, ignored = determine_setup(
            inifile=None, override_ini=ns.override_ini, args=list(ns.file_or_dir),
            rootdir_cmd_arg=None, invocation_dir=config.invocation_params.dir,
        )
    except (ImportError, TypeError, AttributeError, pytest.UsageError):
        return
    if (rootpath, inipath) == (config.rootpath, config.inipath):
        return
    old_cut = str(config.inipath.parent if config.inipath else config.rootpath)
    try:
        config._rootpath = rootpath  # type: ignore[attr-defined]
        config._inipath = inipath  # type: ignore[attr-defined]
        config._inicfg = inicfg  # type: ignore[attr-defined]
        config._ignored_config_files = ignored  # type: ignore[attr-defined]
        config._inicache.clear()  # type: ignore[attr-defined]
        config._parser.extra_info["rootdir"] = str(rootpath)  # type: ignore[attr-defined]
        config._parser.extra_info["inifile"] = str(inipath)  # type: ignore[attr-defined]
    except AttributeError:
        raise pytest.UsageError(
            f"llorch-harness: pytest took an option's value for a test path and chose rootdir "
            f"{config.rootpath}; write options with their value joined, e.g. "
            "--llorch-bin-dir=DIR") from None
    if ns.confcutdir == old_cut:
        ns.confcutdir = str(inipath.parent if inipath else rootpath)
    added = [str(p) for p in config.getini("pythonpath")]
    for path in reversed(added):
        sys.path.insert(0, path)

    def remove_added() -> None:
        for path in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(path)

    config.add_cleanup(remove_added)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for line in marker_lines(Path(str(config.rootpath))):
        config.addinivalue_line("markers", line)
    decision = _decision(config)
    if not _is_xdist_worker(config):
        check_decision(decision)
    config.stash[LAB_KEY] = decision
    state = GateState()
    config.stash[_STATE_KEY] = state
    if config.getoption("dist", "no") == "load":
        # device groups must stay on one worker: loadgroup honours xdist_group, load does not
        config.option.dist = "loadgroup"
    _add_harness_metadata(config, decision)
    if not _is_xdist_worker(config):
        install_session_marker()
        with contextlib.suppress(Exception):
            # only workers of the pool roots this session may touch (fixtures.sweep_scope)
            swept = sweep_dead_sessions(sweep_scope(decision, config.getoption("basetemp", None)))
            if swept:
                decision.notes.append(f"reaped {len(swept)} worker(s) of dead earlier sessions")
    _install_sigterm(state)
    config.pluginmanager.register(GatePlugin(config, state), "llorch-gate")


def pytest_unconfigure(config: pytest.Config) -> None:
    stop_tracked()
    state = config.stash.get(_STATE_KEY, None)
    if state is not None and state.old_sigterm is not None:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, state.old_sigterm)


def _install_sigterm(state: GateState) -> None:
    """SIGTERM becomes KeyboardInterrupt, so fixture teardown stops the workers we started."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    state.old_sigterm = signal.signal(signal.SIGTERM, on_term)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: every worker gets the controller's decision, not its own."""
    node.workerinput[WORKERINPUT_KEY] = node.config.stash[LAB_KEY].to_json()


def _lab_dict(config: pytest.Config) -> dict[str, Any]:
    decision = config.stash[LAB_KEY]
    data = decision.to_json()
    data["banner"] = decision.banner()
    return data


def _add_harness_metadata(config: pytest.Config, decision: labs.LabDecision) -> None:
    with contextlib.suppress(ImportError, KeyError):
        from pytest_metadata.plugin import metadata_key

        rpt.filter_metadata(config.stash[metadata_key], _lab_dict(config))


@pytest.hookimpl(optionalhook=True)
def pytest_metadata(metadata: dict[str, Any], config: pytest.Config) -> None:
    """Allow-list on every process (xdist workers merge theirs back into the report)."""
    lab_data = _lab_dict(config) if LAB_KEY in config.stash else None
    rpt.filter_metadata(metadata, lab_data)


def pytest_report_header(config: pytest.Config) -> list[str]:
    decision = config.stash[LAB_KEY]
    lines = [f"llorch-harness {decision.harness_version}: {decision.banner()}",
             f"  gate model {decision.gate_model}; pool {decision.hostname}; "
             f"lab requested {decision.requested}"]
    for name in labs.BACKEND_ORDER:
        st = decision.backends[name]
        mark = "usable" if st.usable else f"not usable: {st.reason}"
        flags = "".join([" (selected)" if st.selected else "", " (required)" if st.required else "",
                         " (--backend-available)" if st.overridden else ""])
        lines.append(f"  {name}{flags}: {mark}")
    lines += [f"  note: {n}" for n in decision.notes]
    return [redaction.redact(line) for line in lines]


# --------------------------------------------------------------------------- collection


def _backend_markers(item: pytest.Item) -> list[str]:
    return [b for b in BACKEND_MARKERS if item.get_closest_marker(b) is not None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Gate properties, backend gating and device groups; deterministic on every worker."""
    decision = config.stash[LAB_KEY]
    errors = []
    for item in items:
        marked = _backend_markers(item)
        verdict = labs.item_verdict(decision, marked)
        item.stash[_VERDICT_KEY] = verdict
        item._llorch_backend = verdict.backend if verdict.action == "run" else None  # type: ignore[attr-defined]
        gm = item.get_closest_marker("gate")
        if gm is not None:
            try:
                section, text = gate.gate_marker_args(gm.args, gm.kwargs)
            except ValueError as exc:
                errors.append(f"{item.nodeid}: {exc}")
                continue
            scope = "backend" if len(marked) == 1 else "pool"
            item.user_properties += [
                ("gate_section", section), ("gate_item", text),
                ("gate_backend", verdict.backend or ""), ("gate_scope", scope),
            ]
        if verdict.action == "skip":
            item.add_marker(pytest.mark.skip(reason=verdict.reason))
        elif verdict.action == "run" and verdict.backend and "worker_factory" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group(labs.device_group(verdict.backend)))
    if errors:
        raise pytest.UsageError("invalid gate markers:\n  " + "\n  ".join(errors))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    verdict = item.stash.get(_VERDICT_KEY, None)
    if verdict is not None and verdict.action == "fail":
        pytest.fail(verdict.reason or "required backend missing", pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Extras, then the one redaction over the whole report. tryfirst makes this wrapper the
    outermost, so it runs after every other plugin added its part and before the terminal,
    JUnit XML, pytest-html, xdist and the gate JSON see the report."""
    rep = yield
    record = item.stash.get(RECORD_KEY, None)
    if record and (rep.when == "call" or rep.failed):
        rep.extras = list(getattr(rep, "extras", [])) + rpt.build_extras(record, rep.failed)
    rpt.redact_report(rep)
    return rep


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """Collection errors are failure texts too (a conftest can print the environment)."""
    rep = yield
    rpt.redact_report(rep)
    return rep


@pytest.hookimpl(tryfirst=True)
def pytest_warning_recorded(warning_message: Any) -> None:
    """The warnings summary quotes the message: redact it before the terminal keeps it."""
    with contextlib.suppress(Exception):
        text = str(warning_message.message)
        clean = redaction.redact(text)
        if clean != text:
            warning_message.message = warning_message.category(clean)


# --------------------------------------------------------------------------- results


class GatePlugin:
    """Registered per config (so nested pytester runs keep their own state): roll-up, JSON,
    terminal checklist and the pytest-html summary."""

    def __init__(self, config: pytest.Config, state: GateState) -> None:
        self.config = config
        self.state = state

    @property
    def decision(self) -> labs.LabDecision:
        return self.config.stash[LAB_KEY]

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.state.started_at = _now()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        self.state.collector.add_report(
            report.nodeid, report.when, report.outcome, props, report.longrepr,
            report.duration, wasxfail=hasattr(report, "wasxfail"),
        )

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        stop_tracked()
        path = self.decision.settings.gate_json
        if _is_xdist_worker(self.config) or not path:
            return
        doc = gate.gate_document(self.state.collector, _lab_dict(self.config),
                                 started_at=self.state.started_at, finished_at=_now(),
                                 exitstatus=int(exitstatus))
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

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int) -> None:
        collector = self.state.collector
        if _is_xdist_worker(self.config) or not collector.results:
            return
        terminalreporter.section("CP3 gate checklist")
        terminalreporter.write_line(self.decision.banner())
        for line in rpt.terminal_checklist(collector.item_rollup(), collector.verdict()):
            terminalreporter.write_line(line)

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_report_title(self, report: Any) -> None:
        report.title = rpt.report_title(self.decision.hostname, self.decision.lab)

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list[str], summary: list[str],
                                    postfix: list[str], session: pytest.Session) -> None:
        prefix.append(rpt.banner_html(self.decision.banner(), self.decision.lab))
        collector = self.state.collector
        prefix.append(rpt.checklist_html(collector.item_rollup(), collector.verdict()))
