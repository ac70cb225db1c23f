"""What a person reads in a report, and what must never be in it (issue 28 item 2).

- `readable_text(page)`: the text of an HTML page as a reader gets it without a browser
  (scripts, styles, templates and the head left out), for pages that build nothing with
  JavaScript (the merged page, the history page, the gate's own summary blocks).
- `text_problems(text)`: `None` shown as a value, a Python tuple such as
  `('/path/test.py', 110, 'Skipped: ...')`, raw Markdown (backticks, `**`, `[x](y)`).
- `attachments(page)`: the texts of a self-contained report's data: URL attachments.
"""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

_SKIPPED_TAGS = frozenset({"script", "style", "template", "head", "title"})
NONE_WORD = re.compile(r"(?<![\w'\"-])None(?![\w'\"-])")
PY_TUPLE = re.compile(r"\(\s*'[^'\n]*',\s*\d+,\s*'")
MARKDOWN = (("a backtick", re.compile(r"`")), ("**", re.compile(r"\*\*")),
            ("a Markdown link", re.compile(r"\[[^\]\n]+\]\([^)\n]+\)")))


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip += 1
        elif tag in ("br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "td", "th"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def readable_text(page: str) -> str:
    parser = _Text()
    parser.feed(page)
    return "".join(parser.parts)


def _context(text: str, m: re.Match[str]) -> str:
    return text[max(0, m.start() - 60):m.end() + 60].replace("\n", " | ")


def text_problems(text: str, *, markdown: bool = True) -> list[str]:
    """Each `None`, Python tuple and (with `markdown`) raw Markdown mark, with its context."""
    found = [f"None: ...{_context(text, m)}..." for m in NONE_WORD.finditer(text)]
    found += [f"a Python tuple: ...{_context(text, m)}..." for m in PY_TUPLE.finditer(text)]
    if markdown:
        for name, pattern in MARKDOWN:
            found += [f"{name}: ...{_context(text, m)}..." for m in pattern.finditer(text)]
    return found


def attachments(page: str) -> list[str]:
    """The decoded text of every base64 data: URL in the page (self-contained attachments)."""
    out = []
    for chunk in re.findall(r"data:[\w/+.-]+(?:;[\w=-]+)*;base64,([A-Za-z0-9+/=]+)", page):
        try:
            out.append(base64.b64decode(chunk).decode("utf-8", "replace"))
        except ValueError:
            continue
    return out
