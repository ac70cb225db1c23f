"""Issue 20 #10, #11: one deadline rule for everything the harness reads from outside.

A per-read timeout never fires while bytes keep coming, so every read from a worker or
the hub has a whole-call deadline (answers) or a progress deadline (file bodies), and a
listing has a bound. The class, with its variants:

* a worker's /health that trickles its body, trickles its headers, or never answers
  (as the real llorch-candled does while it generates): `ask_health` against a raw
  socket, `worker spawn --ready-timeout` (library and CLI), `worker list`, `status`;
* a time value that can never expire or has always expired (nan, inf, negative, 0):
  every deadline option of every CLI is a usage error;
* a hub that trickles a file, trickles or withholds an API answer, or whose tree
  listing links to itself, loops between two pages, or never ends: `models download`
  ends at its deadline with one line, the model lock is free, nothing unverified is
  recorded, and the next download (hub repaired) succeeds.

Each failed call must end no earlier than its deadline and not much later (generous
slack for a busy machine: a guard against hangs, not a performance assertion).
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from llorch_harness.errors import HarnessError
from llorch_harness.lab.hub import LocalHub
from llorch_harness.lab.tinymodel import TINY_QWEN_REPO, build_tiny_model
from llorch_harness.pool import catalog as cat
from llorch_harness.pool import download as dl
from llorch_harness.pool import hubdeadline, workers
from llorch_harness.pool.catalog import ModelEntry, update_catalog
from llorch_harness.pool.paths import PoolPaths
from llorch_harness.pool.readiness import NO_ANSWER, ask_health

from .common import ANTI_HANG_S, BIN, LLORCH_POOL, clean_env, count, figure
from .rawserver import RawServer

TRICKLEWORKER = Path(__file__).with_name("trickleworker.py")
LLORCH_HARNESS = BIN / "llorch-harness"
SLACK = 10.0  # generous: a loaded CI machine, never a performance assertion
HEALTH_DEADLINE = 1.0
READY_TIMEOUT = 3.0
STALL = 2.0

Script = Callable[[socket.socket], None]


# --------------------------------------------------------------------------- /health, raw


def _healthy(conn: socket.socket) -> None:
    body = b'{"status": "healthy"}'
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)


def health_scripts(stop_wait: Callable[[float], bool]) -> dict[str, tuple[Script, str]]:
    """name -> (first connection's script, expected state)."""

    def trickle_body(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        for _ in range(100000):
            conn.sendall(b" ")
            if stop_wait(0.1):
                return

    def trickle_headers(conn: socket.socket) -> None:
        for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 10000:
            conn.sendall(bytes([b]))
            if stop_wait(0.1):
                return

    def never_answer(conn: socket.socket) -> None:
        stop_wait(60)

    def chunked_forever(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(100000):
            conn.sendall(b"1\r\n \r\n")
            if stop_wait(0.05):
                return

    def status_500(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n")

    def garbage(conn: socket.socket) -> None:
        conn.sendall(b"not http at all\r\n\r\n")

    return {
        "trickle-body": (trickle_body, NO_ANSWER),
        "trickle-headers": (trickle_headers, NO_ANSWER),
        "never-answer": (never_answer, NO_ANSWER),
        "never-read": (never_answer, NO_ANSWER),
        "chunked-forever": (chunked_forever, NO_ANSWER),
        "status-500": (status_500, "unhealthy"),
        "garbage": (garbage, "unreachable"),
    }


@pytest.mark.parametrize("name", list(health_scripts(lambda s: False)))
def test_health_has_a_whole_call_deadline(name: str) -> None:
    rounds = count("deadline_rounds")
    elapsed = []
    for _ in range(rounds):
        srv = RawServer()
        script, expected = health_scripts(srv.stop.wait)[name]
        srv.scripts = [script, _healthy]
        srv.read_request = name != "never-read"
        with srv:
            t0 = time.monotonic()
            bad = ask_health(srv.uri, HEALTH_DEADLINE)
            took = time.monotonic() - t0
            nxt = ask_health(srv.uri, HEALTH_DEADLINE)
        elapsed.append(round(took, 2))
        assert bad.state == expected, bad
        if expected == NO_ANSWER:
            assert "busy generating, or hung" in bad.detail and f"{HEALTH_DEADLINE:g} s" \
                in bad.detail, bad.detail
            assert HEALTH_DEADLINE - 0.2 <= took <= HEALTH_DEADLINE + SLACK, took
        assert nxt.healthy, nxt
    figure("deadline_health", scenario=name, deadline_s=HEALTH_DEADLINE, state=expected,
           elapsed_s=elapsed)


@pytest.mark.parametrize("uri", ["http://[::1", "http://127.0.0.1:99999", "ftp://x", "",
                                 "http://", "http://127.0.0.1:-1", None, 42,
                                 "http://h\udcff:1"])
def test_health_of_an_unusable_uri_is_a_state_not_a_crash(uri: object) -> None:
    assert ask_health(uri, HEALTH_DEADLINE).state == "invalid"


@pytest.mark.parametrize("deadline", [float("nan"), float("inf"), 0.0, -1.0])
def test_health_refuses_a_deadline_that_never_expires(deadline: float) -> None:
    with pytest.raises(ValueError):
        ask_health("http://127.0.0.1:1", deadline)


# --------------------------------------------------------------------------- workers


@pytest.fixture
def tpool(tmp_path: Path) -> Iterator[tuple[PoolPaths, Path]]:
    """A pool with a model `fake` and the trickle worker installed as llorch-cpu-candled."""
    paths = PoolPaths.at(tmp_path / "pool")
    d = paths.models_dir / "fake"
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "qwen2"}')
    (d / "model.safetensors").write_bytes(b"\0" * 16)
    update_catalog(paths, lambda c: c.upsert(ModelEntry(
        id="fake", name="Fake", path=".test-models/fake", downloaded=True, backends=["cpu"])))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "llorch-cpu-candled"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{TRICKLEWORKER}" "$@"\n')
    exe.chmod(0o755)
    yield paths, bin_dir
    workers.stop_all(paths, grace=1.0)
    workers.reap_orphans(paths, grace=1.0)


def pool_cli(paths: PoolPaths, *args: str, env: dict[str, str] | None = None,
             timeout: float = ANTI_HANG_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LLORCH_POOL), *args, "--pool-root", str(paths.root)],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env=env or clean_env(), stdin=subprocess.DEVNULL)


def one_error(r: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert r.returncode != 0 and (code is None or r.returncode == code), (r.returncode,
                                                                         r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if "error: " in ln]
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.mark.parametrize("mode", ["trickle", "headers", "silent"])
def test_spawn_ready_timeout_holds_whatever_health_does(tpool, mode: str) -> None:
    """Issue 20 #10: `worker spawn --ready-timeout 5` hung on a trickling /health."""
    paths, bin_dir = tpool
    t0 = time.monotonic()
    with pytest.raises(workers.WorkerStartError) as info:
        workers.spawn_worker(paths, "cpu", "fake", bin_dir=bin_dir, port=0,
                             ready_timeout=READY_TIMEOUT, worker_id=f"t-{mode}",
                             extra_env={"TRICKLE_MODE": mode})
    took = time.monotonic() - t0
    msg = info.value.one_line()
    assert f"not ready within {READY_TIMEOUT:g} s" in msg and "no answer" in msg, msg
    assert READY_TIMEOUT - 0.5 <= took <= READY_TIMEOUT + SLACK, took
    assert not list(paths.workers_dir.glob("*.json"))  # stopped, record removed
    figure("deadline_spawn", mode=mode, via="library", ready_timeout_s=READY_TIMEOUT,
           elapsed_s=round(took, 2))


def test_spawn_ready_timeout_holds_through_the_cli(tpool) -> None:
    paths, bin_dir = tpool
    t0 = time.monotonic()
    r = pool_cli(paths, "worker", "spawn", "cpu", "--model", "fake", "--port", "0",
                 "--ready-timeout", f"{READY_TIMEOUT:g}", "--llorch-bin-dir", str(bin_dir),
                 env=clean_env(TRICKLE_MODE="trickle"))
    took = time.monotonic() - t0
    line = one_error(r, 1)
    assert "no answer" in line and "busy generating, or hung" in line, line
    assert took <= READY_TIMEOUT + SLACK, took
    figure("deadline_spawn", mode="trickle", via="cli", ready_timeout_s=READY_TIMEOUT,
           elapsed_s=round(took, 2))


@pytest.mark.parametrize("mode", ["trickle", "headers", "silent"])
def test_list_and_status_report_a_silent_worker_as_busy_not_crashed(tpool, mode: str) -> None:
    """Issue 20 #10: `worker list` and `status` hung; a live worker that does not answer
    /health (the real one generating) shows "no answer", with the reason."""
    paths, bin_dir = tpool
    h = workers.spawn_worker(paths, "cpu", "fake", bin_dir=bin_dir, port=0, ready_timeout=30,
                             worker_id=f"busy-{mode}",
                             extra_env={"TRICKLE_MODE": mode, "TRICKLE_AFTER": "1"})
    timings = {}
    try:
        t0 = time.monotonic()
        (row,) = workers.list_workers(paths)
        timings["library"] = time.monotonic() - t0
        assert row.status == "running" and row.health == NO_ANSWER, row
        assert "busy generating, or hung" in row.note, row.note
        for args in (("worker", "list"), ("worker", "list", "--json"), ("status", "--json"),
                     ("status",)):
            t0 = time.monotonic()
            r = pool_cli(paths, *args)
            timings[" ".join(args)] = time.monotonic() - t0
            assert r.returncode == 0, r.stderr
            assert "Traceback" not in r.stderr
            if "--json" in args:
                data = json.loads(r.stdout)
                (w,) = data["workers"]
                assert w["health"] == NO_ANSWER and "busy generating" in w["note"], w
            else:
                assert NO_ANSWER in r.stdout, r.stdout
        for what, took in timings.items():
            assert took <= workers.LIST_HEALTH_DEADLINE_S + SLACK, (what, took)
        stop = h.stop(grace=5)
        assert stop.port_free
    finally:
        h.stop(grace=1)
    figure("deadline_list", mode=mode, health_deadline_s=workers.LIST_HEALTH_DEADLINE_S,
           **{k.replace(" ", "_").replace("-", ""): round(v, 2) for k, v in timings.items()})


NEVER_EXPIRES = ["nan", "NaN", "inf", "-inf", "1e999", "-1", "-0.5"]


@pytest.mark.parametrize("value", NEVER_EXPIRES + ["0"])
def test_ready_timeout_that_never_expires_is_a_usage_error(tpool, value: str) -> None:
    """Issue 20 #10: `--ready-timeout nan` was accepted and never expired."""
    paths, bin_dir = tpool
    r = pool_cli(paths, "worker", "spawn", "cpu", "--model", "fake", "--port", "0",
                 "--ready-timeout", value, "--llorch-bin-dir", str(bin_dir), timeout=60)
    line = one_error(r, 2)
    assert "--ready-timeout" in line, line
    assert "Spawning" not in r.stdout and not list(paths.workers_dir.glob("*.json"))
    with pytest.raises(HarnessError) as info:
        workers.spawn_worker(paths, "cpu", "fake", bin_dir=bin_dir, port=0,
                             ready_timeout=float(value))
    assert info.value.exit_code == 2


# every deadline option of every command: (argv before the value, argv after)
DEADLINE_OPTIONS = [
    ((str(LLORCH_POOL), "worker", "stop", "x", "--grace"), ()),
    ((str(LLORCH_POOL), "worker", "reap", "--grace"), ()),
    ((str(LLORCH_POOL), "models", "download", "tiny-qwen", "--stall-timeout"), ()),
    ((str(LLORCH_HARNESS), "gate", "merge", "--expect-pools", "a", "--max-age"), ()),
    ((str(LLORCH_HARNESS), "gate", "run", "--pools", "a", "--timeout"), ()),
    ((str(LLORCH_HARNESS), "gate", "run", "--pools", "a", "--max-age"), ()),
]


@pytest.mark.parametrize("value", NEVER_EXPIRES)
@pytest.mark.parametrize("option", DEADLINE_OPTIONS, ids=lambda o: " ".join(o[0][1:]))
def test_every_deadline_option_refuses_what_never_expires(tmp_path: Path, option, value) -> None:
    before, after = option
    r = subprocess.run([*before, value, *after, "--pool-root", str(tmp_path)]
                       if "llorch-pool" in before[0] else [*before, value, *after],
                       capture_output=True, text=True, timeout=60, check=False,
                       env=clean_env(), cwd=tmp_path, stdin=subprocess.DEVNULL)
    one_error(r, 2)


# --------------------------------------------------------------------------- hub


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deadlinehub")
    build_tiny_model(root / TINY_QWEN_REPO)
    return root


def hub_env(hub: LocalHub, tmp: Path) -> dict[str, str]:
    return clean_env(HF_ENDPOINT=hub.url, HF_HOME=str(tmp / "hf-home"))


HUB_FAULTS: dict[str, tuple[Callable[[LocalHub], None], str, str]] = {
    # name: (arm the fault, the phase named in the error, words of the error)
    "trickle-file": (lambda h: h.faults.trickle("config.json", 1, 0.1), "fetching",
                     "stalled or trickling"),
    "trickle-weights": (lambda h: h.faults.trickle("*.safetensors", 64, 0.05), "fetching",
                        "stalled or trickling"),
    "trickle-revision": (lambda h: h.faults.trickle("/api/*/revision/*", 1, 0.1), "listing",
                         "did not complete"),
    "trickle-tree": (lambda h: h.faults.trickle("/api/*/tree/*", 1, 0.1), "listing",
                     "did not complete"),
    "silent-file": (lambda h: h.faults.stall("config.json", 600, times=None), "fetching",
                    f"within {STALL:g} s"),
    "silent-body": (lambda h: h.faults.stall("*.safetensors", 600, after_bytes=1000,
                                             times=None), "fetching", "stalled or trickling"),
    "links-self": (lambda h: h.faults.tree_links("self"), "listing", "loop"),
    "links-cycle": (lambda h: h.faults.tree_links("cycle"), "listing", "loop"),
}


@pytest.mark.parametrize("name", list(HUB_FAULTS))
def test_download_from_a_stalling_hub_ends_and_frees_the_lock(hub_root: Path, tmp_path: Path,
                                                             name: str) -> None:
    """Issue 20 #11: a trickling hub, or a listing linking to itself, hung `models
    download` forever while it held the model lock."""
    arm, phase, words = HUB_FAULTS[name]
    pool = PoolPaths.at(tmp_path / "pool")
    pool.root.mkdir()
    with LocalHub(hub_root) as hub:
        hub.prime()
        arm(hub)
        t0 = time.monotonic()
        r = subprocess.run([str(LLORCH_POOL), "models", "download", "tiny-qwen",
                            "--stall-timeout", f"{STALL:g}", "--pool-root", str(pool.root)],
                           env=hub_env(hub, tmp_path), capture_output=True, text=True,
                           timeout=ANTI_HANG_S, check=False, stdin=subprocess.DEVNULL)
        took = time.monotonic() - t0
        line = one_error(r, 1)
        assert f"while {phase}" in line and words in line, line
        assert took <= STALL + SLACK, took
        assert_nothing_lost(pool)
        hub.faults.clear()
        again = subprocess.run([str(LLORCH_POOL), "models", "download", "tiny-qwen",
                                "--pool-root", str(pool.root)], env=hub_env(hub, tmp_path),
                               capture_output=True, text=True, timeout=ANTI_HANG_S,
                               check=False, stdin=subprocess.DEVNULL)
        assert again.returncode == 0, again.stderr
    assert cat.read_catalog(pool).find("tiny-qwen").downloaded
    figure("deadline_hub", scenario=name, stall_s=STALL, elapsed_s=round(took, 2),
           error=line[:160])


def assert_nothing_lost(pool: PoolPaths) -> None:
    lock = FileLock(str(dl.model_lock_path(pool, "tiny-qwen")), timeout=0)
    lock.acquire()  # the model lock was released
    lock.release()
    entry = cat.read_catalog(pool).find("tiny-qwen")
    assert entry is None or not entry.downloaded
    assert not list(pool.root.rglob("*.incomplete"))


def test_endless_listing_stops_at_the_page_bound(hub_root: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing that never repeats a URL and never ends is caught by the page bound."""
    monkeypatch.setattr(hubdeadline, "MAX_LISTING_PAGES", 30)
    pool = PoolPaths.at(tmp_path / "pool")
    pool.root.mkdir()
    with LocalHub(hub_root) as hub:
        hub.faults.tree_links("endless")
        t0 = time.monotonic()
        with pytest.raises(HarnessError, match="past 30 pages"):
            dl.download_model(pool, "tiny-qwen", endpoint=hub.url, out=io.StringIO(),
                              stall_timeout=STALL)
        took = time.monotonic() - t0
        pages = sum(1 for q in hub.requests if q.route == "tree")
        assert pages == 30, pages
    assert_nothing_lost(pool)
    figure("deadline_hub", scenario="links-endless", stall_s=STALL, elapsed_s=round(took, 2),
           error=f"stopped after {pages} pages (bound 30 in this test)")


def test_a_slow_but_steady_hub_is_not_a_stall(hub_root: Path, tmp_path: Path) -> None:
    """Progress is what counts: 64 KiB every 0.25 s passes a 2 s stall rule."""
    pool = PoolPaths.at(tmp_path / "pool")
    pool.root.mkdir()
    with LocalHub(hub_root) as hub:
        hub.faults.trickle("*.safetensors", 64 * 1024, 0.25)
        res = dl.download_model(pool, "tiny-qwen", endpoint=hub.url, out=io.StringIO(),
                                stall_timeout=STALL)
    assert res.files and cat.read_catalog(pool).find("tiny-qwen").downloaded


def test_port_numbers_outside_tcp_are_refused_before_any_socket(tmp_path: Path) -> None:
    """`hub serve --port 99999` crashed in bind(); it is a usage error now."""
    for value in ("99999", "-1", "65536", "x"):
        r = subprocess.run([str(LLORCH_HARNESS), "hub", "serve", str(tmp_path), "--port",
                            value], capture_output=True, text=True, timeout=60, check=False,
                           env=clean_env(), stdin=subprocess.DEVNULL)
        one_error(r, 2)
