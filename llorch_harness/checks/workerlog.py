"""Read a llorch-candled worker log as the real binary writes it, and find one request's facts.

The log (the worker's stdout and stderr in one file) holds three kinds of line:
tracing lines (`{"timestamp","level","fields":{"message": ...}}`), narration lines
(INFO, `fields` with `actor`/`action`/`human` and no `message`) and anything else,
such as a Rust panic on stderr. The stream alone cannot say how many tokens a
request generated: token events carry detokenizer *pieces* (several tokens may
make one piece, special tokens none), so the true count is `tokens_generated`
in the "Inference completed" line (contract, Logs section).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READ_LINE_LIMIT = 1 << 20  # a longer line is cut there, never read whole into memory
COMPLETED = "Inference completed"  # {tokens_generated, duration_ms, tokens_per_sec}
COMPLETE = "Inference complete"  # {job_id, tokens = number of pieces}
FAILED = "Inference failed"  # WARN {job_id, error}


@dataclass(frozen=True)
class LogLine:
    """One line of a worker log, parsed as far as it goes."""

    line_no: int
    raw: str
    kind: str  # "tracing" | "narration" | "other" (stderr, panics, anything not JSON)
    level: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str | None:
        """`fields.message` of a tracing line, `fields.human` of a narration line."""
        key = "message" if self.kind == "tracing" else "human"
        value = self.fields.get(key)
        return value if isinstance(value, str) else None


def parse_line(raw: str, line_no: int = 0) -> LogLine:
    """Classify one line; never raises (a worker may write anything)."""
    text = raw.strip()
    if not text.startswith("{"):
        return LogLine(line_no, raw, "other")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return LogLine(line_no, raw, "other")
    fields = obj.get("fields") if isinstance(obj, dict) else None
    if not isinstance(fields, dict):
        return LogLine(line_no, raw, "other")
    level = obj.get("level") if isinstance(obj.get("level"), str) else None
    kind = "tracing" if "message" in fields else "narration" if "actor" in fields else "other"
    return LogLine(line_no, raw, kind, level, fields)


def read_lines(path: Path, start_offset: int = 0) -> Iterator[LogLine]:
    """The log's lines from byte `start_offset` on, numbered as in the whole file.

    A log that shrank below the offset (rotated or truncated) is read from the start.
    Bytes that are not UTF-8 are replaced, never fatal.
    """
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
        while raw := fh.readline(READ_LINE_LIMIT):
            yield parse_line(raw.decode("utf-8", "replace").rstrip("\r\n"), line_no)
            if raw.endswith(b"\n"):
                line_no += 1


def log_size(path: Path | None) -> int:
    """The log's size now (0 when missing): the offset to read one request's lines from."""
    if path is None:
        return 0
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class GenerationFacts:
    """What the worker's log says about one request (None where the log said nothing)."""

    job_id: str
    tokens_generated: int | None = None  # sampled tokens, EOS excluded
    pieces: int | None = None  # "Inference complete" `tokens`: the token events sent
    duration_ms: int | None = None
    tokens_per_sec: int | None = None
    error: str | None = None  # "Inference failed" `error`
    line_nos: list[int] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Whether the log named this job at all."""
        return bool(self.line_nos)

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "tokens_generated": self.tokens_generated,
                "pieces": self.pieces, "duration_ms": self.duration_ms,
                "tokens_per_sec": self.tokens_per_sec, "error": self.error,
                "log_lines": self.line_nos}


def generation_facts(lines: Iterator[LogLine] | list[LogLine], job_id: str
                     ) -> GenerationFacts | None:
    """The facts of `job_id`, or None when the log never names it.

    "Inference completed" carries no job id: the worker is single-threaded, so the
    one logged since the previous request ended belongs to the next "Inference
    complete" {job_id}. A build that puts `job_id` on the completed line is read
    directly.
    """
    pending: LogLine | None = None
    for line in lines:
        if line.kind != "tracing":
            continue
        msg, f = line.message, line.fields
        if msg == COMPLETED:
            if f.get("job_id") == job_id:
                return _facts(job_id, line, None)
            pending = line
        elif msg == COMPLETE:
            if f.get("job_id") == job_id:
                return _facts(job_id, pending, line)
            pending = None
        elif msg == FAILED:
            if f.get("job_id") == job_id:
                err = f.get("error")
                return GenerationFacts(job_id, error=err if isinstance(err, str) else repr(err),
                                       line_nos=[line.line_no])
            pending = None
    return None


def _facts(job_id: str, completed: LogLine | None, complete: LogLine | None) -> GenerationFacts:
    out = GenerationFacts(job_id)
    if completed is not None:
        f = completed.fields
        out.tokens_generated = _int(f.get("tokens_generated"))
        out.duration_ms = _int(f.get("duration_ms"))
        out.tokens_per_sec = _int(f.get("tokens_per_sec"))
        if out.pieces is None:
            out.pieces = _int(f.get("tokens"))  # older builds: pieces on the completed line
        out.line_nos.append(completed.line_no)
    if complete is not None:
        out.pieces = _int(complete.fields.get("tokens"))
        out.line_nos.append(complete.line_no)
    return out


def facts_for(path: Path, job_id: str, start_offset: int = 0) -> GenerationFacts:
    """`generation_facts` read from a log file; `found` is False when the log (or a readable
    log) does not name the job."""
    try:
        facts = generation_facts(read_lines(Path(path), start_offset), job_id)
    except OSError:
        facts = None
    return facts if facts is not None else GenerationFacts(job_id)
