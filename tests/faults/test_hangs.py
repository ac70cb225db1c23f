"""Item 7: a worker that hangs costs one request its deadline, never the run.

Each scenario's first connection misbehaves (accepts and never answers, never reads,
sends headers only, one token then silence, keep-alive comments forever, tokens
forever, no close after `end`); the next request on the same server is answered
properly and must succeed. Deadlines are behaviour here: the failed request must end
no earlier than its deadline and not much later (generous slack for busy CI), with a
problem that names the deadline. One scenario uses the real reference worker with its
`stall` fault, then a healthy reference worker carries on.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llorch_harness.checks.workerclient import ExecuteRequest, StreamResult, execute
from llorch_harness.lab.tinymodel import build_tiny_model
from llorch_harness.pool import workers
from llorch_harness.pool.catalog import ModelEntry, update_catalog
from llorch_harness.pool.paths import PoolPaths

from .common import FULL, count, figure
from .rawserver import RawServer

FIRST, EVENT, TOTAL = (2.0, 2.0, 6.0) if FULL else (1.0, 1.0, 3.0)
SLACK = 10.0  # generous: a loaded CI machine, never a performance assertion

Script = Callable[[socket.socket], None]


def _head(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Connection: close\r\n\r\n")


def _ev(conn: socket.socket, obj: dict) -> None:
    conn.sendall(b"data: " + json.dumps(obj).encode() + b"\n\n")


def good(conn: socket.socket) -> None:
    _head(conn)
    _ev(conn, {"type": "started", "job_id": "j", "model": "m", "started_at": "now"})
    for i, t in enumerate(["a", "b"]):
        _ev(conn, {"type": "token", "t": t, "i": i})
    _ev(conn, {"type": "end", "tokens_out": 2, "decode_time_ms": 1, "stop_reason": "max_tokens"})


def scenarios(stop_wait: Callable[[float], bool]) -> dict[str, tuple[Script, str, float]]:
    """name -> (first connection's script, expected problem kind, its deadline)."""

    def never_answer(conn: socket.socket) -> None:
        stop_wait(60)

    def headers_only(conn: socket.socket) -> None:
        _head(conn)
        stop_wait(60)

    def one_token(conn: socket.socket) -> None:
        _head(conn)
        _ev(conn, {"type": "started", "job_id": "j", "model": "m", "started_at": "now"})
        _ev(conn, {"type": "token", "t": "a", "i": 0})
        stop_wait(60)

    def comments_forever(conn: socket.socket) -> None:
        _head(conn)
        _ev(conn, {"type": "started", "job_id": "j", "model": "m", "started_at": "now"})
        for _ in range(600):  # bytes keep coming, events do not
            conn.sendall(b": keep-alive\n")
            if stop_wait(0.2):
                return

    def tokens_forever(conn: socket.socket) -> None:
        _head(conn)
        for i in range(2000):  # every gap is short: only the total deadline can end it
            _ev(conn, {"type": "token", "t": "x", "i": i})
            if stop_wait(EVENT / 4):
                return

    def no_close_after_end(conn: socket.socket) -> None:
        good(conn)
        stop_wait(60)

    return {
        "accept-never-answer": (never_answer, "first_event_timeout", FIRST),
        "accept-never-read": (never_answer, "first_event_timeout", FIRST),
        "headers-then-nothing": (headers_only, "first_event_timeout", FIRST),
        "one-token-then-stall": (one_token, "event_timeout", EVENT),
        "keepalive-comments-forever": (comments_forever, "event_timeout", EVENT),
        "tokens-forever": (tokens_forever, "deadline", TOTAL),
        "end-but-no-close": (no_close_after_end, "event_timeout", EVENT),
    }


def run(uri: str, job: str) -> StreamResult:
    return execute(uri, ExecuteRequest(job_id=job, prompt="hi", max_tokens=2),
                   first_event_timeout=FIRST, event_timeout=EVENT, total_timeout=TOTAL,
                   connect_timeout=5)


@pytest.mark.parametrize("name", list(scenarios(lambda s: False)))
def test_hanging_worker_fails_one_request_and_the_next_goes_on(name: str) -> None:
    rounds = count("hang_requests")
    elapsed: list[float] = []
    for r in range(rounds):
        srv = RawServer()
        script, kind, deadline = scenarios(srv.stop.wait)[name]
        srv.scripts = [script, good]
        srv.read_request = name != "accept-never-read"
        with srv:
            t0 = time.monotonic()
            bad = run(srv.uri, f"hang-{r}")
            took = time.monotonic() - t0
            nxt = run(srv.uri, f"next-{r}")
        elapsed.append(took)
        kinds = [p.kind for p in bad.problems]
        assert kind in kinds, (kinds, bad.transport_error)
        msg = next(p.message for p in bad.problems if p.kind == kind)
        assert f"{deadline:g} s" in msg, msg  # the message names the deadline that fired
        assert deadline - 0.5 <= took <= deadline + SLACK, f"{name}: ended after {took:.1f} s"
        if name != "end-but-no-close":
            assert bad.terminal is None
        assert nxt.problems == [] and nxt.terminal and nxt.terminal["type"] == "end", \
            nxt.transport_error
        assert nxt.text == "ab"
    figure("hang", scenario=name, rounds=rounds, expected=kind, deadline_s=deadline,
           elapsed_s=[round(x, 2) for x in elapsed], next_request_ok=rounds)


# --------------------------------------------------------------------------- real worker


@pytest.fixture
def tiny_pool(tmp_path: Path) -> Iterator[PoolPaths]:
    paths = PoolPaths.at(tmp_path / "pool")
    build_tiny_model(paths.models_dir / "tiny-qwen")
    entry = ModelEntry(id="tiny-qwen", name="Tiny", path=".test-models/tiny-qwen",
                       downloaded=True, backends=["cpu"], architecture="qwen")
    update_catalog(paths, lambda c: c.upsert(entry))
    yield paths
    workers.stop_all(paths, grace=1.0)
    workers.reap_orphans(paths, grace=1.0)


def test_stalled_reference_worker_then_a_healthy_one(tiny_pool: PoolPaths) -> None:
    with workers.spawn_worker(tiny_pool, "cpu", "tiny-qwen", worker="reference", port=0,
                              ready_timeout=60, worker_id="stalled",
                              extra_env={"LLORCH_REF_FAULTS": "stall"}) as w:
        t0 = time.monotonic()
        bad = run(w.uri, "stalled-1")
        took = time.monotonic() - t0
        assert [p.kind for p in bad.problems] == ["first_event_timeout"], bad.transport_error
        assert "accepted the request but sent nothing" in (bad.transport_error or "")
        assert FIRST - 0.5 <= took <= FIRST + SLACK
        stop = w.stop(grace=2.0)  # a worker stuck in a request still stops
    assert stop.port_free
    with workers.spawn_worker(tiny_pool, "cpu", "tiny-qwen", worker="reference", port=0,
                              ready_timeout=60, worker_id="healthy") as ok:
        res = execute(ok.uri, ExecuteRequest(job_id="after", prompt="hello", max_tokens=4),
                      first_event_timeout=60, event_timeout=30, total_timeout=120)
        assert res.problems == [] and res.terminal and res.terminal["type"] == "end", \
            res.transport_error
        assert len(res.tokens) == 4
    figure("hang_reference_worker", stalled_request_s=round(took, 2), deadline_s=FIRST,
           stop_step=stop.step, next_worker_tokens=len(res.tokens))
