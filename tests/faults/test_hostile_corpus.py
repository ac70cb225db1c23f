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

import base64
import json
import os
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

from llorch_harness import catalog as cat
from llorch_harness import workers
from llorch_harness.errors import HarnessError
from llorch_harness.hub import LocalHub, build_embedded_hub_root
from llorch_harness.paths import PoolPaths, validate_model_id, validate_repo_id
from llorch_harness.workerclient import ExecuteRequest, execute

from .common import ANTI_HANG_S, BIN, FULL, LLORCH, LLORCH_POOL, clean_env, figure
from .rawserver import RawServer

CORPUS = Path(__file__).with_name("corpus")
OUTSIDE_TARGETS = [Path("/tmp/evil"), Path("/tmp/llorch-evil.json"), Path("/tmp/llorch-outside")]
MAX_MESSAGE = 600  # a clear message is one line, and a 4096-character value is cut in it

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
        if "Traceback" in r.stderr or "Traceback" in r.stdout:
            self.tracebacks += 1
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
