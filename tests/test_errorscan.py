"""Error patterns: each known failure line is caught, ordinary lines are not."""

from __future__ import annotations

import json

import pytest

from llorch_harness.checks.errorscan import (
    PATTERNS,
    PATTERNS_VERSION,
    diagnose_text,
    format_matches,
    scan_log,
    scan_stream,
    scan_text,
)
from llorch_harness.checks.workerclient import ExecuteRequest, execute
from tests.sse_servers import BROADCAST_MESSAGE, StubWorker, sse_server


def _names(text: str) -> set[str]:
    return {m.pattern.name for m in scan_text(text, "t")}


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("Error: cannot broadcast [5, 5] to [1, 14, 5, 10]", "candle_broadcast"),
        ("shape mismatch in broadcast_add, lhs: [1, 14, 5, 10], rhs: [1, 1, 5, 5]",
         "candle_broadcast"),
        ("shape mismatch in matmul, lhs: [1, 5, 896], rhs: [1, 4864, 896]",
         "candle_shape_mismatch"),
        ('{"type":"error","code":"INFERENCE_FAILED",'
         '"message":"Forward pass failed: Qwen forward pass failed"}', "qwen_forward_failed"),
        ('{"timestamp":"t","level":"WARN","fields":{"message":"Inference failed","job_id":"j",'
         '"error":"Forward pass failed: Qwen forward pass failed"}}', "qwen_forward_failed"),
        ('{"timestamp":"t","level":"WARN","fields":{"message":'
         '"Cache reset not implemented for Qwen"}}', "qwen_cache_reset_noop"),
        ('{"timestamp":"t","level":"WARN","fields":{"message":'
         '"Cache reset not implemented for Mistral"}}', "cache_reset_noop"),
        ("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")", "candle_driver_error"),
        ("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")", "cuda_error_code"),
        ("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")", "out_of_memory"),
        ("unexpected rank, expected: 4, got: 3 ([1, 5, 896])", "candle_unexpected_rank"),
        ("dtype mismatch in matmul, lhs: F16, rhs: F32", "candle_dtype_mismatch"),
        ("thread 'main' panicked at src/main.rs:42:5:", "rust_panic"),
        ("thread '<unnamed>' panicked at candle-core/src/tensor.rs:1:1:", "rust_panic"),
        ("note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
         "rust_backtrace"),
        ("stack backtrace:", "rust_backtrace"),
        ("CUDA error: an illegal memory access was encountered", "cuda_error"),
        ("cudaErrorLaunchFailure", "cuda_runtime_error"),
        ("MTLCommandBufferError: Caused GPU Timeout Error", "metal_command_buffer"),
        ("Metal error: Could not allocate buffer", "metal_error"),
        ("Failed to create Metal device", "metal_device"),
        ('{"level":"WARN","fields":{"message":"NaN detected in logits"}}', "nan_word"),
        ("logits contain nan at position 3", "nan_logits"),
        ("nan in logits", "nan_logits"),
        ("logits contain -inf everywhere", "inf_logits"),
        ("probabilities are inf", "inf_logits"),
        ('{"type":"error","code":"INFERENCE_FAILED","message":"x"}', "inference_failed"),
        ("VRAM_OOM: need 2GB", "vram_oom"),
        ('{"level":"WARN","fields":{"message":"Inference failed","job_id":"j","error":"x"}}',
         "log_warn_with_error"),
        ('{"level":"ERROR","fields":{"message":"boom"}}', "log_level_error"),
    ],
)
def test_pattern_catches(line: str, name: str) -> None:
    assert name in _names(line)


@pytest.mark.parametrize(
    "line",
    [
        '{"timestamp":"2026-11-28T12:00:00Z","level":"INFO","fields":{"message":'
        '"Model loaded successfully","vram_bytes":0}}',
        '{"level":"INFO","fields":{"message":"Inference completed","job_id":"j","tokens_out":20}}',
        '{"level":"WARN","fields":{"message":"slow request","elapsed_ms":900}}',
        "Financial nancy information about infrastructure and infinite loops",
        "temperature: 0.7, top_p: 1.0, seed: 42, RUST_LOG=info",
        "binding 0.0.0.0:8080, broadcast address unchanged",
        "the nan of it; a grandmother (nan) said hi; inf is short for information",
        "mask filled with -inf for padded positions",
        # a healthy real worker's narration and tracing lines (contract, Logs)
        '{"timestamp":"t","level":"INFO","fields":{"actor":"candle-backend","action":'
        '"cache_reset","target":"kv-cache","human":"Reset KV cache before inference to clear '
        'warmup pollution","cute":"Tidying up the cache for a fresh start! 🧹"}}',
        '{"timestamp":"t","level":"INFO","fields":{"message":"Inference completed",'
        '"tokens_generated":20,"duration_ms":812,"tokens_per_sec":24}}',
        '{"timestamp":"t","level":"INFO","fields":{"actor":"http-server","action":"health_check",'
        '"target":"health","human":"Health check: healthy","cute":"Feeling great! 💪"}}',
    ],
)
def test_ordinary_lines_do_not_match(line: str) -> None:
    assert _names(line) == set()


def test_versioned_and_named() -> None:
    assert PATTERNS_VERSION == "2026-12-02.1"
    names = [p.name for p in PATTERNS]
    assert len(names) == len(set(names))
    assert all(p.description and p.source_hint for p in PATTERNS)


def test_scan_text_line_numbers_and_truncation() -> None:
    long = "x" * 1000 + " cannot broadcast [1] to [2]"
    matches = scan_text("ok\nthread 'main' panicked at a.rs:1:1:\n" + long, "stderr")
    assert [(m.pattern.name, m.line_no) for m in matches] == [("rust_panic", 2),
                                                              ("candle_broadcast", 3)]
    assert matches[0].source == "stderr"
    assert len(matches[1].line) <= 503


def test_scan_log_from_offset_non_utf8(tmp_path) -> None:
    log = tmp_path / "worker.log"
    log.write_bytes(b"thread 'main' panicked at old.rs:1:1:\nINFO ok\n")
    offset = log.stat().st_size
    with open(log, "ab") as fh:
        fh.write(b"\xff\xfe garbage \x80\n")
        fh.write(b'{"level":"WARN","fields":{"job_id":"j","error":"' + BROADCAST_MESSAGE.encode()
                 + b'"}}\n')
    matches = scan_log(log, offset)
    assert {m.pattern.name for m in matches} == {"candle_broadcast", "log_warn_with_error"}
    assert all(m.line_no == 4 for m in matches)
    assert all(m.source == str(log) for m in matches)
    # from the start, the old panic is found too
    assert "rust_panic" in {m.pattern.name for m in scan_log(log)}
    # a log that shrank below the offset is scanned from its start
    log.write_bytes(b"CUDA_ERROR_LAUNCH_FAILED\n")
    assert [m.pattern.name for m in scan_log(log, offset)] == ["cuda_error_code"]


def test_scan_stream_live_broadcast_error() -> None:
    with sse_server("broadcast_error") as srv:
        res = execute(srv.url, ExecuteRequest(job_id="j-7", prompt="p", max_tokens=3))
    matches = scan_stream(res)
    names = {m.pattern.name for m in matches}
    assert {"candle_broadcast", "inference_failed"} <= names
    text = format_matches(matches)
    assert "stream job=j-7 error event:1" in text
    assert BROADCAST_MESSAGE in text
    assert PATTERNS_VERSION in text


def test_scan_stream_clean_and_generated_text(tmp_path) -> None:
    with StubWorker() as w:
        res = execute(w.url, ExecuteRequest(job_id="j", prompt="p", max_tokens=5))
    assert scan_stream(res) == []
    # prose that merely mentions memory or NaN is not an error; a leaked candle error is
    res.events[1]["t"] = "I ran out of memory, NaN"
    assert scan_stream(res) == []
    res.events[1]["t"] = "cannot broadcast [5, 5] to [1, 14, 5, 10]"
    assert [m.pattern.name for m in scan_stream(res)] == ["candle_broadcast"]


def test_scan_stream_protocol_problem_and_body() -> None:
    with sse_server("invalid_json") as srv:
        res = execute(srv.url, ExecuteRequest(job_id="j", prompt="p", max_tokens=3))
    assert scan_stream(res) == []
    res.body_text = json.dumps({"errors": [{"message": "VRAM_OOM"}]})
    assert [m.pattern.name for m in scan_stream(res)] == ["vram_oom"]


def test_format_matches_empty() -> None:
    assert format_matches([]) == ""


def test_qwen_signatures_name_the_bug_in_words() -> None:
    """The real worker hides candle's text for Qwen: the two lines it does write must be
    enough to name the bug, and the report says it in words, with the matched lines."""
    event = "INFERENCE_FAILED: Forward pass failed: Qwen forward pass failed"
    warn = '{"level":"WARN","fields":{"message":"Cache reset not implemented for Qwen"}}'
    matches = scan_text(event + "\n" + warn, "worker.log")
    text = format_matches(matches)
    assert text.splitlines()[0] == (
        "diagnosis: the KV cache is never cleared for Qwen: every prompt of two or more tokens "
        "fails once the cache holds anything (the CP3 broadcasting bug: the cache reset is a "
        "no-op, and the [m, m] attention mask cannot be added to keys of length cache + m)")
    assert text.count("diagnosis:") == 1  # one diagnosis, however many lines show it
    assert "worker.log:1:" in text and "worker.log:2:" in text
    assert diagnose_text("Forward pass failed: Llama forward pass failed") == []


def test_scan_log_reads_every_line_kind(tmp_path) -> None:
    """Tracing lines, narration lines without `message` and stderr panics all count."""
    log = tmp_path / "w.log"
    log.write_text(
        '{"timestamp":"t","level":"INFO","fields":{"message":"Starting llorch-cpu-candled"}}\n'
        '{"timestamp":"t","level":"INFO","fields":{"actor":"candle-backend","action":"error",'
        '"target":"j","human":"Inference failed for job j: Forward pass failed: Qwen forward '
        'pass failed","error_kind":"inference_failed","job_id":"j"}}\n'
        "thread 'main' panicked at src/backend/inference.rs:12:5:\n")
    names = [(m.pattern.name, m.line_no) for m in scan_log(log)]
    assert names == [("qwen_forward_failed", 2), ("rust_panic", 3)]
