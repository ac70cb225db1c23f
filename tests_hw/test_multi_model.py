"""CP4 gate, Multi-Model Testing: per model of `--gate-models` and backend of this pool.

CP4's plan judges "all 8 runs pass, no broadcasting errors, no VRAM errors, every worker
spawns and stops cleanly" with `sleep 10` and `grep error`. Here each model runs every
inference check of test_qwen_inference.py on its own live worker (the plugin orders the
tests model by model, these three last in each model's turn), and these items judge the
model's run on the backend as a whole:

* "Every model works on every backend of this pool": the seed's request answers and agrees
  with the independent reference, and every inference check of this model and backend ran
  and passed in this run;
* "No VRAM errors": no out-of-memory or allocation failure (errorscan.VRAM_PATTERNS, a
  versioned subset of the error patterns) in any log of the model's worker lives on the
  backend or in any of its streams;
* "All workers spawn and stop cleanly": the live worker is stopped here, and every life of
  this model on this backend (the first one and the restart check's) started, lived until
  asked to stop, ended on SIGINT within the grace and left neither a process nor its port.
  Its record carries the figures MODEL_SUPPORT.md shows (startup, memory at ready, tokens/s).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from gatehelpers import MODEL_CHECKS, backend_param, expect

from llorch_harness.checks import errorscan
from llorch_harness.checks import inference_checks as ic
from llorch_harness.gate.checklist import CP4_SECTION, GATE_DETAILS
from llorch_harness.gate.modelruns import FIGURES_KEY
from llorch_harness.plugin import models
from llorch_harness.plugin.fixtures import note_log, worker_facts
from llorch_harness.pool.backends import PREFERENCE

BACKENDS = [backend_param(b) for b in PREFERENCE]
WORKS_ITEM = "Every model works on every backend of this pool"
VRAM_ITEM = "No VRAM errors"
CLEAN_ITEM = "All workers spawn and stop cleanly"


def _live(mut, backend: str, gate_record: dict[str, Any]) -> Any:
    handle = mut.factory.live(backend)
    note_log(gate_record, handle.log_path)
    gate_record.setdefault("worker", worker_facts(handle, mut.model))
    return handle


@pytest.mark.gate(CP4_SECTION, WORKS_ITEM)
@pytest.mark.parametrize("backend", BACKENDS)
def test_model_works_on_backend(backend, model_under_test, gate_record):
    """The seed's request answers and agrees with the reference; every inference check of
    this model on this backend ran and passed."""
    model_id = model_under_test.model_id
    handle = _live(model_under_test, backend, gate_record)
    res = ic.run_request(handle.uri, ic.GATE_PROMPTS["cp3"], ic.GATE_MAX_TOKENS,
                         f"{backend}-{model_id}-works", log_path=handle.log_path)
    models.add_streams(model_id, backend, [res])
    out = ic.check_answer(res, "the seed's request")
    gate_record["streams"] = {res.job_id or "works": res.summary()}
    expect(out.ok, f"{model_id} on {backend}: the seed's request answers (started, tokens, "
           "end, contract kept)", out.message, str(handle.log_path))
    if model_under_test.reference is not None:
        agree = ic.check_reference(model_under_test.reference, [res])
        gate_record["reference"] = model_under_test.reference.identity
        expect(agree.ok, f"{model_id} on {backend}: tokens agree with the reference",
               agree.message, str(handle.log_path))
    seen = models.outcomes(model_id, backend)
    gate_record["inference checks"] = {name: seen.get(name, "not run") for name in MODEL_CHECKS}
    failed = [n for n in MODEL_CHECKS if seen.get(n) == "failed"]
    expect(not failed, f"every inference check of {model_id} on {backend} passed",
           f"failed: {', '.join(failed)}", "the failed tests above (same model and backend)")
    missing = [n for n in MODEL_CHECKS if seen.get(n) not in ("passed", "failed")]
    if missing:
        states = ", ".join(f"{n}: {seen.get(n, 'not run')}" for n in missing)
        pytest.skip(f"{model_id} on {backend}: not every inference check passed or ran in this "
                    f"run ({states}); the item needs all of them")


@pytest.mark.gate(CP4_SECTION, VRAM_ITEM)
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_vram_errors(backend, model_under_test, gate_record):
    """No out-of-memory or allocation error in the logs of every worker life of this model
    on this backend, nor in any of its streams."""
    model_id = model_under_test.model_id
    _live(model_under_test, backend, gate_record)
    lives = model_under_test.factory.lives_of(backend, role=None)
    logs = [Path(life.log_path) for life in lives if life.log_path]
    matches = []
    for log in logs:
        if log.is_file():
            matches += errorscan.scan_log(log, 0, errorscan.VRAM_PATTERNS)
    stream_list = models.streams(model_id, backend)
    for res in stream_list:
        matches += errorscan.scan_stream(res, errorscan.VRAM_PATTERNS)
    gate_record["logs scanned"] = [str(p) for p in logs]
    gate_record["streams scanned"] = len(stream_list)
    gate_record["vram patterns"] = [p.name for p in errorscan.VRAM_PATTERNS]
    gate_record["error_patterns_version"] = errorscan.PATTERNS_VERSION
    expect(not matches, f"{model_id} on {backend}: no out-of-memory or allocation error in "
           f"{len(logs)} worker log(s) and {len(stream_list)} stream(s)",
           errorscan.format_matches(matches), ", ".join(map(str, logs)))


def _memory_at_ready(backend: str, life: Any) -> dict[str, Any] | None:
    """VRAM on a GPU backend when it was read (else /health's vram_bytes), RSS elsewhere."""
    record = life.memory or {}
    ready = record.get("ready") or {}
    if backend != "cpu":
        vram = ready.get("gpu_bytes") or record.get("vram_bytes_reported")
        if vram:
            return {"bytes": int(vram), "kind": "vram"}
    rss = ready.get("rss_bytes")
    return {"bytes": int(rss), "kind": "rss"} if rss else None


def _figures(mut, backend: str, lives: list[Any]) -> dict[str, Any]:
    """What MODEL_SUPPORT.md shows for this model and backend, all measured in this run."""
    rates = [r.tokens_per_sec for r in models.streams(mut.model_id, backend)
             if r.tokens_per_sec]
    first = lives[0] if lives else None
    from llorch_harness.pool.catalog import read_catalog

    entry = read_catalog(mut.factory.paths).find(mut.model_id)
    return {
        **models.model_facts(mut.model, entry),
        "startup_s": round(first.ready_seconds, 3) if first and first.ready_seconds else None,
        "memory_at_ready": _memory_at_ready(backend, first) if first else None,
        "tokens_per_sec": round(statistics.median(rates), 2) if rates else None,
        "worker_lives": len(lives),
    }


@pytest.mark.gate(CP4_SECTION, CLEAN_ITEM)
@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_spawn_and_stop_cleanly(backend, request, model_under_test, gate_record):
    """Stop the model's live worker; every life of this model on this backend started,
    lived until stopped, ended on SIGINT and left nothing behind."""
    factory = model_under_test.factory
    if not factory.lives_of(backend):
        _live(model_under_test, backend, gate_record)  # nothing ran before: one life to judge
    handle = factory.live_workers.pop((backend, 0), None)
    if handle is not None:
        note_log(gate_record, handle.log_path)
        factory.stop(handle)
    lives = factory.lives_of(backend)
    figures = _figures(model_under_test, backend, lives)
    gate_record["worker lives"] = [life.to_json() for life in lives]
    gate_record[FIGURES_KEY] = figures
    request.node.user_properties.append(
        (GATE_DETAILS, json.dumps({FIGURES_KEY: figures}, default=str)))
    problems = [p for life in lives if (p := life.problem()) is not None]
    expect(bool(lives) and not problems,
           f"{model_under_test.model_id} on {backend}: every worker life started, ended on "
           "SIGINT within the grace and left no process or port behind",
           "; ".join(problems) or "no worker life", ", ".join(
               str(life.log_path) for life in lives if life.log_path))
