"""`POST /execute` body extraction as axum 0.8's `Json<ExecuteRequest>` extractor does it.

Why a hand-written JSON reader: the real worker rejects bad bodies *before* its own
validation, with axum's plain-text answers, and the harness must see the same status
codes and texts:

- no `Content-Type: application/json` (or `application/*+json`) → 415
  ``Expected request with `Content-Type: application/json` ``;
- a body over 2 MiB → 413 (the server checks that, see server.py);
- bad JSON syntax → 400 ``Failed to parse the request body as JSON: <serde_json error>``;
- a missing field or a wrong type → 422 ``Failed to deserialize the JSON body into the
  target type: <path>: <serde error> at line L column C``.

serde_json reads the body as a stream and stops at the *first* problem, in document order
(a type error in an early field wins over a syntax error later on), so Python's `json`
module cannot reproduce which error is reported or where. This module walks the bytes the
way serde_json's `Deserializer::from_slice` does for the derived `ExecuteRequest` (field
order job_id, prompt, max_tokens, temperature, seed, top_p, top_k, repetition_penalty, stop,
min_p; defaults as its `#[serde(default)]` attributes), with serde's messages
(``invalid type: string "8", expected u32``, ``missing field `job_id` ``, ``duplicate field
`prompt` ``) and serde_path_to_error's path prefix (``max_tokens: ``, ``stop[0]: ``).
Unknown fields are ignored (their values must still be valid JSON); `"seed": null` is None.
Positions follow serde_json's rules closely but are not guaranteed byte-exact in every case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from llorch_harness.lab.refworker.jsonlexer import U64_MAX, JsonLexer, SerdeError

__all__ = [
    "JSON_CONTENT_TYPE_MESSAGE",
    "JsonRejection",
    "RawExecuteRequest",
    "extract_execute",
    "is_json_content_type",
    "rust_float_display",
]

JSON_CONTENT_TYPE_MESSAGE = "Expected request with `Content-Type: application/json`"
SYNTAX_PREFIX = "Failed to parse the request body as JSON"
DATA_PREFIX = "Failed to deserialize the JSON body into the target type"
STRUCT_NAME = "ExecuteRequest"
U32_MAX = 2**32 - 1


class JsonRejection(Exception):
    """What axum answers instead of calling the handler: status and text/plain body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True)
class RawExecuteRequest:
    """The deserialized body, typed as the Rust struct (f32 fields already rounded to f32)."""

    job_id: str
    prompt: str
    max_tokens: int
    temperature: float = 1.0
    seed: int | None = None
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    min_p: float = 0.0


# (name, kind, default); kind drives the typed reader; REQUIRED marks no default.
_REQUIRED = object()
FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("job_id", "string", _REQUIRED),
    ("prompt", "string", _REQUIRED),
    ("max_tokens", "u32", _REQUIRED),
    ("temperature", "f32", 1.0),
    ("seed", "option_u64", None),
    ("top_p", "f32", 1.0),
    ("top_k", "u32", 0),
    ("repetition_penalty", "f32", 1.0),
    ("stop", "vec_string", ()),
    ("min_p", "f32", 0.0),
)
_KINDS = dict((name, kind) for name, kind, _ in FIELDS)
_EXPECTED = {"string": "a string", "u32": "u32", "u64": "u64", "option_u64": "u64",
             "f32": "f32", "vec_string": "a sequence"}


def rust_float_display(value: float, f32: bool = False) -> str:
    """Rust's `Display` for f64 (or f32): shortest round-trip digits, never an exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    x = np.float32(value) if f32 else np.float64(value)
    return np.format_float_positional(x, unique=True, trim="-")


def _rust_debug_str(s: str) -> str:
    """Rust's `{:?}` of a str (enough for error texts): quotes and the common escapes."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\0":
            out.append("\\0")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _unexpected(kind: str, value: Any) -> str:
    """serde's `Unexpected` display."""
    if kind == "bool":
        return f"boolean `{'true' if value else 'false'}`"
    if kind in ("u64", "i64"):
        return f"integer `{value}`"
    if kind == "f64":
        text = rust_float_display(value)
        return f"floating point `{text if '.' in text or 'inf' in text else text + '.0'}`"
    if kind == "str":
        return f"string {_rust_debug_str(value)}"
    return {"null": "null", "seq": "sequence", "map": "map"}[kind]


class _Reader(JsonLexer):
    """The typed visit of `ExecuteRequest` over serde_json's reader."""

    # -- typed values (the struct's fields) ------------------------------------------------

    def invalid_type(self, expected: str) -> SerdeError:
        """serde_json's `peek_invalid_type`: consume a scalar, then name what it was."""
        c = self.peek()
        idents = {0x6E: (b"ull", "null"), 0x74: (b"rue", True), 0x66: (b"alse", False)}
        if c in idents:
            self.i += 1
            rest, value = idents[c]
            self.ident(rest)
            unexpected = _unexpected("null", None) if value == "null" else _unexpected(
                "bool", value)
        elif c is not None and (c == 0x2D or 0x30 <= c <= 0x39):
            unexpected = _unexpected(*self.number())
        elif c == 0x22:
            self.i += 1
            unexpected = _unexpected("str", self.string())
        elif c in (0x5B, 0x7B):
            unexpected = _unexpected("seq" if c == 0x5B else "map", None)
        else:
            return self.peek_err("expected value")
        return self.data_err(f"invalid type: {unexpected}, expected {expected}")

    def typed(self, kind: str, path: str) -> Any:
        """One field value of Rust type `kind`; errors inside carry `path`."""
        try:
            return self._typed(kind, path)
        except SerdeError as err:
            if err.path is None:
                err.path = path
            raise

    def _typed(self, kind: str, path: str) -> Any:
        c = self.ws()
        if c is None:
            raise self.peek_err("EOF while parsing a value")
        if kind == "string":
            if c != 0x22:
                raise self.invalid_type("a string")
            self.i += 1
            return self.string()
        if kind == "vec_string":
            return self.string_seq(c, path)
        if kind == "option_u64":
            if c == 0x6E:
                self.i += 1
                self.ident(b"ull")
                return None
            kind = "u64"
        if c != 0x2D and not 0x30 <= c <= 0x39:
            raise self.invalid_type(_EXPECTED[kind])
        return self.convert(kind, *self.number())

    def convert(self, kind: str, num_kind: str, value: Any) -> Any:
        """serde's primitive visitors: f32 takes any number (`as f32`), u32/u64 integers only."""
        if kind == "f32":
            with np.errstate(over="ignore"):
                return float(np.float32(value))
        if num_kind == "f64":
            raise self.data_err(f"invalid type: {_unexpected('f64', value)}, expected {kind}")
        if num_kind == "i64" or value > (U32_MAX if kind == "u32" else U64_MAX):
            raise self.data_err(f"invalid value: {_unexpected(num_kind, value)}, expected {kind}")
        return int(value)

    def has_next(self, first: bool) -> bool:
        """serde_json's SeqAccess: is there another element (commas checked)?"""
        c = self.ws()
        if c == 0x5D:
            return False
        if c is None:
            raise self.peek_err("EOF while parsing a list")
        if not first:
            if c != 0x2C:
                raise self.peek_err("expected `,` or `]`")
            self.i += 1
            c = self.ws()
            if c == 0x5D:
                raise self.peek_err("trailing comma")
            if c is None:
                raise self.peek_err("EOF while parsing a value")
        return True

    def string_seq(self, c: int, path: str) -> tuple[str, ...]:
        if c != 0x5B:
            raise self.invalid_type("a sequence")
        self.i += 1
        items: list[str] = []
        try:
            while self.has_next(first=not items):
                items.append(self.typed("string", f"{path}[{len(items)}]"))
        finally:
            self.end_seq(quiet=True)
        return tuple(items)

    def end_seq(self, quiet: bool = False) -> None:
        c = self.ws()
        if c == 0x5D:
            self.i += 1
            return
        if quiet:
            return
        if c == 0x2C:
            self.i += 1
            raise self.peek_err("trailing comma" if self.ws() == 0x5D else "trailing characters")
        raise self.peek_err("EOF while parsing a list" if c is None else "trailing characters")

    def end_map(self) -> None:
        c = self.ws()
        if c == 0x7D:
            self.i += 1
            return
        if c == 0x2C:
            raise self.peek_err("trailing comma")
        raise self.peek_err("EOF while parsing an object" if c is None else "trailing characters")

    # -- the struct ------------------------------------------------------------------------

    def struct(self) -> dict[str, Any]:
        """`ExecuteRequest::deserialize`: a map (by key) or a sequence (by position)."""
        c = self.ws()
        if c is None:
            raise self.peek_err("EOF while parsing a value")
        if c == 0x7B:
            self.i += 1
            return self.finish(self.struct_map, self.end_map)
        if c == 0x5B:
            self.i += 1
            return self.finish(self.struct_seq, self.end_seq)
        raise self.invalid_type(f"struct {STRUCT_NAME}")

    def finish(self, visit: Any, end: Any) -> dict[str, Any]:
        """Run the visitor, then the end check; a visitor-made error (missing or duplicate
        field) gets its position only after the end check, as serde_json's `fix_position`."""
        try:
            values = visit()
        except SerdeError as err:
            if err.index is None:
                try:
                    end()
                except SerdeError:
                    pass
                err.index = self.i
            raise
        end()
        return values

    def map_key(self, first: bool) -> str | None:
        c = self.ws()
        if c == 0x7D:
            return None
        if c is None:
            raise self.peek_err("EOF while parsing an object")
        if not first:
            if c != 0x2C:
                raise self.peek_err("expected `,` or `}`")
            self.i += 1
            c = self.ws()
        if c == 0x22:
            self.i += 1
            return self.string()
        if c == 0x7D:
            raise self.peek_err("trailing comma")
        raise self.peek_err("EOF while parsing a value" if c is None else "key must be a string")

    def struct_map(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        first = True
        while (key := self.map_key(first)) is not None:
            first = False
            if key in _KINDS and key in values:
                raise SerdeError(f"duplicate field `{key}`", None, False)
            self.colon()
            if key in _KINDS:
                values[key] = self.typed(_KINDS[key], key)
            else:
                self.ignored(key)
        for name, _, default in FIELDS:
            if name not in values:
                if default is _REQUIRED:
                    raise SerdeError(f"missing field `{name}`", None, False)
                values[name] = default
        return values

    def ignored(self, key: str) -> None:
        try:
            self.ignore_value()
        except SerdeError as err:
            if err.path is None:
                err.path = key
            raise

    def struct_seq(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        read_any = False
        for idx, (name, kind, default) in enumerate(FIELDS):
            if not self.has_next(first=not read_any):
                if default is _REQUIRED:
                    raise SerdeError(f"invalid length {idx}, expected struct {STRUCT_NAME} "
                                      f"with {len(FIELDS)} elements", None, False)
                values[name] = default
                continue
            read_any = True
            values[name] = self.typed(kind, f"[{idx}]")
        return values


def is_json_content_type(value: str | None) -> bool:
    """axum's `json_content_type`: `application/json` or `application/<x>+json`."""
    if not value:
        return False
    essence = value.split(";", 1)[0].strip().lower()
    kind, sep, subtype = essence.partition("/")
    if not sep or not kind or not subtype or any(ch in essence for ch in " \t\"(),:<=>?@[\\]{}"):
        return False
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _rejection(reader: _Reader, err: SerdeError) -> JsonRejection:
    index = reader.i if err.index is None else err.index
    line, column = reader.position(index)
    path = f"{err.path}: " if err.path else ""
    text = f"{path}{err.message} at line {line} column {column}"
    if err.syntax:
        return JsonRejection(400, f"{SYNTAX_PREFIX}: {text}")
    return JsonRejection(422, f"{DATA_PREFIX}: {text}")


def extract_execute(content_type: str | None, body: bytes) -> RawExecuteRequest:
    """The request as the handler receives it, or :class:`JsonRejection` (415/400/422)."""
    if not is_json_content_type(content_type):
        raise JsonRejection(415, JSON_CONTENT_TYPE_MESSAGE)
    reader = _Reader(body)
    try:
        values = reader.struct()
        if reader.ws() is not None:
            raise reader.peek_err("trailing characters")
    except SerdeError as err:
        raise _rejection(reader, err) from None
    return RawExecuteRequest(**values)
