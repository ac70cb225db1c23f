"""Which marker names a `-m` expression can select, without pytest's private parser.

Why our own: the lab decision needs to know, before collection, whether `-m "cpu or cuda"`
selects the cuda backend; pytest evaluates `-m` only per item and its expression class is
private (`_pytest.mark.expression`). The grammar is pytest's documented one: identifiers,
`and`, `or`, `not`, parentheses, and `name(key=value, ...)` keyword matches (which, as in
pytest's evaluation with a name-only matcher, count as the bare name).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_TOKEN = re.compile(
    r"""\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|(?P<eq>=)
    |(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<ident>(?:\w|:|\+|-|\.|\[|\]|\\|/)+))""",
    re.VERBOSE,
)
KEYWORDS = ("and", "or", "not")


class ExpressionError(ValueError):
    """The `-m` text is not a marker expression (pytest reports it; we select everything)."""


def tokenize(text: str) -> list[tuple[str, str]]:
    """(kind, text) pairs; kinds: lp rp comma eq str ident and or not."""
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExpressionError(f"unexpected character {text[pos]!r} at column {pos + 1}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        out.append((value if kind == "ident" and value in KEYWORDS else kind, value))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over the tokens; evaluates while parsing (the inputs are tiny)."""

    def __init__(self, tokens: list[tuple[str, str]], matches: Callable[[str], bool]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.matches = matches

    def peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self, kind: str) -> str:
        if self.peek() != kind:
            raise ExpressionError(f"expected {kind}, got {self.peek() or 'end of input'}")
        self.pos += 1
        return self.tokens[self.pos - 1][1]

    def expr(self) -> bool:
        value = self.and_expr()
        while self.peek() == "or":
            self.take("or")
            value = self.and_expr() or value
        return value

    def and_expr(self) -> bool:
        value = self.not_expr()
        while self.peek() == "and":
            self.take("and")
            value = self.not_expr() and value
        return value

    def not_expr(self) -> bool:
        if self.peek() == "not":
            self.take("not")
            return not self.not_expr()
        if self.peek() == "lp":
            self.take("lp")
            value = self.expr()
            self.take("rp")
            return value
        name = self.take("ident")
        if self.peek() == "lp":  # name(key=value, ...): the keywords are not ours to judge
            self.take("lp")
            while self.peek() != "rp":
                self.take("ident")
                self.take("eq")
                self.pos += 1 if self.peek() in ("str", "ident") else 0
                if self.peek() != "rp":
                    self.take("comma")
            self.take("rp")
        return self.matches(name)


def evaluate(text: str, matches: Callable[[str], bool]) -> bool:
    """Value of the expression when `matches(name)` says which marker names are present."""
    tokens = tokenize(text)
    if not tokens:
        raise ExpressionError("empty expression")
    parser = _Parser(tokens, matches)
    value = parser.expr()
    if parser.pos != len(tokens):
        raise ExpressionError(f"unexpected {tokens[parser.pos][1]!r} after the expression")
    return value


def names(text: str) -> list[str]:
    """Every marker name the expression mentions, in order (keyword arguments excluded).
    Raises ExpressionError for text that is not an expression."""
    seen: list[str] = []

    def record(name: str) -> bool:
        if name not in seen:
            seen.append(name)
        return False

    evaluate(text, record)
    return seen
