"""The models under test (CP4): every `--gate-models` model with its own download, worker
factory and reference, and one model's workers on a device at a time.

Why a registry beside the fixtures: the inference checks run once per model and backend,
each model needs its files, its workers and an independent reference on those files, and
the first model is the CP3 gate model whose session fixtures (`downloaded_model`,
`worker_factory`, `reference_runner`) the rest of the gate already uses. A worker of one
model is stopped before another model's worker starts on the same device, so a 7B model
never shares a card with the previous one; the per-model items are ordered model by model
(`order_by_model`), so each model's live worker is spawned once (plus the restart check).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from llorch_harness.checks.agreement import ReferenceRunner
    from llorch_harness.checks.workerclient import StreamResult
    from llorch_harness.plugin.fixtures import GateModel, WorkerFactory

# The argument a model-parametrized gate test takes (its value: a catalog model id).
MODEL_ARG = "gate_model_id"
MODEL_PROPERTY = "gate_model"  # the user property the gate JSON reads


@dataclass
class ModelUnderTest:
    """One model of the run: its verified files, its workers and its reference."""

    model: GateModel
    factory: WorkerFactory
    reference: ReferenceRunner | None

    @property
    def model_id(self) -> str:
        return self.model.model_id


@dataclass
class ModelRegistry:
    """Each model prepared on first use, in this process (xdist workers have their own)."""

    primary: ModelUnderTest
    prepare: Callable[[str], ModelUnderTest]
    references: dict[str, Any] = field(default_factory=dict)  # id -> runner, None or error
    models: dict[str, ModelUnderTest] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.models.setdefault(self.primary.model_id, self.primary)
        self.primary.factory.peers = self.factories

    @property
    def factories(self) -> list[WorkerFactory]:
        return [m.factory for m in self.models.values()]

    def get(self, model_id: str) -> ModelUnderTest:
        found = self.models.get(model_id)
        if found is None:
            found = self.prepare(model_id)
            self.models[model_id] = found
            for m in self.models.values():  # every factory sees every other one
                m.factory.peers = self.factories
        return found

    def stop_all(self) -> None:
        """Every model's workers (the primary's are its session fixture's to stop)."""
        for m in self.models.values():
            if m is not self.primary:
                with contextlib.suppress(Exception):
                    m.factory.stop_all()


# --------------------------------------------------------------------------- collection


def parametrize_models(metafunc: pytest.Metafunc, gate_models: list[str]) -> None:
    """A test taking `gate_model_id` runs once per model; with one model its ids stay the
    CP3 ones (the fixture of the same name gives the gate model)."""
    if MODEL_ARG in metafunc.fixturenames and len(gate_models) > 1:
        metafunc.parametrize(MODEL_ARG, gate_models, ids=gate_models)


def item_model(item: pytest.Item, primary: str) -> str | None:
    """The model a gate test runs on: its parameter, the gate model for an unparametrized
    model test, None for a test that is not about one model."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and MODEL_ARG in callspec.params:
        return str(callspec.params[MODEL_ARG])
    return primary if MODEL_ARG in getattr(item, "fixturenames", ()) else None


def order_by_model(items: list[pytest.Item], gate_models: list[str]) -> None:
    """Every test that is not about one model first, in collection order; then each model's
    tests in `--gate-models` order, its CP4 items last, so a model's worker lives once per
    backend and models take turns on a device (a stable sort, identical on every xdist
    worker)."""
    rank = {m: n for n, m in enumerate(gate_models, 1)}
    primary = gate_models[0]

    def key(it: pytest.Item) -> tuple[int, int]:
        model = item_model(it, primary)
        if model is None:
            return (0, 0)
        return (rank.get(model, len(rank) + 1), 1 if _is_cp4(it) else 0)

    items.sort(key=key)


def _is_cp4(item: pytest.Item) -> bool:
    """CP4's items judge a model's whole turn (and stop its worker): last in the turn."""
    from llorch_harness.gate.checklist import CP4_SECTION

    mark = item.get_closest_marker("gate")
    return bool(mark and (mark.args[:1] == (CP4_SECTION,)
                          or mark.kwargs.get("section") == CP4_SECTION))


# --------------------------------------------------------------------------- evidence

# What this process saw of each (model, backend): its greedy streams and the outcome of each
# model test (name -> status). Under xdist every test of one device runs on one worker
# (its xdist_group), so the CP4 items of a model and backend see all of them.
_STREAMS: dict[tuple[str, str], list[StreamResult]] = {}
_OUTCOMES: dict[tuple[str, str], dict[str, str]] = {}


def streams(model_id: str, backend: str) -> list[StreamResult]:
    return _STREAMS.setdefault((model_id, backend), [])


def add_streams(model_id: str, backend: str, results: Iterable[StreamResult]) -> None:
    streams(model_id, backend).extend(results)


def note_outcome(model_id: str, backend: str, test_name: str, when: str, outcome: str) -> None:
    """A phase's outcome of a model test: failed beats skipped beats passed."""
    seen = _OUTCOMES.setdefault((model_id, backend), {})
    prev = seen.get(test_name)
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    if when == "call" or outcome != "passed":
        if prev is None or rank.get(outcome, 2) >= rank.get(prev, 0):
            seen[test_name] = outcome


def outcomes(model_id: str, backend: str) -> dict[str, str]:
    return dict(_OUTCOMES.get((model_id, backend), {}))


def test_name(nodeid: str) -> str:
    """`tests_hw/test_x.py::test_y[cpu-tiny-llama]` -> `test_y`."""
    return nodeid.rsplit("::", 1)[-1].split("[", 1)[0]


def model_dir_bytes(path: Path) -> int:
    """The bytes a model takes on disk (its regular files, no link followed)."""
    total = 0
    for p in Path(path).rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def model_facts(model: GateModel, entry: Any) -> dict[str, Any]:
    """What MODEL_SUPPORT.md says about a model, from its catalog entry and its files."""
    return {
        "name": getattr(entry, "name", None) or model.model_id,
        "architecture": getattr(entry, "architecture", None) or None,
        "repo": model.repo,
        "revision": (getattr(entry, "metadata", {}) or {}).get("revision"),
        "size_bytes": model_dir_bytes(model.path),
    }
