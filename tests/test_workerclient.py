"""The worker client against real misbehaving servers: it must report, never hang or blow up."""

from __future__ import annotations

import json
import socket
import threading
import time
import tracemalloc

import pytest

from llorch_harness.checks.workerclient import (
    DEADLINE_BASE_S,
    DEADLINE_PER_TOKEN_S,
    MAX_RAW_LINES,
    ExecuteRequest,
    StreamResult,
    execute,
    generation_deadline,
    health,
    is_uuid_shaped,
)
from llorch_harness.checks.workerlog import GenerationFacts
from tests.sse_servers import BROADCAST_MESSAGE, SSEServer, StubWorker, sse_server

HANG_BOUND_S = 10.0  # generous: the deadlines under test are 1 s


def _req(max_tokens: int = 3) -> ExecuteRequest:
    return ExecuteRequest(job_id="job-1", prompt="Hello, how are you?", max_tokens=max_tokens)


def _run(name: str, **kw: float) -> tuple[StreamResult, SSEServer]:
    with sse_server(name) as srv:
        res = execute(srv.url, _req(), **kw)
    return res, srv


def _kinds(res: StreamResult) -> list[str]:
    return [p.kind for p in res.problems]


def test_request_body_omits_none_fields() -> None:
    body = ExecuteRequest(job_id="j", prompt="p", max_tokens=5, stop=["\n"]).to_json()
    assert body == {"job_id": "j", "prompt": "p", "max_tokens": 5, "temperature": 0.0,
                    "seed": 42, "stop": ["\n"]}
    body = ExecuteRequest(job_id="j", prompt="p", max_tokens=5, temperature=None,
                          seed=None).to_json()
    assert "temperature" not in body and "seed" not in body


def test_good_stream_parsed() -> None:
    res, srv = _run("good")
    assert res.transport_error is None, res.transport_error
    assert res.status_code == 200
    assert res.tokens == ["Hello", ",", " world"]
    assert res.text == "Hello, world"
    assert res.terminal is not None and res.terminal["type"] == "end"
    assert res.error_event is None
    # no log read: pieces over the whole request is all a client can say
    assert res.tokens_generated is None
    assert res.tokens_per_sec == pytest.approx(3 / res.elapsed_s)
    # with the log's count, generated tokens over the worker's decode time (12 ms)
    res.log = GenerationFacts("job-1", tokens_generated=6, line_nos=[1])
    assert res.tokens_per_sec == pytest.approx(500.0)
    assert res.first_event_s is not None and res.first_event_s <= res.elapsed_s
    assert [e["type"] for e in res.events] == ["started", "token", "token", "token", "end"]
    assert res.raw_lines[0].startswith("data: ") and res.raw_lines[1] == ""
    # the request crossed the wire as the contract's JSON, with a correlation id echoed back
    sent = srv.requests[0]
    assert sent["path"] == "/execute" and sent["body"]["job_id"] == "job-1"
    assert res.correlation_id is not None
    assert res.correlation_id == res.request_correlation_id


def test_dict_request_and_own_correlation_id() -> None:
    cid = "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e"
    with sse_server("good") as srv:
        res = execute(srv.url, {"job_id": "x", "prompt": "p", "max_tokens": 1},
                      headers={"X-Correlation-ID": cid})
    assert res.correlation_id == cid == res.request_correlation_id
    assert srv.requests[0]["body"] == {"job_id": "x", "prompt": "p", "max_tokens": 1}


def test_non_uuid_correlation_id_is_replaced_not_sent() -> None:
    """The real worker echoes only UUID-shaped ids: the client never sends another kind."""
    with sse_server("good") as srv:
        res = execute(srv.url, {"job_id": "x", "prompt": "p", "max_tokens": 1},
                      headers={"X-Correlation-ID": "cid-7"})
    sent = {k.lower(): v for k, v in srv.requests[0]["headers"].items()}["x-correlation-id"]
    assert sent != "cid-7" and is_uuid_shaped(sent)
    assert res.request_correlation_id == sent == res.correlation_id


def test_deadlines_scale_with_max_tokens() -> None:
    assert generation_deadline(20) == DEADLINE_BASE_S + 20 * DEADLINE_PER_TOKEN_S
    assert generation_deadline(2048) > generation_deadline(20) > generation_deadline(None)


def test_frozen_worker_is_waited_for_whole_generation() -> None:
    """Headers and every event come only when the generation ends: the first-event deadline
    is the whole request's, never a shorter "time to first token" limit."""
    with sse_server("frozen") as srv:
        res = execute(srv.url, _req(max_tokens=3), total_timeout=5)
    assert res.transport_error is None, res.transport_error
    assert res.first_event_s is not None and res.first_event_s >= 1.4
    with sse_server("never_answer") as srv:
        t0 = time.monotonic()
        res = execute(srv.url, _req(max_tokens=3), total_timeout=1.5)
    assert [p.kind for p in res.problems] in (["first_event_timeout"], ["deadline"])
    assert time.monotonic() - t0 < 10


def test_close_delimited_crlf_stream() -> None:
    res, _ = _run("close_delimited")
    assert res.transport_error is None, res.transport_error
    assert res.tokens == ["a", "b"]


def test_no_data_event_is_a_protocol_problem() -> None:
    res, _ = _run("no_data")
    assert _kinds(res) == ["no_data", "no_data"]
    assert "no `data:` line" in (res.transport_error or "")
    assert [e["type"] for e in res.events] == ["started", "end"]  # valid events kept


def test_invalid_json_is_a_protocol_problem() -> None:
    res, _ = _run("invalid_json")
    assert _kinds(res) == ["invalid_json"]
    assert "not valid JSON" in (res.transport_error or "")
    assert [e["type"] for e in res.events] == ["started", "end"]


def test_unknown_type_is_a_protocol_problem() -> None:
    res, _ = _run("unknown_type")
    assert _kinds(res) == ["unknown_type"]
    assert "'bogus'" in (res.transport_error or "")
    assert res.tokens == ["a"]


def test_not_event_stream_200() -> None:
    res, _ = _run("not_sse")
    assert res.status_code == 200
    assert _kinds(res) == ["content_type"]
    assert "application/json" in (res.transport_error or "")
    assert res.body_json == {"text": "hello"}


def test_400_keeps_body_and_errors() -> None:
    res, _ = _run("bad_request")
    assert res.status_code == 400
    assert res.transport_error is None
    assert res.errors and res.errors[0]["field"] == "max_tokens"
    assert res.body_text is not None and "max_tokens" in res.body_text
    assert res.events == []


def test_broadcast_error_event_is_kept() -> None:
    res, _ = _run("broadcast_error")
    assert res.transport_error is None
    assert res.error_event == {"type": "error", "code": "INFERENCE_FAILED",
                               "message": BROADCAST_MESSAGE}
    assert res.terminal == res.error_event


def test_connection_refused() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    t0 = time.monotonic()
    res = execute(f"http://127.0.0.1:{port}", _req())
    assert time.monotonic() - t0 < HANG_BOUND_S
    assert res.status_code == 0
    assert _kinds(res) == ["connect"]
    assert f"127.0.0.1:{port}" in (res.transport_error or "")


def test_accept_and_never_answer_hits_first_event_timeout() -> None:
    t0 = time.monotonic()
    res, _ = _run("never_answer", first_event_timeout=1.0, event_timeout=1.0)
    assert time.monotonic() - t0 < HANG_BOUND_S
    assert _kinds(res) == ["first_event_timeout"]
    assert "first_event_timeout=1 s" in (res.transport_error or "")
    assert res.status_code == 0


def test_one_token_then_stall_hits_event_timeout() -> None:
    t0 = time.monotonic()
    res, _ = _run("stall_after_token", first_event_timeout=5.0, event_timeout=1.0)
    assert time.monotonic() - t0 < HANG_BOUND_S
    assert _kinds(res) == ["event_timeout"]
    assert "stalled" in (res.transport_error or "")
    assert res.tokens == ["one"]  # what came before the stall is kept


def test_trickling_stream_hits_total_deadline() -> None:
    t0 = time.monotonic()
    res, _ = _run("trickle", first_event_timeout=5.0, event_timeout=5.0, total_timeout=1.5)
    assert time.monotonic() - t0 < HANG_BOUND_S
    assert _kinds(res) == ["deadline"]
    assert "total deadline of 1.5 s" in (res.transport_error or "")
    assert len(res.tokens) >= 1


def test_stream_left_open_after_end_is_reported() -> None:
    res, _ = _run("open_after_end", event_timeout=1.0)
    assert _kinds(res) == ["event_timeout"]
    assert "not closed after the terminal event" in (res.transport_error or "")
    assert res.terminal is not None and res.terminal["type"] == "end"


def test_huge_line_refused_without_buffering_it() -> None:
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        res, _ = _run("huge_line")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - t0 < 30.0
    assert _kinds(res) == ["line_too_long"]
    assert "max_line_bytes=1048576" in (res.transport_error or "")
    assert peak < 16 * 1024 * 1024, f"peak allocation {peak} bytes reading a 100 MB line"


def test_newline_flood_stays_linear_and_capped() -> None:
    t0 = time.monotonic()
    res, _ = _run("newline_flood", max_body_bytes=64 << 20)
    assert time.monotonic() - t0 < 120.0  # a hang guard: a quadratic parser never ends
    assert res.transport_error is None, res.transport_error
    assert res.tokens == ["a"]
    assert len(res.raw_lines) == MAX_RAW_LINES


def test_too_many_events() -> None:
    res, _ = _run("many_events", max_events=10)
    assert _kinds(res) == ["too_many_events"]
    assert len(res.events) == 10


def test_body_cap() -> None:
    res, _ = _run("many_events", max_body_bytes=500)
    assert _kinds(res) == ["body_too_large"]


def _big_token_stream(n_tokens: int, piece_chars: int, first: str = "") -> list[bytes]:
    """A contract stream whose token events each carry a `piece_chars`-character piece
    (starting with `first`), framed as HTTP chunks, built before any measurement starts."""
    events = [{"type": "started", "job_id": "job-1", "model": "m", "started_at": "0"}]
    events += [{"type": "token", "t": first + chr(ord("a") + i % 26) * (piece_chars - len(first)),
                "i": i} for i in range(n_tokens)]
    events.append({"type": "end", "tokens_out": n_tokens, "decode_time_ms": 1,
                   "stop_reason": "MAX_TOKENS"})
    out = []
    for ev in events:
        data = b"data: " + json.dumps(ev).encode() + b"\n\n"
        out += [f"{len(data):x}\r\n".encode(), data, b"\r\n"]
    return out + [b"0\r\n\r\n"]


def test_memory_stays_within_the_body_cap() -> None:
    """A stream just under `max_body_bytes` is read whole, and what the client keeps (events
    and raw lines together) stays within the cap: the raw lines, a diagnostic copy of the
    same bytes, give way to the events. Before, both were kept: twice the cap."""
    cap, n_tokens, piece = 16 << 20, 15, 1_000_000  # 15 MB of pieces under a 16 MiB cap
    frames = _big_token_stream(n_tokens, piece)

    def behaviour(h) -> None:  # writes the prebuilt frames: the server allocates nothing
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for frame in frames:
            h.wfile.write(frame)
        h.wfile.flush()

    with sse_server("good") as warm:  # imports and first-use caches are not the body's
        execute(warm.url, _req())
    with SSEServer(behaviour) as srv:
        tracemalloc.start()
        try:
            res = execute(srv.url, _req(), max_body_bytes=cap)
            kept, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert res.transport_error is None, res.transport_error
    assert len(res.tokens) == n_tokens and all(len(t) == piece for t in res.tokens)
    assert res.terminal is not None and res.terminal["type"] == "end"
    slack = 1 << 20  # the client's own objects (connection, result fields), not the body
    assert kept <= cap + slack, f"the result keeps {kept} bytes, cap {cap}"
    # the parser's one line in flight (a few copies of 1 MiB) comes on top, never a body
    assert peak < cap + 6 * slack, f"peak {peak} bytes, cap {cap}"
    assert res.raw_lines == [] or res.raw_lines[0].startswith("data: ")


def test_events_beyond_the_cap_in_memory_stop_the_read() -> None:
    """Events whose parsed form outgrows the cap end the read with body_too_large, as a
    body over the cap on the wire does: one emoji in a piece makes Python keep 4 bytes per
    character, so 100 kB of (ASCII-escaped) JSON holds 400 kB."""
    frames = _big_token_stream(3, 100_000, first="\U0001F600")

    def behaviour(h) -> None:
        h.start_sse()
        for frame in frames[:-1]:
            h.wfile.write(frame)
        h.wfile.write(frames[-1])
        h.wfile.flush()

    with SSEServer(behaviour) as srv:
        res = execute(srv.url, _req(), max_body_bytes=1_000_000)
    assert _kinds(res) == ["body_too_large"]
    assert "in memory" in (res.transport_error or "")
    assert len(res.tokens) == 2


def test_health_and_stub_worker(tmp_path) -> None:
    with StubWorker(log_path=tmp_path / "w.log") as w:
        assert health(w.url) == {"status": "healthy", "vram_bytes": 0}
        res = execute(w.url, _req(max_tokens=4))
    # pieces: punctuation rides with the next word, so up to 4 events for 4 tokens
    assert res.transport_error is None and 1 <= len(res.tokens) <= 4
    assert res.terminal is not None and res.terminal["stop_reason"] == "MAX_TOKENS"


def test_health_none_on_trouble() -> None:
    with sse_server("not_sse") as srv:  # 200 JSON but not a health object? still a dict
        assert health(srv.url) == {"text": "hello"}
    with sse_server("bad_request") as srv:
        assert health(srv.url) is None
    t0 = time.monotonic()
    with sse_server("never_answer") as srv:
        assert health(srv.url, timeout=1.0) is None
    assert time.monotonic() - t0 < HANG_BOUND_S


def test_no_threads_left_behind() -> None:
    before = set(threading.enumerate())
    for name in ("good", "stall_after_token", "never_answer"):
        _run(name, first_event_timeout=0.5, event_timeout=0.5)
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leftover == []


@pytest.mark.parametrize("name", ["missing_terminal", "two_terminals", "bad_indices"])
def test_contract_breaches_are_not_transport_problems(name: str) -> None:
    """Well-framed but wrong streams parse cleanly; streamcheck is what flags them."""
    res, _ = _run(name)
    assert res.transport_error is None
    assert res.events
