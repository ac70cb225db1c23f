"""Issue 26 item 3: determinism along more axes, each against a real reference worker.

A healthy worker passes all four (4 concurrent requests, the request after a rejected one
and after a failed one, a prompt past 1024 tokens); each worker stand-in fault of one axis
fails its check, and the failure names the axis. One embedded gate run with all four faults
shows the gate catches them (and names each axis) end to end.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from llorch_harness.checks import determinism as det
from llorch_harness.checks.answer import GATE_MAX_TOKENS, GATE_PROMPTS
from llorch_harness.lab.refworker.faults import context_edge
from tests.test_inference_checks import RefWorker, refworker, tiny_model  # noqa: F401

PROMPT = GATE_PROMPTS["cp3"]
LONG_TEXT = ("Write a short story about a lighthouse keeper who finds a message in a bottle. "
             "The keeper lives alone on a rocky island, far from the mainland.")


def _context(model: Path) -> int:
    return int(json.loads((model / "config.json").read_text())["max_position_embeddings"])


def _count(model: Path) -> Callable[[str], int]:
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    return lambda text: len(tok.encode(text).ids)


def _near(model: Path) -> tuple[str, int]:
    """As the gate builds it: the context less max_tokens and a margin (this tiny model's
    context is small enough to go to the limit; the fault's edge lies below it)."""
    count = _count(model)
    prompt = det.near_limit_prompt(LONG_TEXT, _context(model) - GATE_MAX_TOKENS - 8, count)
    return prompt, count(prompt)


def test_near_limit_prompt_is_the_longest_within_both_limits() -> None:
    count = len  # one token per character
    p = det.near_limit_prompt("abc", 100, count)
    assert len(p) == 100
    assert len(det.near_limit_prompt("abc", 10**6, count)) == det.PROMPT_CHAR_LIMIT
    over = det.over_limit_prompt(4096, count)
    assert over is not None and len(over) == 4096 + 16
    assert det.over_limit_prompt(det.PROMPT_CHAR_LIMIT, count) is None  # nothing can fail


def test_a_healthy_worker_passes_every_axis(refworker, tiny_model: Path) -> None:  # noqa: F811
    w = refworker()
    prompt, n = _near(tiny_model)
    assert n >= context_edge(_context(tiny_model))  # where the context_edge fault fails
    outs = [det.check_concurrent_identical(w.uri, PROMPT, GATE_MAX_TOKENS, n=4, log_path=w.log),
            det.check_after_rejected(w.uri, PROMPT, GATE_MAX_TOKENS, log_path=w.log),
            det.check_after_failed(w.uri, PROMPT, GATE_MAX_TOKENS, _context(tiny_model),
                                   _count(tiny_model)),
            det.check_near_limit(w.uri, prompt, n, GATE_MAX_TOKENS, _context(tiny_model))]
    for out in outs:
        assert out.ok, out.message
    rejected = outs[1].details["error_requests"]
    assert [r.get("status_code") for r in rejected] == [422, 400], rejected


@pytest.mark.parametrize(("fault", "axis"), [
    ("concurrent_drift", det.AXIS_CONCURRENT),
    ("dirty_after_reject", det.AXIS_AFTER_REJECTED),
    ("dirty_after_failure", det.AXIS_AFTER_FAILED),
    ("context_edge", det.AXIS_NEAR_LIMIT),
])
def test_each_axis_fault_is_caught_and_named(refworker, tiny_model: Path, fault: str,  # noqa: F811
                                             axis: str) -> None:
    # a generation that holds the worker 2 s: the concurrent requests surely queue behind it
    w = refworker(f"{fault},slow_execute=2" if fault == "concurrent_drift" else fault)
    if axis == det.AXIS_CONCURRENT:
        out = det.check_concurrent_identical(w.uri, PROMPT, GATE_MAX_TOKENS, n=4)
    elif axis == det.AXIS_AFTER_REJECTED:
        out = det.check_after_rejected(w.uri, PROMPT, GATE_MAX_TOKENS)
    elif axis == det.AXIS_AFTER_FAILED:
        out = det.check_after_failed(w.uri, PROMPT, GATE_MAX_TOKENS, _context(tiny_model),
                                     _count(tiny_model))
    else:
        prompt, n = _near(tiny_model)
        out = det.check_near_limit(w.uri, prompt, n, GATE_MAX_TOKENS, _context(tiny_model))
    assert not out.ok
    assert out.message.startswith(f"[{axis}]"), out.message


@pytest.mark.slow
def test_the_gate_catches_each_axis_fault(tmp_path: Path) -> None:
    """One embedded gate run, the three new tests, all four faults: each test fails and its
    reason names its axis."""
    from tests.test_plugin_gate import run_gate

    res = run_gate(tmp_path, "-k", "concurrent or rejected_or_failed or near_the_context",
                   "--gate-json", str(tmp_path / "g.json"),
                   faults="concurrent_drift,dirty_after_reject,dirty_after_failure,"
                          "context_edge,slow_execute=2")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-6000:]
    doc = json.loads((tmp_path / "g.json").read_text())
    failed = {re.sub(r"\[.*$", "", r["nodeid"].rpartition("::")[2])
              for r in doc["items"] if r["status"] == "fail"}
    assert failed == {"test_concurrent_requests_identical",
                      "test_no_state_left_by_rejected_or_failed_requests",
                      "test_prompt_near_the_context_limit"}, failed
    for axis in (det.AXIS_CONCURRENT, det.AXIS_AFTER_REJECTED, det.AXIS_NEAR_LIMIT):
        assert f"got: [{axis}]" in out, (axis, out[-6000:])  # the failure names its axis
    assert "CP3 gate verdict: FAIL (worker:" in out
