"""Validation of `POST /execute` bodies, per the contract's field table.

Why a module of its own: the 400 body (`{"errors": [...]}` naming *every* bad field) is part
of the wire contract the harness checks, and it must be testable without a model or a socket.
Pure functions; no engine import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PROMPT_MAX_CHARS = 32768
MAX_TOKENS_MAX = 2048
STOP_MAX_ITEMS = 4
STOP_MAX_CHARS = 100
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
DEFAULT_SEED = 42
VALUE_ECHO_CHARS = 100


@dataclass(frozen=True)
class FieldError:
    """One entry of the 400 body. `value` is the offending value as text, absent when missing."""

    field: str
    constraint: str
    message: str
    value: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"field": self.field, "constraint": self.constraint, "message": self.message}
        if self.value is not None:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class ExecuteRequest:
    """A validated request; optional fields already hold their defaults."""

    job_id: str
    prompt: str
    max_tokens: int
    temperature: float = 1.0
    seed: int = DEFAULT_SEED
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    min_p: float = 0.0


@dataclass
class ValidationResult:
    request: ExecuteRequest | None = None
    errors: list[FieldError] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {"errors": [e.to_json() for e in self.errors]}


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def echo(value: Any) -> str:
    """The offending value as short text: strings verbatim, others as compact JSON; truncated."""
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) > VALUE_ECHO_CHARS:
        return f"{text[:VALUE_ECHO_CHARS]}... ({len(text)} chars)"
    return text


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float)) and not isinstance(v, bool)


class _Checker:
    """Collects every error instead of stopping at the first."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.errors: list[FieldError] = []

    def fail(self, name: str, constraint: str, message: str, value: Any = None) -> None:
        shown = None if value is None and name not in self.body else echo(value)
        self.errors.append(FieldError(name, constraint, message, shown))

    def wrong_type(self, name: str, expected: str, value: Any) -> None:
        self.fail(name, "type", f"{name} must be {expected}, got {_type_name(value)}", value)

    def required(self, name: str) -> Any:
        value = self.body.get(name)
        if value is None:
            self.errors.append(FieldError(name, "required", f"{name} is required"))
        return value

    def string(self, name: str, lo: int, hi: int) -> str | None:
        value = self.required(name)
        if value is None:
            return None
        if not isinstance(value, str):
            self.wrong_type(name, "a string", value)
            return None
        if len(value) == 0 and lo > 0:
            self.fail(name, "non_empty", f"{name} must not be empty", value)
            return None
        if not lo <= len(value) <= hi:
            self.fail(name, "length", f"{name} must be {lo} to {hi} characters, got {len(value)}",
                      value)
            return None
        return value

    def integer(self, name: str, lo: int, hi: int, default: int | None) -> int | None:
        value = self.required(name) if default is None else self.body.get(name)
        if value is None:
            return default
        if not _is_int(value):
            self.wrong_type(name, "an integer", value)
            return None
        if not lo <= value <= hi:
            self.fail(name, "range", f"{name} must be between {lo} and {hi}", value)
            return None
        return int(value)

    def number(self, name: str, lo: float, hi: float, default: float) -> float | None:
        value = self.body.get(name)
        if value is None:
            return default
        if not _is_number(value):
            self.wrong_type(name, "a number", value)
            return None
        if not lo <= value <= hi:
            self.fail(name, "range", f"{name} must be between {lo} and {hi}", value)
            return None
        return float(value)

    def stop(self) -> tuple[str, ...] | None:
        value = self.body.get("stop")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.wrong_type("stop", "an array of strings", value)
            return None
        ok = True
        if len(value) > STOP_MAX_ITEMS:
            self.fail("stop", "max_items",
                      f"stop must hold at most {STOP_MAX_ITEMS} strings, got {len(value)}", value)
            ok = False
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail("stop", "type", f"stop[{i}] must be a string, got {_type_name(item)}",
                          item)
                ok = False
            elif not 1 <= len(item) <= STOP_MAX_CHARS:
                self.fail("stop", "length",
                          f"stop[{i}] must be 1 to {STOP_MAX_CHARS} characters, got {len(item)}",
                          item)
                ok = False
        return tuple(value) if ok else None


def _body_error(constraint: str, message: str, value: Any = None) -> ValidationResult:
    shown = None if value is None else echo(value)
    return ValidationResult(errors=[FieldError("body", constraint, message, shown)])


def parse_json_body(raw: bytes) -> tuple[Any, ValidationResult | None]:
    """Decode bytes to a JSON value; on failure the 400 result for field `body`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, _body_error("utf8", f"request body is not valid UTF-8: {err}")
    if not text.strip():
        return None, _body_error("json", "request body is empty; expected a JSON object")
    try:
        data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as dup:
        return None, ValidationResult(
            errors=[FieldError(dup.key, "duplicate", f"duplicate field {dup.key}")]
        )
    except (ValueError, RecursionError) as err:
        return None, _body_error("json", f"request body is not valid JSON: {err}", text)
    return data, None


def validate_execute(raw: bytes) -> ValidationResult:
    """Validate a raw `/execute` body; unknown fields are ignored (serde's default)."""
    data, failed = parse_json_body(raw)
    if failed is not None:
        return failed
    return validate_execute_obj(data)


def validate_execute_obj(data: Any) -> ValidationResult:
    if not isinstance(data, dict):
        return _body_error("type", f"request body must be a JSON object, got {_type_name(data)}",
                           data)
    c = _Checker(data)
    job_id = c.string("job_id", 1, 2**31)
    prompt = c.string("prompt", 1, PROMPT_MAX_CHARS)
    max_tokens = c.integer("max_tokens", 1, MAX_TOKENS_MAX, None)
    temperature = c.number("temperature", 0.0, 2.0, 1.0)
    seed = c.integer("seed", 0, U64_MAX, DEFAULT_SEED)
    top_p = c.number("top_p", 0.0, 1.0, 1.0)
    top_k = c.integer("top_k", 0, U32_MAX, 0)
    repetition_penalty = c.number("repetition_penalty", 0.0, 2.0, 1.0)
    stop = c.stop()
    min_p = c.number("min_p", 0.0, 1.0, 0.0)
    if c.errors:
        return ValidationResult(errors=c.errors)
    assert job_id is not None and prompt is not None and max_tokens is not None
    assert temperature is not None and seed is not None and top_p is not None
    assert top_k is not None and repetition_penalty is not None and stop is not None
    assert min_p is not None
    return ValidationResult(
        request=ExecuteRequest(
            job_id=job_id, prompt=prompt, max_tokens=max_tokens, temperature=temperature,
            seed=seed, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
            stop=stop, min_p=min_p,
        )
    )
