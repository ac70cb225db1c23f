"""What a person typed into a gate run, checked once before the first test.

Why: a typo such as `--gate-model tiny-qwn` or `-m gpu` used to cost every test's setup
(28 errors with tracebacks) or a run that silently selected nothing. Each mistake here ends
the run in `pytest_configure` with one line naming the value, a "did you mean" and the
known values, and the exit status of its kind (`llorch_harness.choices.EXIT_CODES`, the
same as the command lines'). `--lab real` with no real worker for any selected backend is
such a mistake too: asking for the real lab and not getting it is not a pass of nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import pytest

from llorch_harness.choices import EXIT_CODES, check_name
from llorch_harness.errors import HarnessError
from llorch_harness.plugin import markexpr as mx
from llorch_harness.plugin.labs import LabDecision

# markers pytest and its plugins define, which a `-m` may name in any run
BUILTIN_MARKERS = ("skip", "skipif", "xfail", "parametrize", "usefixtures", "filterwarnings",
                   "tryfirst", "trylast", "xdist_group", "no_cover")


def marker_names(lines: Iterable[str]) -> list[str]:
    """`name(args): description` ini lines -> the names."""
    out = []
    for line in lines:
        name = line.split(":", 1)[0].split("(", 1)[0].strip()
        if name:
            out.append(name)
    return out


def check_markexpr(markexpr: str | None, registered: Iterable[str]) -> None:
    """Every name of `-m` must be a registered marker (UnknownName "marker" otherwise).
    A text that is no expression at all is left to pytest, which reports it."""
    if not markexpr or not markexpr.strip():
        return
    try:
        mentioned = mx.names(markexpr)
    except mx.ExpressionError:
        return
    known = list(dict.fromkeys(registered))
    offered = [k for k in known if k not in BUILTIN_MARKERS]
    for name in mentioned:
        if name not in known:
            check_name("marker", name, offered, extra_hint=f"in -m {markexpr!r}")


def catalog_ids(decision: LabDecision) -> list[str]:
    """The ids this run's pool knows: the built-in models and its catalog's (when readable)."""
    from llorch_harness.pool.catalog import Catalog, known_models
    from llorch_harness.pool.paths import PoolPaths, resolve_pool_root

    ids = set(known_models())
    if decision.pool_root or decision.lab == "real":
        root = Path(decision.pool_root) if decision.pool_root else resolve_pool_root(None)
        try:
            ids |= {m.id for m in Catalog.load(PoolPaths.at(root).catalog_path).models}
        except HarnessError:
            pass  # an unreadable catalog is the model fixture's error to report
    return sorted(ids)


def check_gate_models(decision: LabDecision) -> None:
    """Every `--gate-model(s)` id must be one the pool can have."""
    known = catalog_ids(decision)
    for model_id in decision.gate_models:
        check_name("model id", model_id, known)


def check_real_lab(decision: LabDecision) -> None:
    """`--lab real` must find a real worker for at least one selected backend."""
    if decision.requested != "real":
        return
    selected = [st for st in decision.backends.values() if st.selected]
    if any(st.usable for st in selected):
        return
    why = "; ".join(st.reason or st.name for st in selected)
    raise HarnessError(f"--lab real: no real worker can run here ({why})",
                       "or leave --lab out for the embedded lab", exit_code=EXIT_CODES["lab"])


def check_typed(decision: LabDecision, markexpr: str | None, registered: Iterable[str]) -> None:
    """All of the above; the first mistake ends the run (exit_on)."""
    try:
        check_markexpr(markexpr, registered)
        check_gate_models(decision)
        check_real_lab(decision)
    except HarnessError as err:
        exit_on(err)


def exit_on(err: HarnessError) -> NoReturn:
    """End the run before any test: one line on stderr, the mistake's exit status."""
    pytest.exit(f"llorch-harness: {err.one_line()}", returncode=err.exit_code)
