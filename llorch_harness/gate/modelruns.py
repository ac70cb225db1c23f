"""One line per (model, backend) of a gate run: CP4's "runs" (4 models x 2 backends = 8).

Why apart from the checklist: the checklist judges items; CP4 asks, per model and backend,
did it pass, which item failed, and how fast it started, how much memory it held and how
fast it generated. `llorch-harness gate merge --model-support` builds MODEL_SUPPORT.md from
these lines, so every figure comes from a test of this run (its `gate_details` under
`model_run`), none is typed by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

FIGURES_KEY = "model_run"  # the key of a test's gate_details that holds run figures


class _Result(Protocol):
    item: str
    backend: str | None
    status: str
    reason: str | None
    details: dict[str, Any]
    model: str | None


_FIGURES = ("name", "architecture", "repo", "revision", "size_bytes", "startup_s",
            "memory_at_ready", "tokens_per_sec", "worker_lives")


def _status(tests: Sequence[_Result]) -> tuple[str, str | None]:
    """fail > error > pass (every test passed) > skip; with the first reason that matters."""
    for status in ("fail", "error"):
        bad = [t for t in tests if t.status == status]
        if bad:
            return status, f"{bad[0].item}: {bad[0].reason or status}"
    if tests and all(t.status == "pass" for t in tests):
        return "pass", None
    skipped = [t for t in tests if t.status not in ("pass",)]
    if skipped:
        return "skip", (f"{len(skipped)} of {len(tests)} tests did not pass: "
                        f"{skipped[0].item}: {skipped[0].reason or skipped[0].status}")
    return "not run", "no test of this model ran on this backend (deselected)"


def model_runs(results: Iterable[_Result], gate_models: Sequence[str],
               backends: Mapping[str, Mapping[str, Any]],
               item_order: Sequence[str]) -> list[dict[str, Any]]:
    """Every model of the run on every backend this pool selected and could use, in
    --gate-models order then backend order; a pair with no test is "not run"."""
    groups: dict[tuple[str, str], list[_Result]] = {}
    for r in results:
        if r.model and r.backend:
            groups.setdefault((r.model, r.backend), []).append(r)
    playable = [n for n, st in backends.items()
                if st.get("selected") and st.get("reason") is None]
    keys = [(m, b) for m in gate_models for b in playable]
    keys += sorted(k for k in groups if k not in keys)
    rank = {text: n for n, text in enumerate(item_order)}
    out = []
    for model, backend in keys:
        tests = groups.get((model, backend), [])
        status, reason = _status(tests)
        failed = sorted({t.item for t in tests if t.status == "fail"},
                        key=lambda i: rank.get(i, len(rank)))
        figures: dict[str, Any] = {}
        for t in tests:
            figures.update(t.details.get(FIGURES_KEY) or {})
        out.append({
            "model": model, "backend": backend, "status": status, "failed_items": failed,
            "reason": reason, **{k: figures.get(k) for k in _FIGURES}, "tests": len(tests),
        })
    return out
