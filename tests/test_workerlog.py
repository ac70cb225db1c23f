"""Reading a worker log as llorch-candled writes it: line kinds and one request's facts."""

from __future__ import annotations

import json
from pathlib import Path

from llorch_harness.checks.workerlog import (
    facts_for,
    generation_facts,
    log_size,
    parse_line,
    read_lines,
)


def _tracing(level: str, message: str, **fields: object) -> str:
    return json.dumps({"timestamp": "2026-11-28T12:00:00.000000Z", "level": level,
                       "fields": {"message": message, **fields}})


def _narration(human: str, **fields: object) -> str:
    return json.dumps({"timestamp": "2026-11-28T12:00:00.000000Z", "level": "INFO",
                       "fields": {"actor": "candle-backend", "action": "x", "target": "t",
                                  "human": human, "cute": "🎉", **fields}})


def _request_ok(job: str, generated: int, pieces: int) -> list[str]:
    """The lines one successful request writes, in the contract's order."""
    return [
        _tracing("WARN", "Cache reset not implemented for Qwen"),
        _narration("Reset KV cache before inference to clear warmup pollution"),
        _tracing("INFO", "Inference completed", tokens_generated=generated, duration_ms=800,
                 tokens_per_sec=25),
        _narration(f"Inference completed ({generated} tokens in 800 ms, 25 tok/s)",
                   tokens_out=generated, decode_time_ms=800),
        _tracing("INFO", "Inference complete", job_id=job, tokens=pieces),
    ]


def _request_failed(job: str) -> list[str]:
    msg = "Forward pass failed: Qwen forward pass failed"
    return [
        _tracing("WARN", "Cache reset not implemented for Qwen"),
        _tracing("WARN", "Inference failed", job_id=job, error=msg),
        _narration(f"Inference failed for job {job}: {msg}", error_kind="inference_failed",
                   job_id=job),
    ]


CP3_LOG = [
    _tracing("INFO", "Starting llorch-cuda-candled", worker_id="w", port=8001, backend="cuda"),
    _narration("Health check: healthy"),
    *_request_ok("job-a", 20, 14),
    *_request_failed("job-b"),
    *_request_ok("job-c", 7, 5),  # ended at EOS
    "thread 'main' panicked at src/backend/inference.rs:12:5:",
]


def test_line_kinds() -> None:
    kinds = [parse_line(raw).kind for raw in CP3_LOG[:3]]
    assert kinds == ["tracing", "narration", "tracing"]
    assert parse_line(CP3_LOG[1]).message == "Health check: healthy"  # narration: `human`
    assert parse_line(CP3_LOG[0]).message == "Starting llorch-cuda-candled"
    panic = parse_line(CP3_LOG[-1])
    assert panic.kind == "other" and panic.message is None
    for odd in ("{not json", "[1,2]", '{"fields": 3}', '{"level":"INFO"}', "", "{" * 5000):
        assert parse_line(odd).kind == "other"


def test_facts_follow_the_single_threaded_order(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("\n".join(CP3_LOG) + "\n")
    lines = list(read_lines(log))
    a = generation_facts(lines, "job-a")
    assert a is not None and (a.tokens_generated, a.pieces, a.duration_ms) == (20, 14, 800)
    assert a.found and a.line_nos == [5, 7]
    b = generation_facts(lines, "job-b")
    assert b is not None and b.error == "Forward pass failed: Qwen forward pass failed"
    assert b.tokens_generated is None
    c = facts_for(log, "job-c")
    # the completed line after job-b's failure belongs to job-c, not to job-b
    assert (c.tokens_generated, c.pieces) == (7, 5)
    assert not facts_for(log, "job-z").found
    assert not facts_for(tmp_path / "missing.log", "job-a").found


def test_offset_reads_only_later_lines(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("\n".join(_request_ok("job-a", 20, 14)) + "\n")
    offset = log_size(log)
    with open(log, "a") as fh:
        fh.write("\n".join(_request_ok("job-b", 3, 2)) + "\n")
    assert not facts_for(log, "job-a", offset).found
    b = facts_for(log, "job-b", offset)
    assert (b.tokens_generated, b.pieces) == (3, 2)
    assert b.line_nos == [8, 10]  # numbered as in the whole file
    assert log_size(None) == 0 and log_size(tmp_path / "missing") == 0


def test_older_build_with_job_id_on_the_completed_line() -> None:
    lines = [parse_line(_tracing("INFO", "Inference completed", job_id="j", tokens=4,
                                 tokens_generated=5), 1)]
    facts = generation_facts(lines, "j")
    assert facts is not None and (facts.tokens_generated, facts.pieces) == (5, 4)
