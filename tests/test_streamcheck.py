"""The contract checker: every rule fails on a stream that breaks it, and passes a good one."""

from __future__ import annotations

import copy

import pytest

from llorch_harness.checks.streamcheck import (
    check_stream,
    is_success,
    normalise_stop_reason,
    stop_reason_spelling,
)
from llorch_harness.checks.workerclient import ExecuteRequest, StreamResult, execute
from tests.sse_servers import good_events, sse_server

CID = "0f8e7c52-6d4b-4e8a-9a51-3c2b1d0e9f7a"


def _result(events: list[dict], *, max_tokens: int = 3, job_id: str = "job-1") -> StreamResult:
    """A StreamResult as execute() builds it for a clean 200 stream (for fine-grained rules)."""
    return StreamResult(
        status_code=200, events=events, raw_lines=[], correlation_id=CID,
        elapsed_s=0.1, first_event_s=0.1, transport_error=None,
        content_type="text/event-stream", request_correlation_id=CID,
        request_json={"job_id": job_id, "prompt": "p", "max_tokens": max_tokens},
    )


GOOD = good_events("job-1", ["a", "b", "c"])  # the real worker's wire
LEGACY = good_events("job-1", ["a", "b", "c"], legacy=True)  # older builds: metrics, snake_case


def _mutated(fn) -> list[dict]:
    evs = copy.deepcopy(GOOD)
    fn(evs)
    return evs


def _live(name: str, max_tokens: int = 3) -> StreamResult:
    with sse_server(name) as srv:
        return execute(srv.url, ExecuteRequest(job_id="job-1", prompt="p", max_tokens=max_tokens),
                       first_event_timeout=5, event_timeout=1)


def test_good_stream_passes_live() -> None:
    res = _live("good")
    assert check_stream(res) == []
    assert is_success(res)


def test_real_wire_is_accepted_exactly() -> None:
    """What llorch-candled sends: model "model", started_at "0", no metrics, "MAX_TOKENS"
    even with fewer pieces than max_tokens (EOS, or pieces holding several tokens)."""
    real = [{"type": "started", "job_id": "job-1", "model": "model", "started_at": "0"},
            {"type": "token", "t": " Hello", "i": 0}, {"type": "token", "t": ", world", "i": 1},
            {"type": "end", "tokens_out": 2, "decode_time_ms": 812, "stop_reason": "MAX_TOKENS"}]
    assert check_stream(_result(real, max_tokens=20)) == []
    assert is_success(_result(real, max_tokens=20))


@pytest.mark.parametrize("reason", ["MAX_TOKENS", "max_tokens", "EOS", "eos", "STOP_SEQUENCE",
                                    "stop_sequence", "CANCELLED", "ERROR"])
def test_stop_reason_either_case(reason: str) -> None:
    assert check_stream(_result(good_events("job-1", ["a"], stop_reason=reason))) == []


@pytest.mark.parametrize("reason", ["Max_Tokens", "maxTokens", "MAX-TOKENS", "done", "", 3, None])
def test_stop_reason_unknown_or_mixed_case_fails(reason) -> None:
    violations = check_stream(_result(good_events("job-1", ["a"], stop_reason="x")
                                      [:-1] + [{"type": "end", "tokens_out": 1,
                                                "decode_time_ms": 1, "stop_reason": reason}]))
    assert any("`end.stop_reason` in" in v for v in violations), violations


def test_stop_reason_spelling_recorded() -> None:
    assert stop_reason_spelling("MAX_TOKENS") == "SCREAMING_SNAKE_CASE"
    assert stop_reason_spelling("max_tokens") == "snake_case"
    assert stop_reason_spelling("Max_Tokens") is None
    assert normalise_stop_reason("eos") == "EOS"


def test_legacy_wire_still_accepted() -> None:
    assert check_stream(_result(LEGACY)) == []
    assert check_stream(_result(good_events("job-1", ["a"], stop_reason="eos", metrics=False,
                                            legacy=True))) == []


def test_lone_error_event_is_contract_conforming_but_not_success() -> None:
    res = _live("broadcast_error")
    assert check_stream(res) == []
    assert not is_success(res)


@pytest.mark.parametrize(
    ("server", "needle"),
    [
        ("missing_terminal", "exactly one terminal event (`end` or `error`) last, got none"),
        ("two_terminals", "exactly one terminal event, got 2"),
        ("bad_indices", "expected token index i=2 (consecutive from 0) at event 3, got 3"),
        ("invalid_json", "invalid_json problem"),
        ("no_data", "no `data:` line"),
        ("unknown_type", "unknown type 'bogus'"),
        ("not_sse", "text/event-stream"),
        ("bad_request", "expected HTTP 200, got HTTP 400"),
    ],
)
def test_misbehaving_servers_fail(server: str, needle: str) -> None:
    res = _live(server)
    violations = check_stream(res)
    assert any(needle in v for v in violations), violations
    assert all(v.startswith("job job-1: ") for v in violations)
    assert not is_success(res)


def test_stall_is_a_violation() -> None:
    with sse_server("stall_after_token") as srv:
        res = execute(srv.url, {"job_id": "job-1", "prompt": "p", "max_tokens": 3},
                      event_timeout=1)
    violations = check_stream(res)
    assert any("event_timeout problem" in v for v in violations), violations
    assert any("got none" in v for v in violations)


def test_connection_refused_is_a_violation() -> None:
    res = _result([])
    res.status_code = 0
    res.transport_error = "http://127.0.0.1:9: ConnectError: refused"
    violations = check_stream(res)
    assert any("refused" in v for v in violations)
    assert any("no HTTP answer" in v for v in violations)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda e: e.pop(0), "first event to be `started`, got 'token'"),
        (lambda e: e[0].update(job_id="other"), "`started.job_id` 'job-1', got 'other'"),
        (lambda e: e[0].pop("model"), "`started.model` to be a non-empty string"),
        (lambda e: e[0].pop("started_at"), "`started.started_at`"),
        (lambda e: e.insert(2, dict(e[0])), "exactly one `started` event, got 2"),
        (lambda e: e[1].update(i=1), "i=0 (consecutive from 0) at event 1, got 1"),
        (lambda e: e[2].update(i="1"), "i=1 (consecutive from 0) at event 2, got '1'"),
        (lambda e: e[1].update(t=5), "token 0 (event 1) `t` to be a string, got 5"),
        (lambda e: e[-1].update(tokens_out=4), "== number of token events (3), got 4"),
        (lambda e: e[-1].update(stop_reason="done"), "`end.stop_reason` in"),
        (lambda e: e[-1].update(stop_reason="STOP_SEQUENCE", stop_sequence_matched=5),
         "`end.stop_sequence_matched` to be a string"),
        (lambda e: e[-1].update(stop_reason="EOS", stop_sequence_matched="x"),
         "no `end.stop_sequence_matched` with stop_reason 'EOS'"),
        (lambda e: e[-1].update(decode_time_ms=-1), "decode_time_ms"),
        (lambda e: e.append({"type": "token", "t": "z", "i": 3}),
         "nothing after the terminal event"),
        (lambda e: e[-1].update(type="error", code="OOPS", message=""), "`error.code` in"),
        (lambda e: e[-1].update(type="error", code="OOPS", message=""), "`error.message`"),
    ],
)
def test_each_rule(mutate, needle: str) -> None:
    violations = check_stream(_result(_mutated(mutate)))
    assert any(needle in v for v in violations), violations


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda e: e.insert(2, e.pop(4)), "`metrics` only after the last token"),
        (lambda e: e.append(e.pop(4)), "`metrics` before the terminal event"),
        (lambda e: e[4].update(tokens_per_sec="fast"), "`metrics.tokens_per_sec`"),
    ],
)
def test_metrics_rules_for_builds_that_send_it(mutate, needle: str) -> None:
    evs = copy.deepcopy(LEGACY)
    mutate(evs)
    violations = check_stream(_result(evs))
    assert any(needle in v for v in violations), violations


def test_max_tokens_rules() -> None:
    # more token events than asked: even one token per piece cannot exceed max_tokens
    violations = check_stream(_result(GOOD, max_tokens=2))
    assert any("at most max_tokens=2 token events, got 3" in v for v in violations), violations
    # "MAX_TOKENS" with fewer pieces than asked is the real worker's normal answer
    assert check_stream(_result(GOOD, max_tokens=5)) == []
    # explicit max_tokens overrides the request's
    assert any("at most max_tokens=2" in v for v in check_stream(_result(GOOD), max_tokens=2))


def test_job_id_override_and_correlation_echo() -> None:
    res = _result(GOOD)
    assert any("'job-2', got 'job-1'" in v for v in check_stream(res, job_id="job-2"))
    res.correlation_id = None
    assert any(f"X-Correlation-ID {CID!r} echoed, got None" in v for v in check_stream(res))
    # a non-UUID id is never echoed by the real worker: a fresh UUID must come back
    res.request_correlation_id, res.correlation_id = "llorch-harness-1", "llorch-harness-1"
    assert any("expected a fresh UUID" in v for v in check_stream(res))
    res.correlation_id = CID
    assert check_stream(res) == []


def test_no_events() -> None:
    assert any("got no events at all" in v for v in check_stream(_result([])))


def test_error_after_tokens_is_allowed_but_not_success() -> None:
    evs = [GOOD[0], GOOD[1], {"type": "error", "code": "INFERENCE_FAILED", "message": "boom"}]
    res = _result(evs)
    assert check_stream(res) == []
    assert not is_success(res)
