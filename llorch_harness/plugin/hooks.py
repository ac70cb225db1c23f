"""pytest plugin entry point (pytest11): options and markers always, the gate only when asked.

Installed through an entry point, this module loads into every pytest run of the
environment, so it stays thin: it registers the gate's options and markers, and only a
gate run (activation.py says which runs are) imports and registers the gate itself
(session.py: lab decision, banner, backend gating, fixtures, results). Other runs print
what they print with `-p no:llorch_harness` and pay for nothing heavier than options.py's
option table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

from llorch_harness.plugin import activation, options

_ACTIVE_KEY = pytest.StashKey[str]()  # why this run is a gate run (absent: it is not)
IniType = Literal["string", "args", "bool"]


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


def _ini_type(spec: options.OptionSpec) -> IniType:
    return "bool" if spec.kind == "bool" else "args" if spec.kind == "list" else "string"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llorch", "llorch-harness CP3 gate")
    for spec in options.OPTIONS:
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
        parser.addini(spec.ini, spec.help, type=_ini_type(spec),
                      default=[] if spec.kind == "list" else None)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Markers always (so --strict-markers knows them); the gate only in a gate run.

    tryfirst: the `--dist load` -> `loadgroup` rewrite must precede xdist's configure.
    """
    for line in marker_lines(Path(str(config.rootpath))):
        config.addinivalue_line("markers", line)
    reason = activation.activation_reason(config)
    if reason is None:
        return
    from llorch_harness.plugin import session  # the heavy part, imported for gate runs only

    session.activate(config, reason)
    config.stash[_ACTIVE_KEY] = reason


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Outside a gate run, gate tests still selected (after -m and -k) are a usage error."""
    if _ACTIVE_KEY not in config.stash:
        activation.refuse_stray_gate_items(items)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """`pytest -m cpu` outside the checkout (in a pool directory) collects nothing: say where
    the gate's tests are and the command that runs them (issue 28 item 9)."""
    if _ACTIVE_KEY in config.stash or exitstatus != pytest.ExitCode.NO_TESTS_COLLECTED:
        return
    hint = activation.no_tests_hint(config, Path(str(config.invocation_params.dir)))
    if hint is not None:
        terminalreporter.write_line(hint, yellow=True)
