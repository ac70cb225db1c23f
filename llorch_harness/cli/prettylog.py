"""`worker logs --pretty`: a worker's JSON log lines as a person reads them.

Why: llorch-candled writes one JSON object a line (tracing and narration, see
checks/workerlog.py), which is exact but hard to read on a terminal. Pretty form: time,
level, the message (a narration line's `human`), then every other field as key=value, in
the order the worker wrote them. A line that is not such JSON (a panic on stderr) is shown
as it is, so nothing the worker said is hidden.
"""

from __future__ import annotations

import json
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


class PrettyWriter:
    """A text stream that pretty-prints whole lines into `out` (for `logs -f --pretty`)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        if "\n" in self.pending:
            done, _, self.pending = self.pending.rpartition("\n")
            self.out.write(pretty_text(done) + "\n")
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        if self.pending:
            self.out.write(pretty_line(self.pending))
            self.pending = ""
        self.out.flush()
