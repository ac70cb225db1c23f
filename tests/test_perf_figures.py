"""Timing figures from real SSE answers: arrival times of a streaming server against one that
sends every event at once (as llorch-candled does at CP3), and the summaries of a run."""

from __future__ import annotations

import json
import time

import pytest

from llorch_harness.checks.workerclient import ExecuteRequest, execute
from llorch_harness.checks.workerlog import GenerationFacts
from llorch_harness.perf.figures import (
    AT_ONCE,
    Measurement,
    RequestTiming,
    format_value,
    median_mad,
    request_figures,
    request_timing,
)
from tests.sse_servers import SSEServer, good_events

FIRST_TOKEN_DELAY_S = 0.15
GAP_S = 0.03
PIECES = ["Hello", ",", " I", " am", " fine"]


def _streaming(h) -> None:
    """A worker that streams: `started` at once, the first piece after a delay, then one
    piece every GAP_S."""
    h.start_sse()
    events = good_events(h.body["job_id"], PIECES)
    h.event(events[0])
    time.sleep(FIRST_TOKEN_DELAY_S)
    for ev in events[1:-1]:
        h.event(ev)
        time.sleep(GAP_S)
    h.events(events[-1:])


def _at_once(h) -> None:
    """llorch-candled at CP3: nothing until the generation is over, then every event."""
    time.sleep(FIRST_TOKEN_DELAY_S)
    h.start_sse()
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n"
                    for e in good_events(h.body["job_id"], PIECES))
    h.chunk(body)
    h.end_chunks()


def _request(url: str, tokens: int = 7):
    res = execute(url, ExecuteRequest(job_id="perf-j", prompt="Hello", max_tokens=8))
    res.log = GenerationFacts("perf-j", tokens_generated=tokens)  # the log's "Inference completed"
    return res


def test_arrival_times_of_a_streaming_worker_give_ttft_and_itl():
    with SSEServer(_streaming) as srv:
        results = [_request(srv.url) for _ in range(5)]  # figures.MIN_SAMPLES
    timings = [request_timing(r) for r in results]
    assert all(t.ok and t.streamed for t in timings), timings
    for res, t in zip(results, timings, strict=True):
        assert len(res.arrival_s) == len(res.events)
        assert res.arrival_s == sorted(res.arrival_s)
        assert t.first_token_s is not None and t.first_token_s >= FIRST_TOKEN_DELAY_S
        assert len(t.gaps_s) == len(PIECES) - 1  # the server cannot send the last one early:
        assert res.arrival_s[-1] >= FIRST_TOKEN_DELAY_S + GAP_S * (len(PIECES) - 1) * 0.9
    figs = request_figures(timings)
    assert figs["ttft_s"].value is not None and figs["ttft_s"].value >= FIRST_TOKEN_DELAY_S
    assert figs["itl_p50_s"].n == 5 and figs["itl_p95_s"].value >= figs["itl_p50_s"].value
    assert "text pieces" in (figs["itl_p50_s"].note or "")
    assert figs["s_per_token"].value == pytest.approx(
        sorted(r.elapsed_s / 7 for r in results)[2])
    assert len(figs["s_per_token"].samples) == 5  # kept for the rank test


def test_a_worker_that_sends_everything_at_once_has_no_ttft_or_itl_numbers():
    with SSEServer(_at_once) as srv:
        timings = [request_timing(_request(srv.url)) for _ in range(5)]
    assert all(t.ok and not t.streamed for t in timings)
    figs = request_figures(timings)
    for name in ("ttft_s", "itl_p50_s", "itl_p95_s"):
        assert figs[name].value is None and figs[name].note == AT_ONCE
    # what can be measured still is: request time over the log's tokens_generated
    assert figs["s_per_token"].value is not None
    assert figs["s_per_token"].value >= FIRST_TOKEN_DELAY_S / 7
    assert figs["requests"].value == 5


def _ok(elapsed: float, n: int = 10) -> RequestTiming:
    return RequestTiming(True, None, elapsed, n, None, (), False, elapsed * 900)


def test_failed_requests_are_not_timed_and_too_few_make_figures_unavailable():
    bad = RequestTiming(False, "no end event (Forward pass failed)", 0.01, None, None)
    figs = request_figures([_ok(0.1), _ok(0.2), bad, bad])
    assert figs["s_per_token"].value is None
    assert "2 of 4 measured requests usable, at least 5 needed" in (figs["s_per_token"].note or "")
    assert "Forward pass failed" in (figs["s_per_token"].note or "")
    figs = request_figures([_ok(0.1), _ok(0.3), _ok(0.2), _ok(0.15), _ok(0.25), bad])
    assert (figs["s_per_token"].value, figs["s_per_token"].n) == (pytest.approx(0.02), 5)
    assert figs["s_per_token"].spread == pytest.approx(0.005)
    assert figs["tokens_per_sec"].value == pytest.approx(50.0)


def test_request_timing_refuses_what_cannot_be_timed():
    class Res:
        status_code, problems, elapsed_s = 200, [], 0.5
        events = [{"type": "started"}, {"type": "token", "t": "a", "i": 0},
                  {"type": "end", "decode_time_ms": 400}]
        arrival_s = [0.5, 0.5, 0.5]
        tokens_generated = None

    assert request_timing(Res()).why == "the worker log gave no tokens_generated for the request"
    Res.tokens_generated = 3
    t = request_timing(Res())
    assert t.ok and not t.streamed and t.s_per_token == pytest.approx(0.5 / 3)
    Res.events = [{"type": "error", "code": "INFERENCE_FAILED", "message": "boom"}]
    Res.arrival_s = [0.5]
    assert request_timing(Res()).why == "no end event (boom)"


def test_measurement_summaries_and_memory():
    m = Measurement(load_s=[1.0, 1.4, 1.1, 1.2, 0.9], timings=[_ok(0.1)] * 5,
                    memory_ready=[100e6, 102e6, 101e6, 101e6, 100e6],
                    memory_peak=[150e6, 151e6, 150e6, 149e6, 150e6], memory_kind="RSS",
                    overhead_s=0.25)
    figs = m.figures()
    assert (figs["load_s"].value, figs["load_s"].spread) == (1.1, pytest.approx(0.1))
    assert figs["memory_ready"].value == 101e6 and figs["memory_ready"].note == "RSS"
    assert figs["memory_peak"].value == 150e6 and figs["harness_overhead_s"].value == 0.25
    assert figs["memory_peak"].n == 5  # one peak per worker life
    assert list(figs)[0] == "load_s"  # the figures' fixed order
    none = Measurement(load_s=[1.0], timings=[], memory_kind=None, memory_why="no nvidia-smi")
    figs = none.figures()
    assert figs["load_s"].value is None and "1 sample(s), at least 5" in (figs["load_s"].note or "")
    assert figs["memory_peak"].note == "no nvidia-smi"


def test_median_mad_and_display():
    assert median_mad([1.0, 2.0, 4.0, 100.0]) == (3.0, 1.5)
    assert format_value("s_per_token", 0.0026) == "2.6 ms/token"
    assert format_value("load_s", 1.25) == "1.25 s"
    assert format_value("memory_peak", 150 * (1 << 20)) == "150.0 MiB"
    assert format_value("ttft_s", None) == "unavailable"
