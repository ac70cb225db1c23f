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

from llorch_harness.checks.workerclient import StreamResult
from llorch_harness.checks.workerlog import read_lines

PATTERNS_VERSION = "2026-12-02.1"
LINE_LIMIT = 500


@dataclass(frozen=True)
class ErrorPattern:
    """One known failure signature; `in_generated_text` says whether it is safe on model output."""

    name: str
    regex: re.Pattern[str]
    description: str
    source_hint: str
    in_generated_text: bool = True
    diagnosis: str | None = None  # what the match means, in words a gate reader acts on
    vram: bool = False  # an out-of-memory or allocation failure (CP4's "No VRAM errors")


@dataclass(frozen=True)
class ErrorMatch:
    pattern: ErrorPattern
    source: str
    line_no: int
    line: str  # truncated to LINE_LIMIT characters


def _p(name: str, regex: str, description: str, hint: str, *, flags: int = 0,
       text_ok: bool = True, diagnosis: str | None = None, vram: bool = False) -> ErrorPattern:
    return ErrorPattern(name, re.compile(regex, flags), description, hint, text_ok, diagnosis,
                        vram)


_I = re.IGNORECASE
QWEN_CACHE_DIAGNOSIS = (
    "the KV cache is never cleared for Qwen: every prompt of two or more tokens fails once "
    "the cache holds anything (the CP3 broadcasting bug: the cache reset is a no-op, and the "
    "[m, m] attention mask cannot be added to keys of length cache + m)")
VRAM_DIAGNOSIS = (
    "the worker ran out of device (or host) memory or an allocation failed: the model, its KV "
    "cache or another process's memory does not fit on this device")
BROADCAST_DIAGNOSIS = (
    "the attention mask does not fit the keys: the KV cache still holds an earlier request's "
    "entries when a new prompt is fed (the CP3 broadcasting bug)")

PATTERNS: tuple[ErrorPattern, ...] = (
    # The real CP3 signatures (contract, broadcasting section): for Qwen the candle text is
    # dropped by the anyhow context, so only these two lines name the bug.
    _p("qwen_forward_failed", r"Forward pass failed: Qwen forward pass failed",
       "Qwen forward pass failed (error event or WARN \"Inference failed\")",
       "llorch-candled backend/inference.rs forward; backend/models/mod.rs reset_cache",
       diagnosis=QWEN_CACHE_DIAGNOSIS),
    _p("qwen_cache_reset_noop", r"Cache reset not implemented for Qwen",
       "WARN: the Qwen KV cache reset is a no-op",
       "llorch-candled backend/models/mod.rs reset_cache (Model::Qwen arm)",
       text_ok=False, diagnosis=QWEN_CACHE_DIAGNOSIS),
    _p("cache_reset_noop", r"Cache reset not implemented for (?!Qwen\b)\w+",
       "WARN: a model's KV cache reset is a no-op",
       "llorch-candled backend/models/mod.rs reset_cache", text_ok=False,
       diagnosis="the KV cache is never cleared for this architecture: later requests run on "
                 "an earlier request's keys"),
    # candle's own texts, where a build or the Llama path lets them through
    _p("candle_broadcast", r"cannot broadcast \[|shape mismatch in broadcast_\w+",
       "candle broadcast error (attention mask vs. a polluted KV cache)",
       "candle-core shape.rs; llorch-candled attention mask / KV cache reset",
       diagnosis=BROADCAST_DIAGNOSIS),
    _p("candle_shape_mismatch", r"shape mismatch in (?!broadcast_)",
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
       "VRAM use (nvidia-smi / Activity Monitor); model size", flags=_I, text_ok=False,
       diagnosis=VRAM_DIAGNOSIS, vram=True),
    # CP4's "No VRAM errors": how CUDA, Metal, Rust and the OS say an allocation failed
    _p("cuda_alloc_failed", r"\bCUDA_ERROR_OUT_OF_MEMORY\b|\bcudaErrorMemoryAllocation\b"
       r"|\bCU(?:BLAS|DNN)_STATUS_ALLOC_FAILED\b",
       "CUDA allocation failed (driver, runtime, cuBLAS or cuDNN)",
       "VRAM use (nvidia-smi); model size and dtype", diagnosis=VRAM_DIAGNOSIS, vram=True),
    _p("metal_out_of_memory", r"kIOGPUCommandBufferCallbackErrorOutOfMemory"
       r"|Insufficient Memory \(0+8",
       "Metal command buffer out of memory", "unified memory (Activity Monitor); model size",
       diagnosis=VRAM_DIAGNOSIS, vram=True),
    _p("metal_alloc_failed", r"failed to (?:create|allocate) (?:a )?metal (?:resource|buffer)",
       "Metal buffer allocation failed", "unified memory (Activity Monitor); model size",
       flags=_I, diagnosis=VRAM_DIAGNOSIS, vram=True),
    _p("rust_alloc_failed", r"memory allocation of \d+ bytes failed",
       "Rust allocation failure (the process aborts)", "host memory; model size",
       diagnosis=VRAM_DIAGNOSIS, vram=True),
    _p("os_enomem", r"Cannot allocate memory|\bENOMEM\b|\(os error 12\)",
       "the OS refused an allocation (ENOMEM)", "host memory, ulimit -v, cgroup limits",
       diagnosis=VRAM_DIAGNOSIS, vram=True),
    _p("oom_word", r"\bOOM\b", "out-of-memory reported (OOM)", "VRAM use; model size",
       text_ok=False, diagnosis=VRAM_DIAGNOSIS, vram=True),
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
    _p("vram_oom", r"\bVRAM_OOM\b", "worker reported VRAM_OOM", "VRAM use; model size",
       diagnosis=VRAM_DIAGNOSIS, vram=True),
    _p("log_warn_with_error", r'"level"\s*:\s*"WARN"[^\n]*"error"\s*:',
       "WARN log line carrying an `error` field (the contract's failed-inference line)",
       "the `error` field of that line", text_ok=False),
    _p("log_level_error", r'"level"\s*:\s*"ERROR"', "ERROR-level log line",
       "the message of that line", text_ok=False),
)

# the patterns of CP4's "No VRAM errors" item (a subset: each is also a general error pattern)
VRAM_PATTERNS: tuple[ErrorPattern, ...] = tuple(p for p in PATTERNS if p.vram)


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
    during it (a log that shrank is scanned from the start). Every line kind counts:
    tracing lines, narration lines (their `human` text) and stderr such as panics.
    """
    pats = tuple(patterns)
    out: list[ErrorMatch] = []
    for line in read_lines(Path(path), start_offset):
        _scan_line(line.raw, str(path), line.line_no, pats, out)
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


def diagnoses(matches: Iterable[ErrorMatch]) -> list[str]:
    """The distinct diagnoses of `matches`, in the order first seen."""
    return list(dict.fromkeys(m.pattern.diagnosis for m in matches if m.pattern.diagnosis))


def diagnose_text(text: str, patterns: Iterable[ErrorPattern] = PATTERNS) -> list[str]:
    """The diagnoses a text (an error event's message, a log line) carries."""
    return diagnoses(scan_text(text, "text", patterns))


def format_matches(matches: Iterable[ErrorMatch]) -> str:
    """The diagnoses first, then one line per match: where, which pattern, the line quoted."""
    matches = list(matches)
    lines = [f"diagnosis: {d}" for d in diagnoses(matches)]
    lines += [
        f"{m.source}:{m.line_no}: [{m.pattern.name}: {m.pattern.description}; "
        f"look at {m.pattern.source_hint}] {m.line!r}"
        for m in matches
    ]
    if matches:
        lines.append(f"(error patterns version {PATTERNS_VERSION})")
    return "\n".join(lines)
