"""A versioned list of error patterns, and scans of worker logs and streams for them.

"No broadcasting errors" and "no errors in logs" are gate items: a worker can
answer 200 and still log a candle shape error or a panic. The list is versioned
so a report says which patterns a verdict was reached with; bump
`PATTERNS_VERSION` whenever a pattern is added, removed or changed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from llorch_harness.workerclient import StreamResult

PATTERNS_VERSION = "2026-11-28.1"
LINE_LIMIT = 500
_READ_LINE_LIMIT = 1 << 20


@dataclass(frozen=True)
class ErrorPattern:
    """One known failure signature; `in_generated_text` says whether it is safe on model output."""

    name: str
    regex: re.Pattern[str]
    description: str
    source_hint: str
    in_generated_text: bool = True


@dataclass(frozen=True)
class ErrorMatch:
    pattern: ErrorPattern
    source: str
    line_no: int
    line: str  # truncated to LINE_LIMIT characters


def _p(name: str, regex: str, description: str, hint: str, *, flags: int = 0,
       text_ok: bool = True) -> ErrorPattern:
    return ErrorPattern(name, re.compile(regex, flags), description, hint, text_ok)


_I = re.IGNORECASE

PATTERNS: tuple[ErrorPattern, ...] = (
    _p("candle_broadcast", r"cannot broadcast \[",
       "candle broadcast error (attention mask vs. a polluted KV cache)",
       "candle-core shape.rs; llorch-candled attention mask / KV cache reset"),
    _p("candle_shape_mismatch", r"shape mismatch in",
       "candle shape mismatch in a binary op", "candle-core; llorch-candled model forward"),
    _p("candle_driver_error", r"\bDriverError\b", "candle/cudarc driver error",
       "candle-core cuda backend (cudarc)"),
    _p("candle_unexpected_rank", r"unexpected rank", "candle tensor of unexpected rank",
       "candle-core; llorch-candled model forward"),
    _p("candle_dtype_mismatch", r"dtype mismatch", "candle dtype mismatch",
       "candle-core; weights loaded as the wrong dtype"),
    _p("rust_panic", r"thread '[^'\n]*' panicked at", "Rust panic",
       "worker stderr; the file:line after 'panicked at'"),
    _p("rust_backtrace", r"RUST_BACKTRACE=\S*`? environment variable|^\s*stack backtrace:",
       "Rust panic backtrace note", "worker stderr, just after a panic",
       flags=re.MULTILINE),
    _p("cuda_error_code", r"\bCUDA_ERROR_\w+", "CUDA driver error code",
       "CUDA driver / device; nvidia-smi, dmesg"),
    _p("cuda_error", r"\bCUDA error\b", "CUDA error", "CUDA runtime; nvidia-smi, dmesg",
       flags=_I),
    _p("cuda_runtime_error", r"\bcudaError\w*", "CUDA runtime error",
       "CUDA runtime; nvidia-smi, dmesg"),
    _p("out_of_memory", r"\bout of memory\b", "device or host out of memory",
       "VRAM use (nvidia-smi / Activity Monitor); model size", flags=_I, text_ok=False),
    _p("metal_command_buffer", r"MTLCommandBufferError", "Metal command buffer error",
       "Metal backend; Console.app GPU logs"),
    _p("metal_error", r"\bMetal error\b", "Metal error", "candle metal backend", flags=_I),
    _p("metal_device", r"failed to create metal device", "Metal device creation failed",
       "Apple Silicon GPU availability", flags=_I),
    _p("nan_word", r"\bNaN\b", "NaN reported (logits, weights or activations)",
       "model numerics; dtype (f16 overflow), weights", text_ok=False),
    _p("nan_logits", r"\b(?:logits?|probs?|probabilities|softmax|activations?)\b[^\n]{0,80}"
       r"\b(?:nan|non-finite|not finite)\b|\bnan\b[^\n]{0,40}\b(?:logits?|probs?)\b",
       "NaN or non-finite values in logits", "model numerics; dtype, weights", flags=_I,
       text_ok=False),
    _p("inf_logits", r"\b(?:logits?|probs?|probabilities)\b[^\n]{0,40}"
       r"\b(?:contains?|contained|are|is|became|got|produced)\s+(?:\+|-)?inf(?:inity)?\b",
       "infinite logits", "model numerics; dtype overflow", flags=_I, text_ok=False),
    _p("inference_failed", r"\bINFERENCE_FAILED\b", "worker reported INFERENCE_FAILED",
       "worker log WARN line with job_id and error"),
    _p("vram_oom", r"\bVRAM_OOM\b", "worker reported VRAM_OOM", "VRAM use; model size"),
    _p("log_warn_with_error", r'"level"\s*:\s*"WARN"[^\n]*"error"\s*:',
       "WARN log line carrying an `error` field (the contract's failed-inference line)",
       "the `error` field of that line", text_ok=False),
    _p("log_level_error", r'"level"\s*:\s*"ERROR"', "ERROR-level log line",
       "the message of that line", text_ok=False),
)


def _clip(line: str) -> str:
    return line if len(line) <= LINE_LIMIT else line[:LINE_LIMIT] + "..."


def _scan_line(line: str, source: str, line_no: int, patterns: Iterable[ErrorPattern],
               out: list[ErrorMatch]) -> None:
    for pat in patterns:
        if pat.regex.search(line):
            out.append(ErrorMatch(pat, source, line_no, _clip(line)))


def scan_text(text: str, source: str,
              patterns: Iterable[ErrorPattern] = PATTERNS) -> list[ErrorMatch]:
    """Every (line, pattern) match in `text`; line numbers start at 1."""
    pats = tuple(patterns)
    out: list[ErrorMatch] = []
    for no, line in enumerate(text.splitlines(), 1):
        _scan_line(line, source, no, pats, out)
    return out


def scan_log(path: Path, start_offset: int = 0,
             patterns: Iterable[ErrorPattern] = PATTERNS) -> list[ErrorMatch]:
    """Matches in the log from byte `start_offset` on, with the file's own line numbers.

    A check records the log size before it starts and scans only what was written
    during it. A log that shrank (rotated or truncated) is scanned from the start.
    Bytes that are not UTF-8 are replaced, never fatal.
    """
    pats = tuple(patterns)
    out: list[ErrorMatch] = []
    path = Path(path)
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        offset = start_offset if 0 <= start_offset <= size else 0
        fh.seek(0)
        line_no = 1
        left = offset
        while left > 0:
            block = fh.read(min(left, 1 << 20))
            if not block:
                break
            line_no += block.count(b"\n")
            left -= len(block)
        while raw := fh.readline(_READ_LINE_LIMIT):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            _scan_line(line, str(path), line_no, pats, out)
            if raw.endswith(b"\n"):
                line_no += 1
    return out


def scan_stream(result: StreamResult,
                patterns: Iterable[ErrorPattern] = PATTERNS) -> list[ErrorMatch]:
    """Matches in what a worker sent: error events, other events, problems, non-SSE bodies.

    Token texts are joined and scanned only with the patterns that cannot fire on
    ordinary prose (a model may well write "out of memory"); line_no is the event number.
    """
    pats = tuple(patterns)
    text_pats = tuple(p for p in pats if p.in_generated_text)
    job = result.job_id or "?"
    out: list[ErrorMatch] = []
    for no, ev in enumerate(result.events, 1):
        kind = ev.get("type")
        if kind == "token":
            continue
        if kind == "error":
            msg = ev.get("message")
            text = f"{ev.get('code')}: {msg}" if isinstance(msg, str) else json.dumps(ev)
        else:
            text = json.dumps(ev, ensure_ascii=False)
        for line in text.splitlines() or [""]:
            _scan_line(line, f"stream job={job} {kind} event", no, pats, out)
    for no, line in enumerate(result.text.splitlines(), 1):
        _scan_line(line, f"stream job={job} generated text", no, text_pats, out)
    for no, prob in enumerate(result.problems, 1):
        _scan_line(prob.message, f"stream job={job} protocol problem", no, pats, out)
    if result.body_text:
        for no, line in enumerate(result.body_text.splitlines(), 1):
            _scan_line(line, f"response body job={job}", no, pats, out)
    return out


def format_matches(matches: Iterable[ErrorMatch]) -> str:
    """One line per match: where, which pattern, and the offending line quoted."""
    lines = [
        f"{m.source}:{m.line_no}: [{m.pattern.name}: {m.pattern.description}; "
        f"look at {m.pattern.source_hint}] {m.line!r}"
        for m in matches
    ]
    if lines:
        lines.append(f"(error patterns version {PATTERNS_VERSION})")
    return "\n".join(lines)
