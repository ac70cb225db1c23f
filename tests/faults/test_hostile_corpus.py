"""Item 5: every case of tests/faults/corpus/ is refused with a clear message or handled.

Each case runs the real CLI (`llorch-pool`, `llorch`) in a sandbox: HOME, the working
directory and the pool root (two levels down, so `../..` still lands inside) all lie in
it, and its whole tree outside the pool root is snapshotted before and after: 0 files
may be written there. Shell metacharacters aim at a canary file; a fake `ssh` on PATH
logs every call and, for accepted commands, runs the remote command through `sh -c`
as sshd would, so an injection would create the canary. SSE cases run
`workerclient.execute` against a raw-socket server of this module.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from llorch_harness.checks.workerclient import ExecuteRequest, execute
from llorch_harness.errors import HarnessError
from llorch_harness.lab.hub import LocalHub, build_embedded_hub_root
from llorch_harness.pool import catalog as cat
from llorch_harness.pool import workers
from llorch_harness.pool.paths import PoolPaths, validate_model_id, validate_repo_id

from .common import ANTI_HANG_S, BIN, FULL, LLORCH, LLORCH_POOL, REPO_ROOT, clean_env, figure
from .rawserver import RawServer

CORPUS = Path(__file__).with_name("corpus")
OUTSIDE_TARGETS = [Path("/tmp/evil"), Path("/tmp/llorch-evil.json"), Path("/tmp/llorch-outside")]
MAX_MESSAGE = 600  # a clear message is one line, and a 4096-character value is cut in it
INTERNAL = "error: internal error:"  # cli.common's line for an exception that is a bug

# Known bugs found by this corpus: (category, case id) -> "BUG: one line". Each stays a
# strict xfail until the fix is in. The first round (RecursionError from deeply nested
# catalogs and records, KeyError on a record without worker_id) was fixed in bc74087.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def load(name: str) -> list[dict[str, Any]]:
    return json.loads((CORPUS / f"{name}.json").read_text(encoding="utf-8"))


def cases(name: str) -> list[Any]:
    out = []
    for case in load(name):
        bug = KNOWN_BUGS.get((name, case["id"]))
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        out.append(pytest.param(case, id=case["id"], marks=marks))
    return out


def pick(commands: list[tuple[str, ...]], case: dict[str, Any]) -> list[tuple[str, ...]]:
    """Full runs: every command. CI: one per case, alternating, so each path still runs."""
    if FULL:
        return commands
    return [commands[sum(map(ord, case["id"])) % len(commands)]]


def value_of(case: dict[str, Any], canary: Path) -> str:
    if "value_repeat" in case:
        text, n = case["value_repeat"]
        value = text * n + case.get("suffix", "")
    else:
        value = case["value"]
    return value.replace("{CANARY}", str(canary))


def file_bytes(case: dict[str, Any]) -> bytes:
    if "b64" in case:
        return base64.b64decode(case["b64"])
    if "nest" in case:
        return b"[" * case["nest"] + b"]" * case["nest"]
    return case["text"].encode("utf-8")


# --------------------------------------------------------------------------- sandbox

FAKE_SSH = """#!/bin/sh
# fake ssh: log the call; with FAKE_SSH_EXEC=1 run the remote command as sshd would
printf '%s\\n' "$*" >> "$FAKE_SSH_LOG"
if [ "$FAKE_SSH_EXEC" = "1" ]; then
  for last; do :; done
  exec /bin/sh -c "$last"
fi
echo "fake ssh: not executing" >&2
exit 255
"""


@dataclass
class Sandbox:
    root: Path
    pool: PoolPaths
    canary: Path
    ssh_log: Path
    env: dict[str, str]
    before: dict[str, tuple[int, int]] = field(default_factory=dict)
    tracebacks: int = 0
    runs: int = 0

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """Every file outside the pool root: (size, mtime_ns)."""
        pool_root = str(self.pool.root)
        out: dict[str, tuple[int, int]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            if dirpath == pool_root or dirpath.startswith(pool_root + os.sep):
                dirnames[:] = []
                continue
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for n in filenames + links:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                out[os.path.relpath(p, self.root)] = (st.st_size, st.st_mtime_ns)
        return out

    def run(self, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        self.runs += 1
        r = subprocess.run(argv, capture_output=True, text=True, timeout=ANTI_HANG_S,
                           env={**self.env, **env}, cwd=self.root / "cwd",
                           stdin=subprocess.DEVNULL, check=False, errors="replace")
        if "Traceback" in r.stderr or "Traceback" in r.stdout or INTERNAL in r.stderr:
            self.tracebacks += 1  # the CLI's last-resort line for a bug counts as one too
        return r

    def pool_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run([str(LLORCH_POOL), *args, "--pool-root", str(self.pool.root)])


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    root = tmp_path / "sandbox"
    for d in ("home", "cwd", "fakebin", "a/b"):
        (root / d).mkdir(parents=True)
    ssh = root / "fakebin" / "ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    pool = PoolPaths.at(root / "a" / "b" / "pool")
    pool.root.mkdir()
    outside_before = {p: p.exists() for p in OUTSIDE_TARGETS}
    env = clean_env(HOME=str(root / "home"), XDG_CONFIG_HOME=str(root / "home" / ".config"),
                    PATH=f"{root / 'fakebin'}:{BIN}:/usr/bin:/bin",
                    FAKE_SSH_LOG=str(root / "ssh.log"), FAKE_SSH_EXEC="0")
    sb = Sandbox(root, pool, root / "CANARY", root / "ssh.log", env)
    sb.before = sb.snapshot()
    yield sb
    after = sb.snapshot()
    allowed = {"ssh.log"}  # the fake ssh's own log
    changed = sorted(k for k in set(after) | set(sb.before)
                     if k not in allowed and after.get(k) != sb.before.get(k))
    assert changed == [], f"files written outside the pool root: {changed[:10]}"
    assert not sb.canary.exists(), "a command was injected: the canary exists"
    assert {p: p.exists() for p in OUTSIDE_TARGETS} == outside_before
    assert sb.tracebacks == 0, "a CLI printed a traceback"
    figure("corpus_case", runs=sb.runs, tracebacks=sb.tracebacks, outside_writes=len(changed),
           injected=int(sb.canary.exists()))


def assert_clear_refusal(r: subprocess.CompletedProcess[str]) -> str:
    """Non-zero exit, no traceback, one short `error:` line (argparse's usage form counts)."""
    assert r.returncode != 0, (r.stdout[-500:], r.stderr[-500:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert INTERNAL not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ") or ": error: " in ln]
    assert len(errors) == 1, r.stderr[-2000:]
    usage = [ln for ln in lines if ln not in errors]
    assert all(ln.startswith(("usage:", " ")) for ln in usage) or not usage, r.stderr[-2000:]
    assert len(errors[0]) <= MAX_MESSAGE, f"message of {len(errors[0])} characters"
    return errors[0]


def assert_handled(r: subprocess.CompletedProcess[str]) -> None:
    """Success, or a clear refusal; never a traceback."""
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert INTERNAL not in r.stderr, r.stderr[-3000:]
    if r.returncode != 0:
        assert_clear_refusal(r)


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_embedded_hub_root(tmp_path_factory.mktemp("corpushub"))


@pytest.fixture
def hub(hub_root: Path, sandbox: Sandbox) -> Iterator[LocalHub]:
    with LocalHub(hub_root) as h:
        sandbox.env["HF_ENDPOINT"] = h.url
        yield h


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize("case", cases("model_ids"))
def test_hostile_model_id(case: dict[str, Any], sandbox: Sandbox, hub: LocalHub) -> None:
    value = value_of(case, sandbox.canary)
    if case.get("via") == "api":  # argv cannot carry NUL: the library must refuse it
        with pytest.raises(HarnessError):
            validate_model_id(value)
        with pytest.raises(HarnessError):
            sandbox.pool.model_dir(value)
        return
    commands = [("models", "download", "--", value),
                ("worker", "spawn", "cpu", f"--model={value}", "--worker", "reference",
                 "--port", "0")]
    for args in pick(commands, case):
        assert_clear_refusal(sandbox.pool_cli(*args))
    assert hub.requests == []
    assert not sandbox.pool.catalog_path.exists()
    assert not sandbox.pool.runtime_dir.exists() or not any(
        sandbox.pool.workers_dir.glob("*.json"))


@pytest.mark.parametrize("case", cases("repo_ids"))
def test_hostile_repo_id(case: dict[str, Any], sandbox: Sandbox) -> None:
    value = value_of(case, sandbox.canary)
    if case.get("via") == "api":
        with pytest.raises(HarnessError):
            validate_repo_id(value)
        with pytest.raises(HarnessError):
            cat.register_model(sandbox.pool, "m", name="M", repo=value, architecture="qwen")
        assert not sandbox.pool.catalog_path.exists()
        return
    assert_clear_refusal(sandbox.pool_cli("models", "register", "m", "--name", "M",
                                          f"--repo={value}", "--architecture", "qwen"))
    assert not sandbox.pool.catalog_path.exists() or cat.read_catalog(
        sandbox.pool).find("m") is None


# --------------------------------------------------------------------------- hub names


class EvilHub:
    """A hub whose listing names one hostile file; it records every request it gets."""

    REPO = "evil-org/evil"
    SHA = "a" * 40

    def __init__(self) -> None:
        self.hostile = ""
        self.requests: list[str] = []
        hub = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                hub.requests.append(self.path)
                if self.path.startswith(f"/api/models/{hub.REPO}/revision/"):
                    return self._json({"id": hub.REPO, "sha": hub.SHA})
                if self.path.startswith(f"/api/models/{hub.REPO}/tree/"):
                    return self._json([
                        {"type": "file", "path": "model.safetensors", "size": 10,
                         "oid": "b" * 40,
                         "lfs": {"oid": "c" * 64, "size": 10, "pointerSize": 134}},
                        {"type": "file", "path": hub.hostile, "size": 10, "oid": "d" * 40},
                    ])
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _json(self, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> EvilHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.mark.parametrize("case", cases("hub_filenames"))
def test_hostile_hub_file_name(case: dict[str, Any], sandbox: Sandbox) -> None:
    name = value_of(case, sandbox.canary)
    cat.register_model(sandbox.pool, "evil", name="Evil", repo=EvilHub.REPO,
                       architecture="qwen")
    before = sandbox.pool.catalog_path.read_bytes()
    with EvilHub() as evil:
        evil.hostile = name
        r = sandbox.run([str(LLORCH_POOL), "models", "download", "evil", "--pool-root",
                         str(sandbox.pool.root)], HF_ENDPOINT=evil.url)
    line = assert_clear_refusal(r)
    assert "refusing hub file name" in line or "escapes" in line, line
    assert not any("/resolve/" in p for p in evil.requests), evil.requests  # nothing fetched
    assert sandbox.pool.catalog_path.read_bytes() == before
    model_dir = sandbox.pool.models_dir / "evil"
    assert not model_dir.exists() or not any(p.is_file() for p in model_dir.rglob("*"))


# --------------------------------------------------------------------------- ssh


@pytest.mark.parametrize("case", cases("hosts"))
def test_hostile_host_refused_before_ssh(case: dict[str, Any], sandbox: Sandbox) -> None:
    host = value_of(case, sandbox.canary)
    r = sandbox.run([str(LLORCH), "pool", "models", "list", f"--host={host}"],
                    FAKE_SSH_EXEC="1")
    assert_clear_refusal(r)
    assert not sandbox.ssh_log.exists(), "ssh was started for a hostile host"


@pytest.mark.parametrize("case", cases("remote_args"))
def test_hostile_remote_arguments(case: dict[str, Any], sandbox: Sandbox) -> None:
    argv = [a.replace("{CANARY}", str(sandbox.canary)) for a in case["argv"]]
    r = sandbox.run([str(LLORCH), "pool", *argv, "--host", "pool.example",
                     f"--remote-root={sandbox.pool.root}"], FAKE_SSH_EXEC="1")
    if case["expect"] == "refused":
        assert_clear_refusal(r)
        assert not sandbox.ssh_log.exists(), "ssh was started for a hostile argument"
        return
    assert r.returncode == 0, r.stderr[-2000:]
    assert sandbox.ssh_log.exists()
    literal = case["literal"].replace("{CANARY}", str(sandbox.canary))
    names = [m.name for m in cat.read_catalog(sandbox.pool).models]
    assert names == [literal]  # arrived byte for byte, as data


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("case", cases("catalogs"))
def test_malformed_catalog(case: dict[str, Any], sandbox: Sandbox, hub: LocalHub) -> None:
    pool = sandbox.pool
    pool.models_dir.mkdir(parents=True)
    data = file_bytes(case)
    pool.catalog_path.write_bytes(data)
    if case.get("expect") == "parses":
        for args in (("models", "list"), ("models", "download", "tiny-qwen"),
                     ("models", "catalog")):
            assert_handled(sandbox.pool_cli(*args))
        assert not (pool.root.parent / "outside").exists()
        if case.get("roundtrip"):  # issue 20 #14: any write keeps what it read (null too)
            assert_handled(sandbox.pool_cli("models", "register", "zz-new", "--name", "Z",
                                            "--repo", "org/zz", "--architecture", "qwen"))
            before, after = json.loads(data), json.loads(pool.catalog_path.read_bytes())
            for key, value in before.items():
                if key not in ("models", "updated_at"):
                    assert after[key] == value, (key, after[key], value)
            for model in before["models"]:  # every key read is written back as it was
                (kept,) = [m for m in after["models"] if m["id"] == model["id"]]
                assert {k: kept.get(k) for k in model} == model, (model, kept)
            assert after["models"][-1]["id"] == "zz-new"
        return
    commands = [("models", "download", "tiny-qwen"),
                ("models", "register", "zz", "--name", "Z", "--repo", "org/zz",
                 "--architecture", "qwen")]
    for args in pick(commands, case):
        line = assert_clear_refusal(sandbox.pool_cli(*args))
        assert str(pool.catalog_path) in line, line
    assert pool.catalog_path.read_bytes() == data  # never rewritten
    assert hub.requests == []


@pytest.mark.parametrize("case", cases("worker_records"))
def test_malformed_worker_record(case: dict[str, Any], sandbox: Sandbox) -> None:
    pool = sandbox.pool
    pool.workers_dir.mkdir(parents=True)
    rec = pool.workers_dir / "worker-cpu-0.json"
    data = file_bytes(case)
    rec.write_bytes(data)
    listed = sandbox.pool_cli("worker", "list")
    assert_handled(listed)
    stop = sandbox.pool_cli("worker", "stop", "worker-cpu-0", "--grace", "0.2")
    assert_handled(stop)
    if case.get("expect") == "parses":
        logs = sandbox.pool_cli("worker", "logs", "worker-cpu-0")
        assert_handled(logs)
        assert "root:" not in logs.stdout  # the record's log_path is never followed
        return
    assert listed.returncode == 0 and "invalid" in listed.stdout, listed.stdout
    assert stop.returncode != 0
    assert rec.read_bytes() == data  # an unreadable record is left for a person to look at


def test_record_with_boolean_pid_is_refused(tmp_path: Path) -> None:
    """`{"pid": true}` is not pid 1 (a bool is an int in Python). Checked in the library only:
    if the check were missing, `worker stop` on such a record would signal init."""
    path = tmp_path / "worker-cpu-0.json"
    path.write_text('{"pid": true, "worker_id": "worker-cpu-0"}')
    with pytest.raises(HarnessError):
        workers.read_record(path)


# --------------------------------------------------------------------------- SSE


def sse_script(case: dict[str, Any], stop: threading.Event) -> Callable[[socket.socket], None]:
    def head(conn: socket.socket, status: int = 200, ctype: str = "text/event-stream",
             extra: str = "") -> None:
        conn.sendall((f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\n{extra}"
                      "Connection: close\r\n\r\n").encode())

    def stream(conn: socket.socket, block: bytes, total: int) -> None:
        sent = 0
        while sent < total and not stop.is_set():
            conn.sendall(block)
            sent += len(block)

    def script(conn: socket.socket) -> None:
        if "raw" in case:
            conn.sendall(case["raw"].encode())
            return
        if "header_kb" in case:
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Big: " + b"h" * (case["header_kb"] * 1024)
                         + b"\r\nContent-Type: text/event-stream\r\n\r\ndata: {}\n\n")
            return
        extra = f"Content-Encoding: {case['content_encoding']}\r\n" \
            if "content_encoding" in case else ""
        head(conn, case.get("status", 200), case.get("content_type", "text/event-stream"),
             extra)
        if "body" in case:
            conn.sendall(case["body"].encode("utf-8"))
        elif "body_b64" in case:
            conn.sendall(base64.b64decode(case["body_b64"]))
        elif "deep_json" in case:
            n = case["deep_json"]
            conn.sendall(b"data: " + b"[" * n + b"]" * n + b"\n\n")
        elif "huge_line_mb" in case:  # one line, never ended: sent lazily, 1 MiB at a time
            conn.sendall(b"data: ")
            stream(conn, b"x" * (1 << 20), case["huge_line_mb"] << 20)
        elif "repeat_event" in case:
            ev = b'data: {"type": "token", "t": "x", "i": 0}\n\n'
            stream(conn, ev * 1000, len(ev) * case["repeat_event"])
        elif "repeat_mb" in case:
            ev = b'data: {"type": "token", "t": "' + b"y" * (512 << 10) + b'", "i": 0}\n\n'
            stream(conn, ev, case["repeat_mb"] << 20)

    return script


@pytest.mark.parametrize("case", cases("sse"))
def test_malformed_sse(case: dict[str, Any]) -> None:
    stop = threading.Event()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with RawServer(sse_script(case, stop)) as srv:
        try:
            res = execute(srv.uri, ExecuteRequest(job_id=f"corpus-{case['id']}", prompt="hi",
                                                  max_tokens=4),
                          first_event_timeout=10, event_timeout=10, total_timeout=30,
                          max_events=5000, connect_timeout=5)
        finally:
            stop.set()
    seconds = time.monotonic() - t0
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert srv.accepted == 1
    assert seconds < 60, f"execute took {seconds:.0f} s"
    assert grew_mb < 200, f"peak memory grew by {grew_mb:.0f} MB: the answer was not streamed"
    problems = [(p.kind, p.message) for p in res.problems]
    assert all(len(m) <= 2000 and m.strip() for _, m in problems), problems
    if case["expect"] == "problem" and not case.get("allow_handled"):
        assert problems, res.summary()
        assert res.terminal is None or res.terminal.get("type") != "end"
    elif case["expect"] == "handled":
        assert res.status_code == 500 and res.body_text is not None
        assert len(res.body_text) <= 70 * 1024
    figure("corpus_sse", case=case["id"], problems=[k for k, _ in problems],
           execute_s=round(res.elapsed_s, 3), peak_rss_growth_mb=round(grew_mb, 1))


def test_deep_json_event_is_the_workers_fault() -> None:
    """The worker sent it, so it is an `invalid_json` problem of the stream, and the events
    after it are still read; a `request`/"client error" problem blames the harness."""
    depth = 200_000

    def script(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Connection: close\r\n\r\n")
        conn.sendall(b"data: " + b"[" * depth + b"]" * depth + b"\n\n")
        conn.sendall(b'data: {"type": "end", "tokens_out": 0, "stop_reason": "max_tokens"}\n\n')

    with RawServer(script) as srv:
        res = execute(srv.uri, ExecuteRequest(job_id="deep", prompt="hi", max_tokens=1),
                      first_event_timeout=10, event_timeout=10, total_timeout=30)
    assert [p.kind for p in res.problems] == ["invalid_json"], res.problems
    assert res.terminal is not None and res.terminal["type"] == "end"


# --------------------------------------------------------------------------- issue 20 #15
# Values no command should ever crash on, fed to every option of every CLI: the options
# are found by walking the argparse parsers, so a new command or option is covered too.

LLORCH_HARNESS = BIN / "llorch-harness"
DEAD_ENDPOINT = "http://127.0.0.1:9"  # refused at once: nothing leaves the machine
_FILL = {  # values for the arguments a command needs besides the one under test
    "model_id": "tiny-qwen", "name": "N", "repo": "org/n", "architecture": "qwen",
    "backend": "cpu", "model": "tiny-qwen", "worker_id": "worker-cpu-0", "pools": "a",
    "good": "HEAD~1", "bad": "HEAD",  # bisect's range
}


def _leaf_parsers() -> list[tuple[Path, list[str], argparse.ArgumentParser]]:
    from llorch_harness.cli import harness_main, pool_main

    out: list[tuple[Path, list[str], argparse.ArgumentParser]] = []

    def walk(exe: Path, path: list[str], parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.append((exe, path, parser))
        for sub in subs:
            for name, child in sub.choices.items():
                walk(exe, [*path, name], child)

    walk(LLORCH_POOL, [], pool_main.build_parser())
    walk(LLORCH_HARNESS, [], harness_main.build_parser())
    return [(exe, path, p) for exe, path, p in out if path]


def _value_kind(action: argparse.Action) -> str | None:
    """"number" or "text" for an argument that takes one value; None for flags."""
    if action.nargs == 0 or isinstance(action, argparse._HelpAction | argparse._VersionAction):
        return None
    if action.type is None or action.type is str:
        return "text"
    try:
        return "number" if isinstance(action.type("1"), int | float) else "text"
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return "number"


def cli_option_cases() -> list[Any]:
    cases = []
    for exe, path, parser in _leaf_parsers():
        for action in parser._actions:
            kind = _value_kind(action)
            if kind is None:
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            cases.append(pytest.param((exe, tuple(path), action.dest, kind),
                                      id=f"{exe.name} {' '.join(path)} {name}"))
    return cases


def _raw(case: dict[str, Any]) -> bytes:
    if "b64" in case:
        return base64.b64decode(case["b64"])
    return value_of(case, Path("/nonexistent")).encode("utf-8")


def _argv(exe: Path, path: tuple[str, ...], dest: str, value: bytes, sb: Sandbox
          ) -> list[bytes]:
    parser = next(p for e, pa, p in _leaf_parsers() if e == exe and tuple(pa) == path)
    scratch = sb.pool.root / "scratch"  # inside the pool root, never created by a run
    fill = {**_FILL, "dir": str(scratch / "missing"), "results": None,
            "llorch_repo": str(scratch / "missing")}
    argv: list[bytes] = [os.fsencode(str(exe)), *(p.encode() for p in path)]
    tested: list[bytes] = []
    for action in parser._actions:
        if _value_kind(action) is None:
            continue
        if action.dest == dest:
            if action.option_strings:
                tested = [action.option_strings[-1].encode() + b"=" + value]
            else:
                argv.append(value)
            continue
        if not action.option_strings:
            if fill.get(action.dest) is not None:
                argv.append(fill[action.dest].encode())
        elif action.required:
            argv += [action.option_strings[-1].encode(), fill[action.dest].encode()]
    if exe == LLORCH_POOL:
        argv += [b"--pool-root", os.fsencode(str(sb.pool.root))]
    return argv + tested  # last, so it wins over the --pool-root given above


@pytest.mark.parametrize("target", cli_option_cases())
def test_every_cli_option_survives_hostile_values(target: tuple[Any, ...],
                                                  sandbox: Sandbox) -> None:
    """Numbers that are no numbers (nan, inf, -1, 99999, 1e999) and text that is no UTF-8,
    in every option of every command: one clear line and a non-zero exit (usage errors
    exit 2), or a normal run; never a traceback, never a hang."""
    exe, path, dest, kind = target
    values = [c for c in load("cli_values") if c["class"] == kind]
    if not FULL:  # CI: one value per option, rotating, so every value still runs somewhere
        values = [values[sum(map(ord, f"{path}{dest}")) % len(values)]]
    for case in values:
        argv = _argv(exe, path, dest, _raw(case), sandbox)
        sandbox.runs += 1
        r = subprocess.run(argv, capture_output=True, timeout=ANTI_HANG_S, check=False,
                           env={**sandbox.env, "HF_ENDPOINT": DEAD_ENDPOINT,
                                # a valid value runs the command: its caches stay inside
                                "LLORCH_HARNESS_CACHE": str(sandbox.pool.root / "cache")},
                           cwd=sandbox.root / "cwd", stdin=subprocess.DEVNULL)
        res = subprocess.CompletedProcess(argv, r.returncode,
                                          r.stdout.decode("utf-8", "replace"),
                                          r.stderr.decode("utf-8", "replace"))
        if "Traceback" in res.stderr or INTERNAL in res.stderr:
            sandbox.tracebacks += 1
        if case.get("expect") == "handled":
            assert_handled(res)
        else:
            line = assert_clear_refusal(res)
            if kind == "text":
                assert res.returncode == 2, line
                assert "UTF-8" in line or "invalid choice" in line, line


@pytest.mark.parametrize("case", cases("hub_endpoints"))
def test_hostile_hub_endpoint(case: dict[str, Any], sandbox: Sandbox) -> None:
    """`HF_ENDPOINT='http://[::1'` or `'ftp://h:99999'`: one usage line, no traceback, and
    no credential in it."""
    raw = _raw(case)
    env = {**sandbox.env, "HF_ENDPOINT": os.fsdecode(raw)}
    argv = [str(LLORCH_POOL), "models", "download", "tiny-qwen", "--pool-root",
            str(sandbox.pool.root)]
    sandbox.runs += 1
    r = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                       timeout=ANTI_HANG_S, check=False, env=env, cwd=sandbox.root / "cwd",
                       stdin=subprocess.DEVNULL)
    if "Traceback" in r.stderr or INTERNAL in r.stderr:
        sandbox.tracebacks += 1
    line = assert_clear_refusal(r)
    assert r.returncode == 2 and "hub endpoint" in line, line
    if case.get("secret"):
        assert case["secret"] not in r.stderr + r.stdout


@pytest.mark.parametrize("case", cases("gate_times"))
def test_hostile_gate_result_time(case: dict[str, Any], sandbox: Sandbox) -> None:
    """`gate merge` of a result whose finished_at is `0001-01-01T00:00:00+23:59` (and other
    times): one line naming the file and the key, exit 2; or a verdict, never a crash."""
    from tests.test_gatemerge import pool_doc

    doc = pool_doc("mac", "metal")
    value: Any = case["json"] if "json" in case else case.get("value")
    results = sandbox.pool.root / "results"
    results.mkdir(parents=True)
    for key in ("finished_at", "started_at"):
        text = json.dumps({**doc, key: value})
        if "json_text" in case:
            text = json.dumps({**doc, key: "@@"}).replace('"@@"', case["json_text"])
        path = results / f"{key}.json"
        path.write_text(text)
        r = sandbox.run([str(LLORCH_HARNESS), "gate", "merge", f"mac={path}", "--html",
                         str(results / "out.html"), "--json", str(results / "out.json")])
        assert "Traceback" not in r.stderr and INTERNAL not in r.stderr, r.stderr[-3000:]
        if r.returncode == 2:
            line = assert_clear_refusal(r)
            assert str(path) in line and key in line, line
        else:  # a verdict (pass or fail), with its report
            assert case.get("expect") == "handled" or key == "started_at", r.stdout[-2000:]
            assert r.returncode in (0, 1) and (results / "out.json").exists(), r.stderr


def _plugin_case_argv(case: dict[str, Any], tmp: Path) -> tuple[list[str], dict[str, str]]:
    afile = tmp / "a-file"
    afile.write_text("x")
    adir = tmp / "a-dir"
    adir.mkdir(exist_ok=True)

    def sub(v: str) -> str:
        return v.replace("{FILE}", str(afile)).replace("{DIR}", str(adir))

    return [sub(a) for a in case.get("argv", [])], {k: sub(v) for k, v in
                                                     case.get("env", {}).items()}


@pytest.mark.parametrize("case", cases("plugin_options"))
def test_hostile_gate_option_is_one_usage_error(case: dict[str, Any], tmp_path: Path) -> None:
    """Issue 20 #16: a bad gate option fails the run once (pytest exit 4, one
    `ERROR: llorch-harness: ...` line), not every test's setup with a traceback."""
    argv, env = _plugin_case_argv(case, tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    t0 = time.monotonic()
    r = subprocess.run([str(BIN / "pytest"), str(REPO_ROOT / "tests_hw"), "-m", "cpu", "-q",
                        "-p", "no:cacheprovider", "-k", "test_health", *argv],
                       capture_output=True, text=True, timeout=ANTI_HANG_S, check=False,
                       env=clean_env(**env), cwd=cwd, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 4, out[-3000:]
    assert "Traceback" not in out and "INTERNALERROR" not in out, out[-3000:]
    errors = [ln for ln in out.splitlines() if ln.startswith("ERROR:")]
    assert len(errors) == 1, out[-3000:]
    assert "llorch-harness" in errors[0] or "argument" in out, out[-3000:]
    assert not re.search(r"\d+ errors?\b", out), out[-3000:]  # no per-test setup errors
    figure("corpus_plugin_option", case=case["id"], exit=r.returncode, seconds=round(took, 2),
           message=errors[0][:160])


# --------------------------------------------------------------------------- issue 20 #16
# pytest decides rootdir and ini file before it loads plugins, so `--OPTION VALUE` with an
# existing VALUE moved the run's root there. Every value-taking gate option (and
# pytest-html's --html), spelled with a space, must leave rootdir and ini file alone.


def _space_options(tmp: Path) -> list[tuple[str, str]]:
    from llorch_harness.plugin import labs

    adir = tmp / "some-dir"
    adir.mkdir(exist_ok=True)
    afile = adir / "existing.json"
    afile.write_text("{}")
    out = []
    for spec in labs.OPTIONS:
        if spec.kind == "bool":
            continue
        value = {"float": "30", "int": "8"}.get(spec.kind, str(adir))
        if spec.choices:
            value = spec.choices[0]
        if spec.flag in ("--gate-json",):
            value = str(afile)
        if spec.flag in ("--gate-model",):
            value = "tiny-qwen"
        if spec.flag in ("--backend-available", "--require-backend"):
            value = "cpu"
        out.append((spec.flag, value))
    out.append(("--html", str(adir / "existing.html")))
    (adir / "existing.html").write_text("")
    return out


def test_space_separated_option_values_keep_the_rootdir(tmp_path: Path) -> None:
    opts = _space_options(tmp_path)
    moved = []
    for flag, value in opts:
        r = subprocess.run([str(BIN / "pytest"), "-m", "cpu", "--collect-only", "-q",
                            "-p", "no:cacheprovider", flag, value],
                           capture_output=True, text=True, timeout=ANTI_HANG_S, check=False,
                           env=clean_env(), cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
        out = r.stdout + r.stderr
        collected = [ln for ln in r.stdout.splitlines() if "::" in ln]
        # issue 13: pytest has no public way to move a rootdir back, so a moved run is
        # refused once, naming the joined form (plugin/rootcheck.py); never run moved
        refused = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR:")]
        if (r.returncode == 4 and len(refused) == 1
                and refused[0].endswith(f"joined to its value: {flag}={value}")):
            continue
        if r.returncode not in (0, 5) or any(not c.startswith("tests_hw/") for c in collected):
            moved.append((flag, r.returncode, out[-400:]))
    figure("corpus_plugin_rootdir", options=len(opts), moved=len(moved))
    assert moved == [], moved


# the exact commands of issue 20 #15 that take an argument (the files and environment
# values are the corpus cases above): each one line naming the problem, exit 2
ISSUE_20_COMMANDS = {
    "register-name-latin1": [b"models", b"register", b"cafe", b"--name", b"caf\xe9",
                             b"--repo", b"o/cafe", b"--architecture", b"qwen"],
    "hub-serve-port-99999": [b"hub", b"serve", b"{POOL}", b"--port", b"99999"],
    "tiny-model-seed-minus-1": [b"tiny-model", b"build", b"{POOL}/tiny", b"--seed", b"-1"],
    "spawn-ready-timeout-nan": [b"worker", b"spawn", b"cpu", b"--model", b"tiny-qwen",
                                b"--ready-timeout", b"nan"],
}


@pytest.mark.parametrize("name", list(ISSUE_20_COMMANDS))
def test_issue_20_listed_commands(name: str, sandbox: Sandbox) -> None:
    args = [a.replace(b"{POOL}", os.fsencode(str(sandbox.pool.root)))
            for a in ISSUE_20_COMMANDS[name]]
    exe = LLORCH_POOL if args[0] in (b"models", b"worker") else LLORCH_HARNESS
    extra = [b"--pool-root", os.fsencode(str(sandbox.pool.root))] if exe == LLORCH_POOL else []
    sandbox.runs += 1
    r = subprocess.run([os.fsencode(str(exe)), *args, *extra], capture_output=True,
                       timeout=ANTI_HANG_S, check=False, env=sandbox.env,
                       cwd=sandbox.root / "cwd", stdin=subprocess.DEVNULL)
    res = subprocess.CompletedProcess(args, r.returncode, r.stdout.decode("utf-8", "replace"),
                                      r.stderr.decode("utf-8", "replace"))
    if "Traceback" in res.stderr:
        sandbox.tracebacks += 1
    assert_clear_refusal(res)
    assert res.returncode == 2, res.stderr
    assert not sandbox.pool.catalog_path.exists() and not (sandbox.pool.root / "tiny").exists()
