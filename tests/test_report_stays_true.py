"""Issue 28 item 1: a report stays true after later runs.

pytest-html without `--self-contained-html` writes each attachment to `reports/assets/<test
id>.txt`, the same name every run: run 1's report ("recorded only") then linked to run 4's
attachment (`"record": 4`). The gate makes its `--html` report self-contained by default,
so the README's command gives a report that can be handed in.

Four gate runs with the README's `--html=reports/cp3.html`, run 1's report kept beside
them as `reports/cp3-run1.html`; the runs are narrowed with `-k` to the performance item
(whose attachment names its record) and the catalog item, to keep the test's cost down:
the attachments are written by the same pytest-html code for every item.
"""

from __future__ import annotations

import hashlib
import html as htmlmod
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.gatereports import harness_cli
from tests.reporttext import attachments
from tests.test_plugin_gate import run_gate

pytestmark = pytest.mark.slow
SELECT = "performance or catalog"


# a link in the markup (`href="x"`) or an attachment in pytest-html's JSON blob
# (`"content": "assets/x.txt"`, HTML-escaped in the page)
LINK = re.compile(r'(?:href|src|content)"?\s*[:=]\s*"([^"]+)"')


def _links(page: Path) -> list[str]:
    return LINK.findall(htmlmod.unescape(page.read_text()))


def _linked_files(page: Path) -> dict[str, str]:
    """Every local file the page links to (href/src, not data: or http), with its hash."""
    out = {}
    for url in _links(page):
        parts = urlsplit(url)
        if parts.scheme or not parts.path or url.startswith("#"):
            continue
        target = (page.parent / unquote(parts.path)).resolve()
        if target.is_file():
            out[url] = hashlib.sha256(target.read_bytes()).hexdigest()
    return out


def _records(page: Path) -> list[int]:
    """The performance record numbers the page's attachments name (each once)."""
    texts = attachments(page.read_text())
    for url in _links(page):
        target = page.parent / unquote(urlsplit(url).path)
        if not urlsplit(url).scheme and target.is_file():
            texts.append(target.read_text())
    return sorted({int(n) for t in texts for n in re.findall(r'"record": (\d+)', t)})


def test_first_report_still_says_run_one_after_three_more_runs(tmp_path: Path) -> None:
    reports, store = tmp_path / "reports", tmp_path / "results.sqlite"
    args = ("-k", SELECT, "--html", str(reports / "cp3.html"), "--results-db", str(store))
    first = run_gate(tmp_path, *args)
    assert (reports / "cp3.html").is_file(), first.stdout[-4000:] + first.stderr[-2000:]
    kept = reports / "cp3-run1.html"
    shutil.copyfile(reports / "cp3.html", kept)
    page_before = kept.read_bytes()
    links_before = _linked_files(kept)
    assert _records(kept) == [1], "run 1's attachment names record 1"
    for _ in range(3):
        later = run_gate(tmp_path, *args)
        assert (reports / "cp3.html").is_file(), later.stdout[-4000:]
    assert kept.read_bytes() == page_before
    assert _linked_files(kept) == links_before  # nothing it links to changed either
    assert _records(kept) == [1], "run 1's report must still say run 1's record"
    # the latest report is run 4's own; run 4 is the first with a baseline, so on a noisy
    # machine its performance item may fail (and measure again, as a new record) or show no
    # record in its attachment: what matters is that it never names an earlier run's record
    latest = _records(reports / "cp3.html")
    assert all(n >= 4 for n in latest), latest
    assert not (reports / "assets").exists(), "a self-contained report needs no assets/"
    history = harness_cli("history", "--results-db", store, cwd=tmp_path)
    assert history.returncode == 0, history.stdout + history.stderr
    assert all(f"#{n} " in history.stdout for n in (1, 2, 3, 4)), history.stdout
