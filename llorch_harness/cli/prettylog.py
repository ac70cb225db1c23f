"""`worker logs --pretty`: a worker's JSON log lines as a person reads them.

Why: llorch-candled writes one JSON object a line (tracing and narration, see
checks/workerlog.py), which is exact but hard to read on a terminal. Pretty form: time,
level, the message (a narration line's `human`), then every other field as key=value, in
the order the worker wrote them. A line that is not such JSON (a panic on stderr) is shown
as it is, so nothing the worker said is hidden.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TextIO

from llorch_harness.checks.workerlog import parse_line

_TOP_SKIP = ("timestamp", "level", "fields")


def _value(value: Any) -> str:
    """A field's value: bare when it is one word, JSON (quoted) otherwise."""
    if not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    plain = value and not any(c.isspace() or c in '"=' for c in value)
    return value if plain else json.dumps(value, ensure_ascii=False)


def pretty_line(raw: str) -> str:
    """One log line in pretty form (unchanged when it is not a worker's JSON line)."""
    parsed = parse_line(raw)
    if parsed.kind == "other":
        return raw
    obj = json.loads(raw)
    key = "message" if parsed.kind == "tracing" else "human"
    parts = [str(obj.get("timestamp") or "-"), f"{(parsed.level or '-'):<5}",
             parsed.message or ""]
    rest = {k: v for k, v in parsed.fields.items() if k != key}
    rest.update({k: v for k, v in obj.items() if k not in _TOP_SKIP})
    parts += [f"{k}={_value(v)}" for k, v in rest.items()]
    return " ".join(p for p in parts if p)


def pretty_text(text: str) -> str:
    return "\n".join(pretty_line(line) for line in text.split("\n"))


class LineWriter:
    """A text stream that hands `out` whole lines, each through `transform` (a followed log
    arrives in reads that cut lines anywhere). A line longer than MAX_PENDING (a
    `\r`-redrawn progress bar) is let through in pieces."""

    MAX_PENDING = 64 * 1024

    def __init__(self, out: TextIO, transform: Callable[[str], str]) -> None:
        self.out = out
        self.transform = transform
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        if "\n" in self.pending:
            done, _, self.pending = self.pending.rpartition("\n")
            self.out.write(self.transform(done) + "\n")
        if len(self.pending) > self.MAX_PENDING:
            self.out.write(self.transform(self.pending))
            self.pending = ""
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        if self.pending:
            self.out.write(self.transform(self.pending))
            self.pending = ""
        self.out.flush()


def pretty_writer(out: TextIO) -> LineWriter:
    """`logs -f --pretty`: whole lines pretty-printed into `out`."""
    return LineWriter(out, pretty_text)
