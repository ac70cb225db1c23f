"""Open a page the harness wrote in real headless Chromium (Debian's `chromium`) and tell
whether any planted payload ran.

API (small on purpose; other tests use it):

- `chromium()`: the browser's path. Without it the calling test is skipped with the reason,
  except in CI (`$CI` or `$LLORCH_REQUIRE_CHROMIUM` set; .ci/run installs the browser and
  sets the latter), where its absence fails the test.
- `open_page(path)`: loads a file, lets its scripts and timers run (virtual time), and
  returns a `Page`: the DOM as the page's own scripts left it, and Chromium's log (console
  messages included).
- `RUN_JS`: the JavaScript a payload carries. It writes `RAN_MARK` into the title and the
  body; `RAN_MARK` never appears literally in a payload, so finding it proves execution.
- `payloads()`: HTML/SVG/attribute/URL payloads that each run `RUN_JS` if not escaped.
- `Page.ran()`: the evidence that something ran (empty list: nothing did); `Page.live()`:
  elements that came out of a value as markup (an `on*` attribute, a `javascript:` URL,
  a `<script>` holding the payload) even if they did not fire.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
REQUIRE_ENV = "LLORCH_REQUIRE_CHROMIUM"  # set by .ci/run, which installs the browser
RAN_MARK = "LLORCH" + "-RAN-" + "PAYLOAD"  # what running RUN_JS writes; never in a payload
RUN_JS = ("document.title=['LLORCH','PAYLOAD'].join('-RAN-');"
          "document.body.append(['LLORCH','PAYLOAD'].join('-RAN-'))")
PAYLOAD_TAG = "llorchpwn"  # every payload names this, so its live remains can be found
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-extensions", "--disable-default-apps", "--mute-audio",
          "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000")
TIMEOUT_S = 240.0  # a hang guard only: a busy 2-core machine starts Chromium slowly


def payloads() -> list[tuple[str, str]]:
    """(id, value) pairs: each runs RUN_JS when a page puts the value in as markup."""
    js = RUN_JS.replace('"', "'")
    return [
        ("script", f"<script>/*{PAYLOAD_TAG}*/{js}</script>"),
        ("img-onerror", f"<img src=x class={PAYLOAD_TAG} onerror=\"{js}\">"),
        ("svg-onload", f"<svg class={PAYLOAD_TAG} onload=\"{js}\"></svg>"),
        ("svg-script", f"<svg><script>/*{PAYLOAD_TAG}*/{js}</script></svg>"),
        ("attr-breakout", f"\" class={PAYLOAD_TAG} onmouseover=\"{js}\" autofocus "
                          f"onfocus=\"{js}\" x=\""),
        ("attr-breakout-single", f"' class={PAYLOAD_TAG} autofocus onfocus='{js}' x='"),
        ("javascript-url", f"javascript:/*{PAYLOAD_TAG}*/{js}"),
        ("close-textarea", f"</textarea></title></style><img src=x class={PAYLOAD_TAG} "
                           f"onerror=\"{js}\">"),
        ("details-ontoggle", f"<details open class={PAYLOAD_TAG} ontoggle=\"{js}\">"),
    ]


@dataclass
class Page:
    dom: str
    log: str

    def ran(self) -> list[str]:
        """Evidence that payload JavaScript ran (empty: none did)."""
        out = []
        if RAN_MARK in self.dom:
            out.append(f"{RAN_MARK} found in the DOM after the page's scripts ran")
        if RAN_MARK in self.log:
            out.append(f"{RAN_MARK} found in Chromium's log")
        return out

    def live(self) -> list[str]:
        """Markup that came from a value: elements carrying the payload tag with an event
        handler, a `javascript:` URL, or a script holding it."""
        finder = _LiveFinder()
        finder.feed(self.dom)
        return finder.found


_URL_ATTRS = frozenset({"href", "src", "action", "formaction", "xlink:href", "data"})


class _LiveFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        values = " ".join(f"{k}={v}" for k, v in attrs)
        if PAYLOAD_TAG not in values and "-RAN-" not in values:
            return
        for name, value in attrs:
            url = name in _URL_ATTRS and (value or "").strip().lower().startswith("javascript:")
            if name.startswith("on") or url:
                self.found.append(f"<{tag} {name}=...> from a value")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and PAYLOAD_TAG in data:
            self.found.append("<script> holding a payload")


def chromium() -> str:
    """Chromium's path; skip (outside CI) or fail (in CI) when it is not installed."""
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path:
        return path
    if os.environ.get("CI") or os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{CHROMIUM} is missing in CI (.ci/run installs Debian's chromium)")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); reports are opened "
                "in a real browser")
    raise AssertionError("unreachable")


def open_page(path: Path | str) -> Page:
    """Load `path` in headless Chromium; the DOM after its scripts ran, and the log."""
    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="llorch-chromium-") as profile:
        argv = [exe, *_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                Path(path).resolve().as_uri()]
        env = {**os.environ, "HOME": profile}
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=TIMEOUT_S, env=env, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or "<html" not in proc.stdout.lower():
        raise AssertionError(f"chromium exited {proc.returncode} without a DOM: "
                             f"{proc.stderr[-2000:]}")
    return Page(proc.stdout, proc.stderr)
