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
- `look_at(path, selectors)`: what a person sees at 1280x800 (issue 28 item 3): a copy of
  the page with a probe script in front of its own, so the page's script errors (uncaught
  errors, rejections, `console.error`) are caught, and after load each selector's boxes
  (`getBoundingClientRect`, viewport coordinates, page scrolled to the top) and the text
  a person can read (`innerText` after pytest-html's "Show all details", logs apart).
"""

from __future__ import annotations

import html as htmlmod
import json
import os
import re
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


def open_page(path: Path | str, *flags: str) -> Page:
    """Load `path` in headless Chromium; the DOM after its scripts ran, and the log."""
    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="llorch-chromium-") as profile:
        argv = [exe, *_FLAGS, *flags, f"--user-data-dir={profile}", "--dump-dom",
                Path(path).resolve().as_uri()]
        env = {**os.environ, "HOME": profile}
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=TIMEOUT_S, env=env, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or "<html" not in proc.stdout.lower():
        raise AssertionError(f"chromium exited {proc.returncode} without a DOM: "
                             f"{proc.stderr[-2000:]}")
    return Page(proc.stdout, proc.stderr)


WINDOW = (1280, 800)
PROBE_ID = "llorch-probe"
_PROBE_JS = """(function(){
var errs=[];
window.addEventListener('error',function(e){errs.push('error: '+e.message+' at '+
  (e.filename||'')+':'+(e.lineno||''));});
window.addEventListener('unhandledrejection',function(e){errs.push('rejection: '+e.reason);});
var ce=console.error;console.error=function(){
  errs.push('console.error: '+Array.prototype.join.call(arguments,' '));
  return ce.apply(console,arguments);};
window.addEventListener('load',function(){setTimeout(function(){
  window.scrollTo(0,0);
  var out={viewport:[innerWidth,innerHeight],rects:{},errors:errs};
  SELECTORS.forEach(function(s){out.rects[s]=Array.prototype.map.call(
    document.querySelectorAll(s),function(el){var r=el.getBoundingClientRect();
    return {top:r.top,left:r.left,width:r.width,height:r.height,
            text:(el.innerText||'').slice(0,400)};});});
  var show=document.getElementById('show_all_details');if(show){show.click();}
  var logs=Array.prototype.slice.call(document.querySelectorAll('.log'));
  out.logs=logs.map(function(el){return el.innerText||el.textContent||'';});
  logs.forEach(function(el){el.setAttribute('data-llorch-hidden',el.style.display);
    el.style.display='none';});
  out.text=document.body.innerText;
  logs.forEach(function(el){el.style.display=el.getAttribute('data-llorch-hidden');});
  var pre=document.createElement('pre');pre.id='PROBE_ID';pre.hidden=true;
  pre.textContent=JSON.stringify(out);document.body.appendChild(pre);
},300);});
})();"""


@dataclass
class Look:
    """What the probe saw: the viewport, each selector's boxes, the page's script errors,
    the readable text (logs apart) and Chromium's log."""

    viewport: tuple[int, int]
    rects: dict[str, list[dict]]
    errors: list[str]
    text: str
    logs: list[str]
    chromium_log: str

    def console_errors(self) -> list[str]:
        """Script errors: the probe's, and any Chromium logged from the page's console."""
        logged = [ln for ln in self.chromium_log.splitlines()
                  if "CONSOLE" in ln and ("Uncaught" in ln or ":ERROR:" in ln)]
        return self.errors + logged


def look_at(path: Path | str, selectors: list[str]) -> Look:
    """Open a copy of `path` (beside it, so relative links still resolve) with the probe
    first in its <head>, in a 1280x800 window."""
    page = Path(path)
    source = page.read_text(encoding="utf-8")
    script = (_PROBE_JS.replace("SELECTORS", json.dumps(selectors))
              .replace("PROBE_ID", PROBE_ID))
    tag = f"<script>{script}</script>"
    found = re.search(r"<head[^>]*>", source, re.IGNORECASE)
    probed = (source[:found.end()] + tag + source[found.end():]) if found else tag + source
    copy = page.with_name(f".probe-{page.name}")
    copy.write_text(probed, encoding="utf-8")
    try:
        seen = open_page(copy, f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars")
    finally:
        copy.unlink(missing_ok=True)
    m = re.search(rf'<pre id="{PROBE_ID}"[^>]*>(.*?)</pre>', seen.dom, re.DOTALL)
    if m is None:
        raise AssertionError(f"the probe wrote nothing (the page's load never finished?): "
                             f"{seen.log[-2000:]}")
    data = json.loads(htmlmod.unescape(m.group(1)))
    return Look(tuple(data["viewport"]), data["rects"], data["errors"], data["text"],
                data["logs"], seen.log)
