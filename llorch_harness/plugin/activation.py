"""When the gate acts: the rule that keeps an installed harness out of other pytest runs.

Why a rule at all: the plugin is installed through an entry point, so it loads into every
pytest run in the environment. Like pytest-xdist (which registers its DSession only in
distribution mode), it registers options and markers always and everything else (the lab
decision, hardware probes, the process sweep, the SIGTERM handler, the `--dist` rewrite,
the banner, report redaction, the fixtures) only in a gate run. The decision must be made
in `pytest_configure`: the banner is printed and xdist's scheduler is chosen before
anything is collected. A run is a gate run when (the first that holds is the reason):

1. this is an xdist worker of a gate run (its controller's decision came with it);
2. a gate option is given: on the command line, in its environment variable or in its
   ini key (the OptionSpec table of options.py);
3. a conftest.py loaded before collection declares `llorch_gate_suite = True`; pytest
   loads the conftest.py of the paths on the command line (or of `testpaths`) and of
   their parent directories before it configures, so `pytest`, `pytest -m cuda` and
   `pytest tests_hw/test_x.py` in a checkout all find tests_hw/conftest.py.

Tests marked `gate` collected in any other run are a usage error naming the fix.
Only the standard library and pytest are imported here.
"""

from __future__ import annotations

import os
import re
import shlex
import types
from collections.abc import Mapping
from pathlib import Path

import pytest

from llorch_harness.plugin import options

WORKERINPUT_KEY = "llorch_lab"
GATE_SUITE_ATTR = "llorch_gate_suite"


def is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _ini_value(config: pytest.Config, name: str) -> object:
    try:
        return config.getini(name)
    except ValueError:
        return None


def option_given(config: pytest.Config, spec: options.OptionSpec,
                 env: Mapping[str, str]) -> str | None:
    """Where a gate option is set (`--lab`, `$LLORCH_LAB`, `ini llorch_lab`), else None."""
    if config.getoption(spec.dest, None) not in (None, [], False):
        return spec.flag
    if env.get(spec.env, "").strip():
        return f"${spec.env}"
    if _ini_value(config, spec.ini) not in (None, "", []):
        return f"ini {spec.ini}"
    return None


def gate_suite_conftest(config: pytest.Config) -> str | None:
    """The file of a loaded conftest that declares itself the conftest of a gate suite."""
    for plugin in config.pluginmanager.get_plugins():
        if isinstance(plugin, types.ModuleType) and getattr(plugin, GATE_SUITE_ATTR, None) is True:
            return str(getattr(plugin, "__file__", None) or plugin.__name__)
    return None


def activation_reason(config: pytest.Config, env: Mapping[str, str] | None = None) -> str | None:
    """Why this run is a gate run (see the module docstring), or None: leave it alone."""
    if is_xdist_worker(config):
        workerinput = getattr(config, "workerinput", {})
        return "xdist worker of a gate run" if WORKERINPUT_KEY in workerinput else None
    env = os.environ if env is None else env
    for spec in options.OPTIONS:
        where = option_given(config, spec, env)
        if where is not None:
            return f"gate option {where}"
    suite = gate_suite_conftest(config)
    if suite is not None:
        return f"gate suite {suite}"
    return None


def refuse_stray_gate_items(items: list[pytest.Item]) -> None:
    """Gate tests outside a gate run would fail on missing fixtures: say why, once."""
    stray = [item.nodeid for item in items if item.get_closest_marker("gate") is not None]
    if stray:
        raise pytest.UsageError(
            f"llorch-harness: {len(stray)} test(s) marked gate (first: {stray[0]}) were "
            f"collected, but this is not a gate run: put `{GATE_SUITE_ATTR} = True` in the "
            "suite's conftest.py, or pass a gate option such as --lab auto")


GATE_MARKERS = ("cpu", "cuda", "metal")  # a -m naming one of these asks for the gate


def gate_tests_dir() -> Path | None:
    """tests_hw of the checkout this harness is installed from (editable installs), else
    None: the gate's tests are not part of the installed package."""
    found = Path(__file__).resolve().parents[2] / "tests_hw"
    return found if (found / "conftest.py").is_file() else None


def no_tests_hint(config: pytest.Config, rootdir: Path) -> str | None:
    """Why `pytest -m cpu` found nothing here, and the command that runs the gate: for a
    run that is not a gate run, collected nothing and named a backend marker."""
    markexpr = str(config.getoption("markexpr", "") or "")
    if not any(re.search(rf"\b{name}\b", markexpr) for name in GATE_MARKERS):
        return None
    tests = gate_tests_dir()
    is_pool = (rootdir / ".test-models").is_dir() or (rootdir / ".runtime").is_dir()
    root = f" --pool-root={shlex.quote(str(rootdir))}" if is_pool else ""
    where = (f"run: pytest -m {shlex.quote(markexpr)} {shlex.quote(str(tests))}{root}"
             if tests is not None else
             "run pytest from a llorch-harness checkout (its tests_hw/ holds the gate; they "
             "are not installed with the package)")
    return (f"llorch-harness: no gate tests in {rootdir} (the gate's tests are not here); "
            f"{where}")
