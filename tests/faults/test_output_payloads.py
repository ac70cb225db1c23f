"""Issue 27: a hostile corpus by output. Payloads go into every outside input that reaches a
report, a Markdown file or a terminal, and each output is checked where a person meets it:

- HTML (the per-pool pytest-html report, `history --html`, `gate merge --html`) opened in
  real headless Chromium (tests/browser.py): no payload runs, none becomes live markup;
- MODEL_SUPPORT.md parsed by a real Markdown renderer (markdown-it-py, GFM-like with
  linkify): no link, image or HTML comes from a value, and each value reads as its text;
- terminals (`llorch-pool leases`, `gate merge`, `history`): no control byte from outside.

Wrong types and sizes in the same inputs (gate JSON `performance`, a tampered results store,
holder records in the shared lease directory) end in one line naming the file and the
field (exit 2), or are skipped as malformed where the input only informs; never a crash.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from llorch_harness.perf.figures import Figure
from llorch_harness.perf.render import latest_panels, summary_json
from llorch_harness.perf.store import NewRun, ResultsStore
from llorch_harness.pool import leaseholders, leases
from llorch_harness.pool.paths import PoolPaths
from tests import browser
from tests.test_gatemerge import harness, pool_doc, write
from tests.test_gaterun import install_worker
from tests.test_model_support import model_doc

from .common import LLORCH_POOL, REPO_ROOT, clean_env, figure

INTERNAL = "internal error"
HANG_GUARD_S = 300
# Bytes that must never reach a terminal from outside: C0 but newline, DEL, C1 (as UTF-8),
# and the bidi overrides (U+202A..U+202E, U+2066..U+2069, as UTF-8).
_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xaa-\xae]"
                      rb"|\xe2\x81[\xa6-\xa9]")
TERMINAL_PAYLOADS = {
    "clear-screen": "\x1b[2J\x1b[H",
    "window-title": "\x1b]0;owned\x07",
    "fake-line": "\r\x1b[Kheld by nobody, free to take",
    "csi-c1": "\x9b31mred",
    "bidi": "abc\u202edcba",
    "newline": "x\nheld by a fake line",
}
MARKDOWN_PAYLOADS = {
    "md-link": "[click](javascript:alert(1))",
    "md-image": "![pixel](https://evil.example/p.png)",
    "md-ref-link": "[click][1]\n\n[1]: https://evil.example",
    "html": "<img src=x onerror=alert(1)>",
    "autolink": "<https://evil.example>",
    "bare-url": "see https://evil.example/x",
    "www": "www.evil.example",
    "email": "a@evil.example",
    "backticks": "a`b``c` `",
    "entity": "&lt;b&gt; &amp;",
    "cell-split": "a | b | c",
    "emphasis": "*a* _b_ ~~c~~",
}


def _controls(data: bytes) -> list[bytes]:
    return _CONTROL.findall(data)


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr[-2000:]
    return lines[0]


def _assert_nothing_ran(page_path: Path) -> browser.Page:
    page = browser.open_page(page_path)
    assert page.ran() == [], page.ran()
    assert page.live() == [], page.live()
    return page


# ------------------------------------------------------------------ inputs with payloads


def _hostile_texts() -> dict[str, str]:
    """Every HTML payload, by id (the same ones go into each input)."""
    return dict(browser.payloads())


def _perf_store(path: Path, texts: dict[str, str]) -> None:
    """A results store whose every text field holds a payload (legal types throughout)."""
    values = list(texts.values())
    with ResultsStore.open(path) as store:
        for i, v in enumerate(values):
            figs = {"load_s": Figure("load_s", 1.0 + i / 10, 0.01, 5, note=v),
                    "ttft_s": Figure("ttft_s", None, None, 0, note=v)}
            check = {"status": "pass", "message": v, "comparisons": [
                {"name": "load_s", "label": v, "value": 1.0, "verdict": "ok", "baseline": 1.0,
                 "band": 0.1, "mad": 0.01, "change": 0.0, "runs": [1], "note": v}]}
            store.record(NewRun(run_key=f"run-{i}", pool=f"pool {v}", model=f"model {v}",
                                backend="cuda", baseline_key=f"key {v}", binary_sha256=v,
                                fingerprint={"device": v, "driver": v, "os": v},
                                status="pass", figures=figs, check=check, recorded_at=v))


def _tamper_n(db: Path, value: object) -> None:
    """Write `value` into every figure's `n` behind the harness's back."""
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE figures SET n = ?", (value,))


def _performance_section(tmp: Path, texts: dict[str, str]) -> list[dict[str, Any]]:
    db = tmp / "perf-for-json.sqlite"
    _perf_store(db, texts)
    with ResultsStore.open(db, create=False) as store:
        return [summary_json(p) for p in latest_panels(store.runs())]


def _hostile_gate_docs(tmp: Path, texts: dict[str, str]) -> tuple[Path, Path]:
    """Two pools' gate JSONs (metal, cuda) with a payload in every string a page shows."""
    values = list(texts.values())
    docs = []
    for pool, backend in (("mac", "metal"), ("ws", "cuda")):
        doc = model_doc(pool, backend, models=("qwen-0.5b", "tinyllama"),
                        failing={"tinyllama": " ".join(values)})
        doc["hostname"] = values[0]
        doc["worker_binaries"] = {backend: {"path": values[1], "sha256": values[2]}}
        doc["backend_reasons"] = {"cpu": values[3]}
        for i, item in enumerate(doc["items"]):
            item["reason"] = values[i % len(values)]
        for i, run in enumerate(doc["model_runs"]):
            run.update(name=values[(i + 4) % len(values)],
                       architecture=values[(i + 5) % len(values)],
                       repo=values[(i + 6) % len(values)],
                       revision=values[(i + 7) % len(values)])
        doc["performance"] = _performance_section(tmp / pool, texts)
        docs.append(write(tmp / f"{pool}.json", doc))
    return docs[0], docs[1]


def _markdown_docs(tmp: Path, texts: dict[str, str]) -> tuple[Path, Path]:
    """Two pools' gate JSONs with one model per value: the value is that model's name,
    architecture, repo, revision and (on the workstation, where it fails) its reason."""
    values = list(texts.values())
    models = tuple(f"m{i}" for i in range(len(values)))
    docs = []
    for pool, backend in (("mac", "metal"), ("ws", "cuda")):
        failing = {m: v for m, v in zip(models, values, strict=True)} if pool == "ws" else {}
        doc = model_doc(pool, backend, models=models, failing=failing)
        doc["hostname"] = f"{pool}.host"
        for run, v in zip(doc["model_runs"], values, strict=True):
            run.update(name=v, architecture=v, repo=v, revision=v)
        docs.append(write(tmp / f"{pool}.json", doc))
    return docs[0], docs[1]


# ------------------------------------------------------------------ HTML in Chromium


class TestReportsInChromium:
    """Every HTML the harness writes, opened in headless Chromium with payloads in each
    outside value that reaches it: none runs, none becomes markup."""

    def test_pool_report_binary_path(self, tmp_path: Path) -> None:
        """Item 1: the worker binary's path (--llorch-bin-dir) in pytest-html's environment
        table, which app.js fills with innerHTML."""
        browser.chromium()
        slash_free = {k: v for k, v in _hostile_texts().items() if "/" not in v}
        bin_dir = tmp_path / "w" / "".join(slash_free.values())[:200]
        install_worker(bin_dir, "cpu")
        res = _gate(tmp_path, bin_dir, "--html", str(tmp_path / "r.html"),
                    "--self-contained-html")
        assert (tmp_path / "r.html").is_file(), res.stdout[-3000:] + res.stderr[-3000:]
        page = _assert_nothing_ran(tmp_path / "r.html")
        assert "llorch-cpu-candled" in page.dom  # the row is there, shown as text
        figure("output_payloads", output="per-pool HTML report (Chromium)",
               input="worker binary path", payloads=len(slash_free), executed=0, crashed=0)

    def test_pool_report_written_mid_run(self, tmp_path: Path) -> None:
        """Item 1 mid-run: with `generate_report_on_test`, pytest-html writes the page at
        session start and after each test, long before the final page; the copy taken then
        (by a plugin of this test, after collection) must be as safe as the final one."""
        browser.chromium()
        slash_free = {k: v for k, v in _hostile_texts().items() if "/" not in v}
        bin_dir = tmp_path / "w" / "".join(slash_free.values())[:200]
        install_worker(bin_dir, "cpu")
        mid = tmp_path / "mid.html"
        (tmp_path / "midrun_copy.py").write_text(
            "import os, shutil\n\n\ndef pytest_collection_finish(session):\n"
            "    shutil.copyfile(os.environ['MIDRUN_FROM'], os.environ['MIDRUN_TO'])\n")
        res = _gate(tmp_path, bin_dir, "--html", str(tmp_path / "r.html"),
                    "--self-contained-html", "-o", "generate_report_on_test=True",
                    "-p", "midrun_copy",
                    env={"MIDRUN_FROM": str(tmp_path / "r.html"), "MIDRUN_TO": str(mid)})
        assert mid.is_file(), res.stdout[-3000:] + res.stderr[-3000:]
        page = _assert_nothing_ran(mid)
        assert "llorch-cpu-candled" in page.dom  # the row is there, shown as text

    def test_history_page_from_a_store(self, tmp_path: Path) -> None:
        """Item 2: `history --html` over a store with a payload in every text field and
        markup in a figure's count (`n`, an integer column, but SQLite keeps whatever text
        is put there): the count is refused where it is loaded, the texts are escaped."""
        browser.chromium()
        texts = _hostile_texts()
        db = tmp_path / "s.sqlite"
        _perf_store(db, texts)
        _tamper_n(db, browser.payloads()[1][1])
        res = harness("history", "--results-db", db, "--html", tmp_path / "h.html",
                      cwd=tmp_path)
        assert res.returncode == 2, res.stdout + res.stderr
        line = _one_line(res)
        assert "s.sqlite" in line and ".n must be an integer" in line, line
        assert not (tmp_path / "h.html").exists()
        _tamper_n(db, 5)
        res = harness("history", "--results-db", db, "--html", tmp_path / "h.html",
                      cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        page = _assert_nothing_ran(tmp_path / "h.html")
        assert "llorchpwn" in page.dom
        assert _controls(res.stdout.encode()) == []
        figure("output_payloads", output="history --html (Chromium)",
               input="results store, 12 text fields and n", payloads=len(texts) + 1,
               executed=0, crashed=0)

    def test_merged_report_from_gate_json_and_perf(self, tmp_path: Path) -> None:
        """Items 2 and 6: `gate merge --perf STORE --html --model-support` with payloads in
        every string of both pools' gate JSON and in the store."""
        browser.chromium()
        texts = _hostile_texts()
        mac, ws = _hostile_gate_docs(tmp_path, texts)
        extra = tmp_path / "extra.sqlite"
        _perf_store(extra, texts)
        args = ("gate", "merge", mac, ws, "--perf", extra, "--html", tmp_path / "m.html",
                "--model-support", tmp_path / "MS.md")
        _tamper_n(extra, browser.payloads()[2][1])
        res = harness(*args, cwd=tmp_path)
        assert res.returncode == 2 and "extra.sqlite" in _one_line(res), res.stderr
        assert not (tmp_path / "m.html").exists()
        _tamper_n(extra, 5)
        res = harness(*args, cwd=tmp_path)
        assert res.returncode in (0, 1) and INTERNAL not in res.stderr, res.stderr
        page = _assert_nothing_ran(tmp_path / "m.html")
        assert "llorchpwn" in page.dom
        assert _controls(res.stdout.encode()) == []
        figure("output_payloads", output="gate merge --html (Chromium)",
               input="gate JSON (hostname, binaries, reasons, model runs, performance) "
                     "and --perf store", payloads=len(texts), executed=0, crashed=0)


# ------------------------------------------------------------------ Markdown


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _markdown_tokens(md_text: str) -> tuple[list[Any], str]:
    """markdown-it-py (GFM-like: tables, strikethrough, linkify) tokens, flattened, and the
    rendered page's text."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("gfm-like")
    tokens = []
    for tok in md.parse(md_text):
        tokens.append(tok)
        tokens += tok.children or []
    text = _Text()
    text.feed(md.render(md_text))
    return tokens, re.sub(r"\s+", " ", "".join(text.parts))


class TestModelSupportMarkdown:
    """Item 6: values in MODEL_SUPPORT.md are text, never link, image, markup or code-span
    breakout, as a real renderer sees them."""

    def test_markdown_values_stay_text(self, tmp_path: Path) -> None:
        pytest.importorskip("markdown_it", reason="markdown-it-py is in the `test` extra")
        values = dict(MARKDOWN_PAYLOADS)
        texts = {**values, **{f"html-{k}": v for k, v in _hostile_texts().items()}}
        mac, ws = _markdown_docs(tmp_path, texts)
        res = harness("gate", "merge", mac, ws, "--model-support", tmp_path / "MS.md",
                      cwd=tmp_path)
        assert res.returncode in (0, 1) and INTERNAL not in res.stderr, res.stderr
        md = (tmp_path / "MS.md").read_text()
        tokens, shown = _markdown_tokens(md)
        made = [t.type for t in tokens if t.type in (
            "link_open", "image", "html_inline", "html_block", "s_open")]
        assert made == [], made
        one_line = {k: re.sub(r"\s+", " ", v).strip() for k, v in texts.items()}
        missing = {k: v for k, v in one_line.items() if v[:60] not in shown}
        assert missing == {}, f"not shown as their text: {missing}"
        tables: list[list[int]] = []  # per table, the cell count of each row
        for t in tokens:
            if t.type == "table_open":
                tables.append([])
            elif t.type == "tr_open":
                tables[-1].append(0)
            elif t.type in ("th_open", "td_open"):
                tables[-1][-1] += 1
        assert len(tables) == 2 and all(len(rows) > 2 for rows in tables), tables
        assert all(len(set(rows)) == 1 for rows in tables), tables  # no row split or short
        figure("output_payloads", output="MODEL_SUPPORT.md (markdown-it-py, linkify)",
               input="gate JSON model runs (name, architecture, repo, revision, reason)",
               payloads=len(texts),
               executed=0, crashed=0)


# ------------------------------------------------------------------ wrong types, load time


def _gate_with_perf(tmp: Path) -> dict[str, Any]:
    doc = pool_doc("ws", "cuda")
    doc["performance"] = _performance_section(tmp, {"x": "plain"})
    return doc


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    target: Any = doc
    for k in keys[:-1]:
        target = target[k]
    target[keys[-1]] = value


GATE_JSON_TYPES = [
    ("baseline-string", "performance.0.check.comparisons.0.baseline", "big",
     "performance[0].check.comparisons[0].baseline"),
    ("band-string", "performance.0.check.comparisons.0.band", "0.1",
     "performance[0].check.comparisons[0].band"),
    ("spread-string", "performance.0.figures.0.spread", "wide", "spread"),
    ("value-string", "performance.0.figures.0.value", "1.0", "value"),
    ("n-markup", "performance.0.figures.0.n", "<b>5</b>", ".n must be an integer"),
    ("check-not-object", "performance.0.check", "[]", "performance[0].check must be an object"),
    ("check-list", "performance.0.check", [1, 2], "performance[0].check must be an object"),
    ("trend-id-string", "performance.0.trend.0.id", "seven", "performance[0].trend[0].id"),
    ("trend-id-float", "performance.0.trend.0.id", 1.5, "performance[0].trend[0].id"),
    ("runs-not-ids", "performance.0.check.comparisons.0.runs", ["x"], "runs[0]"),
    ("pool-number", "performance.0.pool", 7, "performance[0].pool must be a string"),
    ("performance-object", "performance", {"a": 1}, "'performance' must be a list"),
    ("record-string", "performance.0", "record", "performance[0] must be an object"),
    ("fingerprint-list", "performance.0.fingerprint", [1], "fingerprint must be an object"),
]


class TestWrongTypesAreOneLine:
    """Item 4: a string where a number belongs, a check that is not an object, a trend id
    that is not an integer, an extra column: one line naming the file and the field, exit
    2 (before the fix: exit 70, internal error)."""

    @pytest.mark.parametrize("case", GATE_JSON_TYPES, ids=[c[0] for c in GATE_JSON_TYPES])
    def test_gate_json_performance(self, tmp_path: Path, case: tuple[str, str, Any, str]
                                   ) -> None:
        _, path, value, field = case
        doc = _gate_with_perf(tmp_path)
        _set(doc, path, value)
        bad = write(tmp_path / "ws.json", doc)
        good = write(tmp_path / "mac.json", pool_doc("mac", "metal"))
        res = harness("gate", "merge", good, bad, "--html", tmp_path / "m.html", cwd=tmp_path)
        assert res.returncode == 2, res.stdout + res.stderr
        line = _one_line(res)
        assert "ws.json" in line and field in line and INTERNAL not in line, line
        assert not (tmp_path / "m.html").exists()
        figure("output_types", input="gate JSON performance", case=case[0], exit=2,
               crashed=0)

    STORE_TAMPERS = [
        ("n-text", "UPDATE figures SET n = 'many'", ".n must be an integer"),
        ("value-text", "UPDATE figures SET value = 'fast' WHERE value IS NOT NULL",
         ".value must be a finite number"),
        ("spread-blob", "UPDATE figures SET spread = x'00ff' WHERE value IS NOT NULL",
         ".spread must be a finite number"),
        ("check-string", "UPDATE runs SET check_json = '\"x\"'", "check_json must be an object"),
        ("check-baseline-string",
         "UPDATE runs SET check_json = '{\"comparisons\": [{\"name\": \"load_s\", "
         "\"verdict\": \"ok\", \"baseline\": \"x\"}]}'", "comparisons[0].baseline"),
        ("fingerprint-not-json", "UPDATE runs SET fingerprint = '{'", "fingerprint is not"),
        ("pool-blob", "UPDATE runs SET pool = x'3c623e'", ".pool must be a string"),
    ]

    @pytest.mark.parametrize("case", STORE_TAMPERS, ids=[c[0] for c in STORE_TAMPERS])
    def test_tampered_store(self, tmp_path: Path, case: tuple[str, str, str]) -> None:
        _, sql, field = case
        db = tmp_path / "s.sqlite"
        _perf_store(db, {"x": "plain"})
        with sqlite3.connect(db) as conn:
            conn.execute(sql)
        for args in (("history", "--results-db", db, "--html", tmp_path / "h.html"),
                     ("gate", "merge", write(tmp_path / "mac.json", pool_doc("mac", "metal")),
                      write(tmp_path / "ws.json", pool_doc("ws", "cuda")), "--perf", db,
                      "--html", tmp_path / "m.html")):
            res = harness(*args, cwd=tmp_path)
            assert res.returncode == 2, res.stdout + res.stderr
            line = _one_line(res)
            assert "s.sqlite" in line and field in line and INTERNAL not in line, line
        assert not (tmp_path / "h.html").exists() and not (tmp_path / "m.html").exists()
        figure("output_types", input="results store", case=case[0], exit=2, crashed=0)

    def test_an_extra_column_in_runs_is_read_by_name(self, tmp_path: Path) -> None:
        db = tmp_path / "s.sqlite"
        _perf_store(db, {"x": "plain"})
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE runs ADD COLUMN extra TEXT DEFAULT 'x'")
        res = harness("history", "--results-db", db, "--html", tmp_path / "h.html",
                      cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert "model plain on cuda" in res.stdout


# ------------------------------------------------------------------ holder records


def _pool_cli(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in clean_env().items() if not k.startswith("LLORCH_")}
    return subprocess.run([str(LLORCH_POOL), *map(str, args)], capture_output=True, env=env,
                          timeout=HANG_GUARD_S, check=False, stdin=subprocess.DEVNULL)


@pytest.fixture
def held_lease(tmp_path: Path) -> Iterator[Path]:
    """A lease directory whose cuda-0 lock this test process holds (as another run
    would): `llorch-pool leases` then shows its holder record."""
    d = leases.ensure_lease_dir(tmp_path / "leases")
    fd = os.open(d / "cuda-0.lock", os.O_RDONLY | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield d
    finally:
        os.close(fd)


def _record(d: Path, uid: int, user: str, **over: Any) -> Path:
    rec = {"device": "cuda:0", "backend": "cuda", "index": 0, "host": "genuine-host",
           "pid": 4242, "user": user, "pool_root": "/pool", "acquired_at": time.time(),
           "acquired": "2026-12-05T10:00:00+00:00", "worker_id": None, **over}
    path = d / f"cuda-0@{uid}.json"
    path.write_text(json.dumps(rec))
    os.chown(path, uid, -1)
    return path


def _me() -> tuple[int, str]:
    import pwd

    uid = os.getuid()
    try:
        return uid, pwd.getpwuid(uid).pw_name
    except KeyError:
        return uid, str(uid)


needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="planting another user's file needs root (chown)")


class TestHolderRecords:
    """Items 3, 5, 7: the shared lease directory's records are read within bounds, count
    only when their owner is the user they name, and reach the terminal escaped."""

    def test_a_huge_record_is_not_read_whole(self, held_lease: Path) -> None:
        d = held_lease
        uid, user = _me()
        path = _record(d, uid, user)
        with open(path, "r+b") as fh:  # 200 MB, sparse: costs no disk
            fh.truncate(200 * 1024 * 1024)
        res = _pool_cli("leases", "--all", "--lease-dir", d)
        assert res.returncode == 0, res.stderr
        assert b"cuda-0" in res.stdout and INTERNAL.encode() not in res.stderr
        rss_kib = _peak_rss_kib([str(LLORCH_POOL), "leases", "--all", "--lease-dir", str(d)])
        assert rss_kib < 150 * 1024, f"peak RSS {rss_kib / 1024:.0f} MiB for a 200 MB record"
        figure("output_bounds", input="holder record 200 MB (sparse)",
               peak_rss_mib=round(rss_kib / 1024),
               cap_bytes=getattr(leaseholders, "MAX_RECORD_BYTES", None), crashed=0)

    def test_a_deeply_nested_record_is_malformed_not_a_crash(self, held_lease: Path) -> None:
        d = held_lease
        uid, _ = _me()
        (d / f"cuda-0@{uid}.json").write_text("[" * 100_000)
        res = _pool_cli("leases", "--all", "--lease-dir", d)
        assert res.returncode == 0, res.stderr
        assert INTERNAL.encode() not in res.stderr and b"RecursionError" not in res.stderr
        figure("output_bounds", input="holder record nested 100000 deep", crashed=0)

    @pytest.mark.parametrize("name", list(TERMINAL_PAYLOADS))
    def test_terminal_escapes_are_shown_escaped(self, held_lease: Path, name: str) -> None:
        d = held_lease
        uid, user = _me()
        bad = TERMINAL_PAYLOADS[name]
        _record(d, uid, user, host=bad, worker_id=bad, pool_root=bad, ci_job=bad,
                acquired=bad, device=bad)
        res = _pool_cli("leases", "--all", "--lease-dir", d)
        assert res.returncode == 0, res.stderr
        assert _controls(res.stdout) == [], res.stdout
        assert len(res.stdout.splitlines()) == 2, res.stdout  # the header and one device
        assert _controls(leases.describe_holder(leases.read_holder(d, "cuda-0"))
                         .encode()) == []
        figure("output_terminal", input="holder record (6 fields)", payload=name,
               control_bytes_out=0, crashed=0)

    @needs_root
    def test_a_record_from_the_future_never_wins(self, held_lease: Path) -> None:
        d = held_lease
        uid, user = _me()
        _record(d, uid, user)
        _record(d, 65534, "nobody", host="planted-future", acquired_at=9e99)
        res = _pool_cli("leases", "--all", "--lease-dir", d)
        assert b"genuine-host" in res.stdout and b"planted" not in res.stdout, res.stdout

    @needs_root
    def test_a_record_counts_only_when_its_owner_is_the_user_it_names(
            self, held_lease: Path) -> None:
        d = held_lease
        uid, user = _me()
        _record(d, uid, user, acquired_at=time.time() - 60)
        _record(d, 65534, user, host="impostor-host")  # names me, owned by nobody
        res = _pool_cli("leases", "--all", "--lease-dir", d)
        assert b"genuine-host" in res.stdout and b"impostor" not in res.stdout, res.stdout

    def test_a_lease_dir_others_may_write_without_sticky_bit_is_refused(
            self, tmp_path: Path) -> None:
        d = tmp_path / "open"
        d.mkdir()
        d.chmod(0o777)
        res = _pool_cli("leases", "--lease-dir", d)
        assert res.returncode == 2, res.stdout + res.stderr
        line = res.stderr.decode().strip()
        assert "\n" not in line and "not sticky" in line and "chmod 1777" in line, line
        with pytest.raises(Exception, match="not sticky"):
            leases.ensure_lease_dir(d)

    @needs_root
    def test_a_lease_dir_owned_by_another_user_is_refused(self, tmp_path: Path) -> None:
        d = tmp_path / "theirs"
        d.mkdir()
        d.chmod(0o1777)
        os.chown(d, 65534, -1)
        res = _pool_cli("leases", "--lease-dir", d)
        assert res.returncode == 2, res.stdout + res.stderr
        line = res.stderr.decode().strip()
        assert "\n" not in line and "uid 65534" in line, line


class TestTerminalLines:
    """Item 5's class beyond holder records: a catalog's text, the gate's header and every
    error line reach the terminal with control characters shown escaped."""

    def test_gate_header_with_a_binary_path(self, tmp_path: Path) -> None:
        bad = "".join(v for k, v in TERMINAL_PAYLOADS.items() if "\n" not in v)
        bin_dir = tmp_path / "w" / f"bin{bad}"
        install_worker(bin_dir, "cpu")
        res = _gate(tmp_path, bin_dir)
        assert "llorch-cpu-candled" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
        assert _controls(res.stdout.encode()) == [], res.stdout[:3000]
        figure("output_terminal", input="gate header (worker binary path)",
               payload="all but newline", control_bytes_out=0, crashed=0)

    @pytest.mark.parametrize("name", list(TERMINAL_PAYLOADS))
    def test_catalog_text_in_models_listings(self, tmp_path: Path, name: str) -> None:
        bad = TERMINAL_PAYLOADS[name]
        pool = tmp_path / "pool"
        pool.mkdir()
        entry = {"id": "tiny-qwen", "name": f"tiny {bad}", "path": "models/tiny-qwen",
                 "format": "safetensors", "size_gb": 0.1, "architecture": bad,
                 "downloaded": False, "backends": ["cpu"], "metadata": {"repo": f"o/r{bad}"}}
        catalog = PoolPaths(pool).catalog_path
        catalog.parent.mkdir(parents=True)
        catalog.write_text(json.dumps({"version": "1.0", "models": [entry]}))
        for args in (("models", "catalog"), ("models", "list")):
            res = _pool_cli(*args, "--pool-root", pool)
            assert res.returncode == 0, res.stderr
            assert b"o/r" in res.stdout or b"tiny" in res.stdout, res.stdout
            assert _controls(res.stdout) == [], (args, res.stdout)
            assert not [ln for ln in res.stdout.splitlines() if b"held by a fake" in ln
                        and not ln.startswith((b"tiny-qwen", b"ID"))], res.stdout
        figure("output_terminal", input="catalog (name, architecture, repo)", payload=name,
               control_bytes_out=0, crashed=0)

    @pytest.mark.parametrize("name", [n for n in TERMINAL_PAYLOADS if n != "newline"])
    def test_error_lines(self, tmp_path: Path, name: str) -> None:
        bad = tmp_path / f"gate{TERMINAL_PAYLOADS[name]}.json"
        res = harness("gate", "merge", bad, cwd=tmp_path)
        assert res.returncode == 2, res.stdout + res.stderr
        assert _controls(res.stderr.encode()) == [], res.stderr
        assert len(res.stderr.splitlines()) == 1, res.stderr
        figure("output_terminal", input="error line (a path from the command line)",
               payload=name, control_bytes_out=0, crashed=0)


def _gate(tmp: Path, bin_dir: Path, *extra: str,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A gate run that selects no test (the header, the lab, the report are all made)."""
    (tmp / "pool").mkdir(exist_ok=True)
    env = {**{k: v for k, v in clean_env().items() if not k.startswith(("LLORCH_", "PYTEST_"))},
           **(env or {})}
    argv = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests_hw"), "-p",
            "no:cacheprovider", "--pool-root", str(tmp / "pool"), "--basetemp",
            str(tmp / "bt"), "--gate-model", "tiny-qwen", "--llorch-bin-dir", str(bin_dir),
            "-k", "no_test_has_this_name", *extra]
    return subprocess.run(argv, capture_output=True, text=True, cwd=tmp, env=env,
                          timeout=HANG_GUARD_S, check=False, stdin=subprocess.DEVNULL)


def _peak_rss_kib(argv: list[str]) -> int:
    """Peak RSS of one child, reaped by a small Python of its own (os.wait4's rusage).

    Why not from here: Linux keeps a process's peak across exec, and a child spawned by this
    (large, long-lived) pytest process starts with pytest's own peak, not the command's.
    """
    reaper = ("import os, sys\n"
              "pid = os.posix_spawn(sys.argv[1], sys.argv[1:], dict(os.environ), file_actions="
              "[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])\n"
              "_, status, usage = os.wait4(pid, 0)\n"
              "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", reaper, *argv], env=clean_env(),
                         capture_output=True, text=True, check=True, timeout=300)
    code, rss = out.stdout.split()
    assert int(code) == 0, out.stderr
    return int(rss)
