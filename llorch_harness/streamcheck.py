"""Check one `/execute` answer against the worker contract, sentence by sentence.

The HTTP status alone never shows a failed inference (a failure is a 200 with an
`error` event), so every stream the gate makes goes through `check_stream`;
each violation says what the contract expects and what came.
"""

from __future__ import annotations

from typing import Any

from llorch_harness.workerclient import TERMINAL_TYPES, StreamResult

STOP_REASONS = frozenset({"max_tokens", "eos", "stop_sequence", "cancelled", "error"})
ERROR_CODES = frozenset({"VRAM_OOM", "CANCELLED", "TIMEOUT", "INVALID_REQUEST", "INFERENCE_FAILED"})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _r(v: Any, limit: int = 120) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[:limit] + "..."


def check_stream(
    result: StreamResult, *, max_tokens: int | None = None, job_id: str | None = None
) -> list[str]:
    """Every contract violation in `result`; [] means the stream is well-formed.

    `max_tokens` and `job_id` default to the values of the request that produced it.
    """
    req = result.request_json or {}
    if max_tokens is None and _is_int(req.get("max_tokens")):
        max_tokens = req["max_tokens"]
    if job_id is None and isinstance(req.get("job_id"), str):
        job_id = req["job_id"]
    where = f"job {job_id}: " if job_id else ""
    out: list[str] = []

    def v(msg: str) -> None:
        out.append(where + msg)

    for p in result.problems:
        v(f"expected a clean SSE stream, got a {p.kind} problem: {p.message}")
    if result.transport_error and not result.problems:
        v(f"expected a clean SSE stream, got: {result.transport_error}")
    if result.status_code != 200:
        got = f"HTTP {result.status_code}" if result.status_code else "no HTTP answer"
        body = f" (body: {_r(result.body_text, 300)})" if result.body_text else ""
        v(f"expected HTTP 200, got {got}{body}")
        return out
    ctype = (result.content_type or "").split(";")[0].strip().lower()
    if ctype != "text/event-stream" and not any(p.kind == "content_type" for p in result.problems):
        v(f"expected Content-Type text/event-stream, got {result.content_type!r}")
    sent_cid = result.request_correlation_id
    if sent_cid and result.correlation_id != sent_cid:
        v(f"expected X-Correlation-ID {sent_cid!r} echoed, got {result.correlation_id!r}")

    events = result.events
    if not events:
        v("expected a `started` event first, got no events at all")
        return out
    if not (len(events) == 1 and events[0].get("type") == "error"):
        _check_started(events, job_id, v)  # a failed inference may send its error event alone
    _check_order(events, v)
    tokens = _check_tokens(events, v)
    _check_terminal(events, tokens, max_tokens, v)
    if max_tokens is not None and tokens > max_tokens:
        v(f"expected at most max_tokens={max_tokens} token events, got {tokens}")
    return out


def _check_started(events: list[dict], job_id: str | None, v: Any) -> None:
    first = events[0]
    if first.get("type") != "started":
        v(f"expected the first event to be `started`, got {first.get('type')!r}")
    starts = [i for i, e in enumerate(events) if e.get("type") == "started"]
    if len(starts) > 1:
        v(f"expected exactly one `started` event, got {len(starts)} (at events {starts})")
    if not starts:
        return
    st = events[starts[0]]
    if not isinstance(st.get("job_id"), str):
        v(f"expected `started.job_id` to be a string, got {_r(st.get('job_id'))}")
    elif job_id is not None and st["job_id"] != job_id:
        v(f"expected `started.job_id` {job_id!r}, got {st['job_id']!r}")
    if not isinstance(st.get("model"), str) or not st.get("model"):
        v(f"expected `started.model` to be a non-empty string, got {_r(st.get('model'))}")
    sa = st.get("started_at")
    if not (isinstance(sa, str) and sa) and not _is_num(sa):
        v(f"expected `started.started_at` (a timestamp), got {_r(sa)}")


def _check_order(events: list[dict], v: Any) -> None:
    """tokens before metrics before the terminal event, and nothing after it."""
    terms = [i for i, e in enumerate(events) if e.get("type") in TERMINAL_TYPES]
    if not terms:
        v(f"expected exactly one terminal event (`end` or `error`) last, got none "
          f"(last event: {events[-1].get('type')!r}; the stream ended early)")
    elif len(terms) > 1:
        kinds = [events[i].get("type") for i in terms]
        v(f"expected exactly one terminal event, got {len(terms)}: {kinds} at events {terms}")
    if terms and terms[0] != len(events) - 1:
        after = [e.get("type") for e in events[terms[0] + 1:]]
        v(f"expected nothing after the terminal event (event {terms[0]}), got {after}")
    last_token = max((i for i, e in enumerate(events) if e.get("type") == "token"), default=-1)
    for i, e in enumerate(events):
        if e.get("type") != "metrics":
            continue
        if i < last_token:
            v(f"expected `metrics` only after the last token, got it at event {i} before a token "
              f"at event {last_token}")
        if terms and i > terms[0]:
            v(f"expected `metrics` before the terminal event, got it at event {i} after it")
        for key, check, what in (("tokens_per_sec", _is_num, "a number"),
                                 ("vram_bytes", _is_int, "an integer")):
            if not check(e.get(key)):
                v(f"expected `metrics.{key}` to be {what}, got {_r(e.get(key))}")


def _check_tokens(events: list[dict], v: Any) -> int:
    n = 0
    for pos, e in enumerate(events):
        if e.get("type") != "token":
            continue
        if not isinstance(e.get("t"), str):
            v(f"expected token {n} (event {pos}) `t` to be a string, got {_r(e.get('t'))}")
        if e.get("i") != n or not _is_int(e.get("i")):
            v(f"expected token index i={n} (consecutive from 0) at event {pos}, "
              f"got {_r(e.get('i'))}")
        n += 1
    return n


def _check_terminal(events: list[dict], tokens: int, max_tokens: int | None, v: Any) -> None:
    for pos, e in enumerate(events):
        kind = e.get("type")
        if kind == "end":
            _check_end(e, pos, tokens, max_tokens, v)
        elif kind == "error":
            code, msg = e.get("code"), e.get("message")
            if code not in ERROR_CODES:
                v(f"expected `error.code` in {sorted(ERROR_CODES)}, got {_r(code)}")
            if not isinstance(msg, str) or not msg:
                v(f"expected `error.message` to be a non-empty string, got {_r(msg)}")


def _check_end(e: dict, pos: int, tokens: int, max_tokens: int | None, v: Any) -> None:
    out = e.get("tokens_out")
    if not _is_int(out):
        v(f"expected `end.tokens_out` to be an integer, got {_r(out)}")
    elif out != tokens:
        v(f"expected `end.tokens_out` == number of token events ({tokens}), got {out}")
    dt = e.get("decode_time_ms")
    if not _is_num(dt) or dt < 0:
        v(f"expected `end.decode_time_ms` to be a number >= 0, got {_r(dt)}")
    reason = e.get("stop_reason")
    if reason not in STOP_REASONS:
        v(f"expected `end.stop_reason` in {sorted(STOP_REASONS)}, got {_r(reason)}")
    has_match = "stop_sequence_matched" in e
    if reason == "stop_sequence" and not isinstance(e.get("stop_sequence_matched"), str):
        v(f"expected `end.stop_sequence_matched` (a string) with stop_reason stop_sequence, "
          f"got {_r(e.get('stop_sequence_matched'))}")
    if reason != "stop_sequence" and has_match:
        v(f"expected no `end.stop_sequence_matched` with stop_reason {reason!r}, "
          f"got {_r(e['stop_sequence_matched'])}")
    if reason == "max_tokens" and max_tokens is not None and tokens != max_tokens:
        v(f"expected exactly max_tokens={max_tokens} tokens with stop_reason max_tokens, "
          f"got {tokens}")


def is_success(result: StreamResult) -> bool:
    """A generation that ended with `end` and a stream that keeps every contract rule."""
    term = result.terminal
    return term is not None and term.get("type") == "end" and not check_stream(result)
