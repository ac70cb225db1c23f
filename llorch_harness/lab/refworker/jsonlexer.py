"""serde_json's reading of a byte slice, the untyped part: positions, strings, numbers,
skipped values and object keys, with serde_json's error messages.

Why apart from jsonbody.py: this is the lexical layer of serde_json; jsonbody.py adds the
typed visit of the derived `ExecuteRequest` on top of it.
"""

from __future__ import annotations

import math
from typing import Any

U64_MAX = 2**64 - 1
_WS = b" \n\t\r"
_ESCAPES = {ord('"'): '"', ord("\\"): "\\", ord("/"): "/", ord("b"): "\b", ord("f"): "\f",
            ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}


class SerdeError(Exception):
    """A serde_json error: message, byte index of its position, syntax or data, path."""

    def __init__(self, message: str, index: int | None, syntax: bool) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
        self.syntax = syntax
        self.path: str | None = None


class JsonLexer:
    """serde_json's SliceRead plus the untyped parts of its Deserializer: whitespace,
    strings, numbers, skipping ignored values, keys."""

    def __init__(self, data: bytes) -> None:
        self.b = data
        self.i = 0

    # -- positions and errors -------------------------------------------------------------

    def err(self, message: str, syntax: bool = True) -> SerdeError:
        return SerdeError(message, self.i, syntax)

    def peek_err(self, message: str) -> SerdeError:
        return SerdeError(message, min(self.i + 1, len(self.b)), True)

    def data_err(self, message: str) -> SerdeError:
        return SerdeError(message, self.i, False)

    def position(self, index: int) -> tuple[int, int]:
        start = self.b.rfind(b"\n", 0, index) + 1
        return 1 + self.b.count(b"\n", 0, start), index - start

    # -- bytes ----------------------------------------------------------------------------

    def ws(self) -> int | None:
        while self.i < len(self.b) and self.b[self.i] in _WS:
            self.i += 1
        return self.b[self.i] if self.i < len(self.b) else None

    def peek(self) -> int | None:
        return self.b[self.i] if self.i < len(self.b) else None

    def ident(self, rest: bytes) -> None:
        for expected in rest:
            got = self.peek()
            if got is None:
                raise self.err("EOF while parsing a value")
            self.i += 1
            if got != expected:
                raise self.err("expected ident")

    # -- strings ----------------------------------------------------------------------------

    def string(self, strict: bool = True) -> str:
        """The string after its opening quote (already eaten); `strict=False` is serde's
        `ignore_str` (no UTF-8 or surrogate checks, for ignored fields)."""
        out = bytearray()
        start = self.i
        while True:
            c = self.peek()
            if c is None:
                raise self.err("EOF while parsing a string")
            if c == 0x22:  # closing quote
                out += self.b[start : self.i]
                self.i += 1
                break
            if c == 0x5C:  # backslash
                out += self.b[start : self.i]
                self.i += 1
                out += self.escape(strict).encode("utf-8", "surrogatepass")
                start = self.i
            elif c < 0x20:
                self.i += 1
                raise self.err("control character (\\u0000-\\u001F) found while parsing a string")
            else:
                self.i += 1
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            if not strict:
                return out.decode("utf-8", "replace")
            raise self.err("invalid unicode code point") from None

    def escape(self, strict: bool) -> str:
        c = self.peek()
        if c is None:
            raise self.err("EOF while parsing a string")
        self.i += 1
        if c in _ESCAPES:
            return _ESCAPES[c]
        if c != ord("u"):
            raise self.err("invalid escape")
        n = self.hex4()
        if not strict or not 0xD800 <= n <= 0xDFFF:
            return chr(n)
        if n >= 0xDC00:
            raise self.err("lone leading surrogate in hex escape")
        if self.b[self.i : self.i + 2] != b"\\u":
            self.i = min(self.i + 1, len(self.b))
            raise self.err("unexpected end of hex escape")
        self.i += 2
        low = self.hex4()
        if not 0xDC00 <= low <= 0xDFFF:
            raise self.err("lone leading surrogate in hex escape")
        return chr(0x10000 + ((n - 0xD800) << 10) + (low - 0xDC00))

    def hex4(self) -> int:
        digits = self.b[self.i : self.i + 4]
        if len(digits) < 4:
            self.i = len(self.b)
            raise self.err("EOF while parsing a string")
        self.i += 4
        try:
            return int(digits.decode("ascii"), 16)
        except (UnicodeDecodeError, ValueError):
            raise self.err("invalid escape") from None

    # -- numbers ----------------------------------------------------------------------------

    def digits(self) -> None:
        while (c := self.peek()) is not None and 0x30 <= c <= 0x39:
            self.i += 1

    def number(self, strict: bool = True) -> tuple[str, Any]:
        """At '-' or a digit: ("u64"|"i64"|"f64", value) as serde_json's ParserNumber."""
        start = self.i
        neg = self.peek() == 0x2D
        if neg:
            self.i += 1
        self.int_part()
        is_float = self.fraction() | self.exponent()
        text = self.b[start : self.i].decode("ascii")
        if not is_float:
            v = int(text)
            if not neg and v <= U64_MAX:
                return "u64", v
            if neg and v != 0 and v >= -(2**63):
                return "i64", v
        f = float(text)
        if math.isinf(f) and strict:
            raise self.err("number out of range")
        return "f64", f

    def int_part(self) -> None:
        c = self.peek()
        if c is None:
            raise self.err("EOF while parsing a value")
        self.i += 1
        if c == 0x30:
            if (d := self.peek()) is not None and 0x30 <= d <= 0x39:
                raise self.peek_err("invalid number")
        elif 0x31 <= c <= 0x39:
            self.digits()
        else:
            raise self.err("invalid number")

    def fraction(self) -> bool:
        if self.peek() != 0x2E:
            return False
        self.i += 1
        c = self.peek()
        if c is None:
            raise self.peek_err("EOF while parsing a value")
        if not 0x30 <= c <= 0x39:
            raise self.peek_err("invalid number")
        self.digits()
        return True

    def exponent(self) -> bool:
        if self.peek() not in (0x65, 0x45):
            return False
        self.i += 1
        if self.peek() in (0x2B, 0x2D):
            self.i += 1
        c = self.peek()
        if c is None:
            raise self.err("EOF while parsing a value")
        self.i += 1
        if not 0x30 <= c <= 0x39:
            raise self.err("invalid number")
        self.digits()
        return True

    # -- any value (serde's IgnoredAny) ----------------------------------------------------

    def ignore_value(self) -> None:
        """Check the syntax of one value of an unknown field (iterative, like serde_json)."""
        stack: list[int] = []
        while True:
            c = self.ws()
            if c is None:
                raise self.peek_err("EOF while parsing a value")
            if c in (0x5B, 0x7B):
                self.i += 1
                if self.ignore_open(c):
                    stack.append(c)
                    continue  # read the container's first item
            else:
                self.ignore_scalar(c)
            while stack:  # a value is complete: close what closes after it
                if not self.ignore_after_item(stack):
                    break  # a comma: the next item follows
            else:
                return

    def ignore_open(self, c: int) -> bool:
        """Just after '[' or '{': False when it closes at once (then it is consumed)."""
        close = 0x5D if c == 0x5B else 0x7D
        nxt = self.ws()
        if nxt == close:
            self.i += 1
            return False
        if c == 0x7B:
            self.object_key(first=True)
            self.colon()
        return True

    def ignore_scalar(self, c: int) -> None:
        idents = {0x6E: b"ull", 0x74: b"rue", 0x66: b"alse"}
        if c in idents:
            self.i += 1
            self.ident(idents[c])
        elif c == 0x2D or 0x30 <= c <= 0x39:
            self.number(strict=False)
        elif c == 0x22:
            self.i += 1
            self.string(strict=False)
        else:
            raise self.peek_err("expected value")

    def ignore_after_item(self, stack: list[int]) -> bool:
        """After an item of the innermost open container: True when that container closed."""
        top = stack[-1]
        close, what = (0x5D, "list") if top == 0x5B else (0x7D, "object")
        c = self.ws()
        if c == close:
            self.i += 1
            stack.pop()
            return True
        if c is None:
            raise self.peek_err(f"EOF while parsing {'a list' if what == 'list' else 'an object'}")
        if c != 0x2C:
            raise self.peek_err(f"expected `,` or `{chr(close)}`")
        self.i += 1
        if self.ws() == close:
            raise self.peek_err("trailing comma")
        if top == 0x7B:
            self.object_key(first=False)
            self.colon()
        return False

    # -- object plumbing -------------------------------------------------------------------

    def object_key(self, first: bool) -> str:
        c = self.ws()
        if c == 0x22:
            self.i += 1
            return self.string()
        if c is None:
            raise self.peek_err("EOF while parsing a value" if not first
                                else "EOF while parsing an object")
        raise self.peek_err("key must be a string")

    def colon(self) -> None:
        c = self.ws()
        if c == 0x3A:
            self.i += 1
            return
        raise self.peek_err("EOF while parsing an object" if c is None else "expected `:`")
