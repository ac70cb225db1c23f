"""Server-sent events framing, byte-capped per line (the worker client's parser).

Why its own parser: a hostile worker may send a 100 MB line or a flood of empty lines;
`SSEParser` never buffers more than `max_line_bytes` of one line and stays linear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

INCOMPLETE = "\x00incomplete"  # sentinel compared by identity: an event cut off by the end


class LineTooLong(Exception):
    """A line grew past `max_line_bytes` without a line end."""

    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


class SSEParser:
    """Line-by-line SSE framing (spec: CRLF, LF or CR line ends; `data` lines joined by LF)."""

    def __init__(self, max_line_bytes: int, on_line: Callable[[str], None]) -> None:
        self.max_line_bytes = max_line_bytes
        self.on_line = on_line
        self._buf = bytearray()
        self._data: list[str] = []
        self._fields: list[str] = []
        self._first_line = True

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, list[str]]]:
        """Yield (data or None, field names) for each completed event."""
        self._buf += chunk
        if b"\r" in self._buf:
            yield from self._feed_any()
            return
        *lines, rest = self._buf.split(b"\n")  # LF only, the usual case: split at C speed
        self._buf = rest
        for raw in lines:
            if len(raw) > self.max_line_bytes:
                raise LineTooLong(len(raw))
            ev = self._line(raw)
            if ev is not None:
                yield ev
        if len(rest) > self.max_line_bytes:
            raise LineTooLong(len(rest))

    def _feed_any(self) -> Iterator[tuple[str | None, list[str]]]:
        """Any line ends (CR, CRLF, LF), one line at a time."""
        start = 0
        try:
            while True:
                end = self._line_end(start)
                if end is None:
                    if len(self._buf) - start > self.max_line_bytes:
                        raise LineTooLong(len(self._buf) - start)
                    return
                pos, width = end
                if pos - start > self.max_line_bytes:
                    raise LineTooLong(pos - start)
                with memoryview(self._buf) as view:  # one copy of the line, not two
                    line = bytes(view[start:pos])
                start = pos + width
                ev = self._line(line)
                if ev is not None:
                    yield ev
        finally:
            del self._buf[:start]  # once per chunk: a flood of short lines stays linear

    def _line_end(self, start: int) -> tuple[int, int] | None:
        n = self._buf.find(b"\n", start)
        r = self._buf.find(b"\r", start, n if n >= 0 else len(self._buf))
        if r >= 0:
            if r == len(self._buf) - 1:
                return None  # a CR at the end may be half of a CRLF: wait for more bytes
            return r, 2 if self._buf[r + 1] == 0x0A else 1
        return (n, 1) if n >= 0 else None

    def finish(self) -> Iterator[tuple[str | None, list[str]]]:
        """End of stream: a trailing CR ends its line; an unterminated event is reported."""
        if self._buf.endswith(b"\r"):
            line = bytes(self._buf[:-1])
            self._buf.clear()
            ev = self._line(line)
            if ev is not None:
                yield ev
        if self._buf:
            self.on_line(bytes(self._buf).decode("utf-8", "replace"))
            self._buf.clear()
        if self._data or self._fields:
            yield (INCOMPLETE, list(self._fields))

    def _line(self, raw: bytes | bytearray) -> tuple[str | None, list[str]] | None:
        if self._first_line and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        self._first_line = False
        line = raw.decode("utf-8", "replace")
        self.on_line(line)
        if line == "":
            if not self._data and not self._fields:
                return None
            data = "\n".join(self._data) if self._data else None
            fields = self._fields
            self._data, self._fields = [], []
            return (data, fields)
        if line.startswith(":"):
            return None  # comment / keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        self._fields.append(name if sep else line)
        return None
