"""`ExecuteRequest::validate_all` of llorch-candled (src/http/validation.rs), ported.

Why a module of its own: the 400 body (`{"errors": [...]}` naming every bad field, in field
order) is part of the wire contract the harness checks, and it must be testable without a
model or a socket. It runs on what `jsonbody.extract_execute` produced (types already right:
wrong types and missing fields never reach it, they are axum's 422), so only ranges and
lengths are checked, with the real texts:

- job_id: `non_empty`, "job_id must not be empty", value `""`;
- prompt: `length(1..=32768)`, "prompt must not be empty" or "prompt must be at most
  32768 characters (got N)", no value;
- max_tokens: `range(1..=2048)`, "max_tokens must be at least 1" or "... at most 2048
  (got N)", value N;
- temperature and repetition_penalty: `range(0.0..=2.0)`; top_p and min_p:
  `range(0.0..=1.0)`; "X must be at least 0.0 (got V)" or "X must be at most 2.0 (got V)",
  value V;
- stop: `max_count(4)`, "stop must have at most 4 sequences (got N)", value N; each
  sequence: `non_empty` ("stop sequence i must not be empty") or `max_length(100)`
  ("stop sequence i must be at most 100 characters (got B)"), no value.

Floats are Rust f32 (compared and printed as f32: `2.01`, `3`, `inf`); prompt length counts
characters (code points), stop lengths count UTF-8 bytes (Rust `str::len`); seed and top_k
are not validated. Pure functions; no engine import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llorch_harness.lab.refworker.jsonbody import RawExecuteRequest, rust_float_display

PROMPT_MAX_CHARS = 32768
MAX_TOKENS_MAX = 2048
STOP_MAX_ITEMS = 4
STOP_MAX_BYTES = 100
U64_MAX = 2**64 - 1
DEFAULT_SEED = 42


@dataclass(frozen=True)
class FieldError:
    """One entry of the 400 body; `value` is omitted from the JSON when None."""

    field: str
    constraint: str
    message: str
    value: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"field": self.field, "constraint": self.constraint, "message": self.message}
        if self.value is not None:
            out["value"] = self.value
        return out


def f32_text(value: float) -> str:
    """Rust's `f32::to_string`."""
    return rust_float_display(value, f32=True)


def _float_range(name: str, value: float, hi: float, hi_text: str) -> FieldError | None:
    constraint = f"range(0.0..={hi_text})"
    if value < 0.0:
        return FieldError(name, constraint, f"{name} must be at least 0.0 (got {f32_text(value)})",
                          f32_text(value))
    if value > hi:
        return FieldError(name, constraint,
                          f"{name} must be at most {hi_text} (got {f32_text(value)})",
                          f32_text(value))
    return None


def _prompt(prompt: str) -> FieldError | None:
    n = len(prompt)
    if n == 0:
        return FieldError("prompt", "length(1..=32768)", "prompt must not be empty")
    if n > PROMPT_MAX_CHARS:
        return FieldError("prompt", "length(1..=32768)",
                          f"prompt must be at most 32768 characters (got {n})")
    return None


def _max_tokens(value: int) -> FieldError | None:
    if value < 1:
        return FieldError("max_tokens", "range(1..=2048)", "max_tokens must be at least 1",
                          str(value))
    if value > MAX_TOKENS_MAX:
        return FieldError("max_tokens", "range(1..=2048)",
                          f"max_tokens must be at most 2048 (got {value})", str(value))
    return None


def _stop(stop: tuple[str, ...]) -> list[FieldError]:
    errors: list[FieldError] = []
    if len(stop) > STOP_MAX_ITEMS:
        errors.append(FieldError("stop", "max_count(4)",
                                 f"stop must have at most 4 sequences (got {len(stop)})",
                                 str(len(stop))))
    for i, seq in enumerate(stop):
        size = len(seq.encode("utf-8"))
        if size == 0:
            errors.append(FieldError("stop", "non_empty", f"stop sequence {i} must not be empty"))
        elif size > STOP_MAX_BYTES:
            errors.append(FieldError(
                "stop", "max_length(100)",
                f"stop sequence {i} must be at most 100 characters (got {size})"))
    return errors


def validate_all(req: RawExecuteRequest) -> list[FieldError]:
    """Every violation, in the Rust function's order; empty when the request is valid."""
    errors: list[FieldError | None] = []
    if req.job_id == "":
        errors.append(FieldError("job_id", "non_empty", "job_id must not be empty", ""))
    errors.append(_prompt(req.prompt))
    errors.append(_max_tokens(req.max_tokens))
    errors.append(_float_range("temperature", req.temperature, 2.0, "2.0"))
    errors.append(_float_range("top_p", req.top_p, 1.0, "1.0"))
    errors.append(_float_range("repetition_penalty", req.repetition_penalty, 2.0, "2.0"))
    out = [e for e in errors if e is not None]
    out += _stop(req.stop)
    min_p = _float_range("min_p", req.min_p, 1.0, "1.0")
    if min_p is not None:
        out.append(min_p)
    return out


def errors_body(errors: list[FieldError]) -> dict[str, Any]:
    """The 400 JSON body."""
    return {"errors": [e.to_json() for e in errors]}
