"""The one layer every outside value passes on its way to a page, a Markdown file or a terminal.

Why one layer: values from outside (a worker binary's path, a pool's gate JSON, a results
store, a holder record in a shared directory, a catalog, a hub's answer) end up in HTML
reports people open, in MODEL_SUPPORT.md, and on terminals. Escaping each at the place it
is rendered misses one sooner or later; here escaping is the default and raw markup the
exception:

- HTML: `html(template, *values)` fills a template the harness wrote with values that are
  escaped unless they are already `Markup` (markupsafe, Jinja2's own escaping core). Every
  value is redacted first. `join` joins fragments without unescaping them. `inline_code`
  shows a checklist text's `code` spans as <code> instead of literal backticks.
- Markdown: `md_text` makes a value inline text that no renderer turns into a link, image,
  emphasis, code span, HTML or a table split; `md_code` makes it a code span whatever
  backticks it holds.
- Terminal: `term_text` shows control characters (ESC, CR, BEL, C1, bidi overrides) as
  visible escapes, so a record cannot clear a screen, set a title or fake a line.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from markupsafe import Markup, escape

from llorch_harness.redaction import redact

__all__ = ["Markup", "html", "inline_code", "join", "md_code", "md_text", "one_line", "term_text",
           "text"]

MAX_MD_TEXT = 300  # a value in a Markdown line is one line, not a log


def text(value: object) -> Markup:
    """A value as HTML text: redacted, then escaped (quotes included), unless it is Markup."""
    if isinstance(value, Markup):
        return value
    return escape(redact(str(value)))


def html(template: str, *args: Any, **kwargs: Any) -> Markup:
    """`template` (the harness's own markup, never a value) with `{}` fields filled by
    escaped, redacted values; a `Markup` value is inserted as it is."""
    return Markup(template).format(*(text(a) for a in args),
                                   **{k: text(v) for k, v in kwargs.items()})


def join(sep: str, parts: Iterable[object]) -> Markup:
    """Fragments joined by `sep` (the harness's markup); plain strings among them escaped."""
    return Markup(sep).join(text(p) for p in parts)


_CODE_SPAN = re.compile(r"`([^`]+)`")


def inline_code(value: object) -> Markup:
    """A text such as the seed's "`cargo fmt --all` clean" as HTML: each paired backtick span
    becomes `<code>`, everything else escaped text (so no backtick is shown raw)."""
    if isinstance(value, Markup):
        return value
    raw = redact(str(value))
    parts: list[Markup] = []
    last = 0
    for m in _CODE_SPAN.finditer(raw):
        parts.append(escape(raw[last:m.start()]))
        parts.append(Markup("<code>{}</code>").format(m.group(1)))
        last = m.end()
    parts.append(escape(raw[last:]))
    return Markup("").join(parts)


# --------------------------------------------------------------------------- Markdown

_SPACE = re.compile(r"\s+")
# The characters that start Markdown syntax inside a line: links and images need `[`,
# HTML and autolinks `<`, entities `&`, emphasis `*` `_` `~`, code spans a backtick, GFM
# cells `|`, GitHub's math `$`, and `\` itself. GFM's bare autolinks are broken where they
# would start: the `:` of `scheme://`, `mailto:` and `xmpp:`, the `.` of `www.`, and `@`.
# (`(`, `!`, `#`, `:` elsewhere and `_` inside a word mean nothing without the above,
# so values stay readable.)
_MD_SPECIAL = re.compile(r"[\\`*\[\]<>|&~$@]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])"
                         r"|(?<=[A-Za-z]):(?=//)|(?<=mailto):|(?<=xmpp):|(?<=www)\.",
                         re.IGNORECASE)


def one_line(value: object, limit: int = MAX_MD_TEXT) -> str:
    """A value on one line (runs of whitespace, newlines included, become one space),
    redacted and cut to `limit` characters."""
    line = term_text(_SPACE.sub(" ", redact(str(value)))).strip()
    return line if len(line) <= limit else line[:limit - 1] + "…"


def md_text(value: object, limit: int = MAX_MD_TEXT) -> str:
    """A value as Markdown inline text: every markup character backslash-escaped, so it
    renders as exactly its characters (no link, image, HTML, emphasis, code span, cell
    split or autolink)."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), one_line(value, limit))


def md_code(value: object, limit: int = MAX_MD_TEXT, *, table: bool = False) -> str:
    """A value as a Markdown code span: a fence longer than any backtick run in it
    (CommonMark), padded when it starts or ends with a backtick; in a GFM table cell `|`
    is escaped (the cell split happens before inline parsing). Entities are not touched:
    inside a code span `&lt;` would show as those four characters."""
    line = one_line(value, limit)
    if table:
        line = line.replace("|", "\\|")
    runs = [len(r) for r in re.findall(r"`+", line)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if line.startswith(("`", " ")) or line.endswith(("`", " ")) or not line else ""
    return f"{fence}{pad}{line}{pad}{fence}"


# --------------------------------------------------------------------------- terminal

_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _visible(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def term_text(value: object) -> str:
    """A value safe to print on one line: every control character (C0 newline included,
    DEL, C1, line/paragraph separators, bidi overrides) shown as a visible `\\xNN` escape,
    so nothing from outside moves the cursor, clears the screen, sets a title, fakes a line
    or reorders text."""
    return "".join(_visible(ch) if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Zl", "Zp")
                   else ch for ch in str(value))
