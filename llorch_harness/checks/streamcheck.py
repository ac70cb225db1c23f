"""Check one `/execute` answer against the worker contract, sentence by sentence.

The HTTP status alone never shows a failed inference (a failure is a 200 with an
`error` event), so every stream the gate makes goes through `check_stream`;
each violation says what the contract expects and what came.

What the real llorch-candled sends is accepted exactly (contract, HTTP section):
`stop_reason` in SCREAMING_SNAKE_CASE ("MAX_TOKENS", always, even when the model
reached EOS); token events that are detokenizer pieces, so fewer events than
`max_tokens` is normal; `started` with `model` "model" and `started_at` "0"; no
`metrics` event; a failure that is a lone `error` event. What stays a violation is
what no correct worker sends: indices that do not count from 0, a `tokens_out`
that is not the number of token events, more token events than `max_tokens`, an
unknown stop reason or error code, events out of order or after the terminal one.
"""

from __future__ import annotations

from typing import Any

from llorch_harness.checks.workerclient import TERMINAL_TYPES, StreamResult, is_uuid_shaped

# The worker's StopReason enum, in its serde spelling (SCREAMING_SNAKE_CASE); snake_case
# is accepted too (other builds); `stop_reason_spelling` records which one came.
STOP_REASONS = frozenset({"MAX_TOKENS", "EOS", "STOP_SEQUENCE", "CANCELLED", "ERROR"})
ERROR_CODES = frozenset({"VRAM_OOM", "CANCELLED", "TIMEOUT", "INVALID_REQUEST", "INFERENCE_FAILED"})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def normalise_stop_reason(reason: Any) -> str | None:
    """The enum value a stop reason names (either case), or None when it names none."""
    if not isinstance(reason, str):
        return None
    for candidate in (reason, reason.upper()):
        if candidate in STOP_REASONS and (reason.isupper() or reason.islower()):
            return candidate
    return None


def stop_reason_spelling(reason: Any) -> str | None:
    """"SCREAMING_SNAKE_CASE" (the real worker), "snake_case", or None if not a stop reason."""
    if normalise_stop_reason(reason) is None:
        return None
    return "SCREAMING_SNAKE_CASE" if reason.isupper() else "snake_case"


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
    _check_correlation(result, v)

    events = result.events
    if not events:
        v("expected a `started` event first, got no events at all")
        return out
    if not (len(events) == 1 and events[0].get("type") == "error"):
        _check_started(events, job_id, v)  # a failed inference may send its error event alone
    _check_order(events, v)
    tokens = _check_tokens(events, v)
    _check_terminal(events, tokens, v)
    if max_tokens is not None and tokens > max_tokens:
        v(f"expected at most max_tokens={max_tokens} token events, got {tokens}")
    return out


def _check_correlation(result: StreamResult, v: Any) -> None:
    """A UUID-shaped id is echoed; any other is replaced by a fresh UUID, never echoed."""
    sent, got = result.request_correlation_id, result.correlation_id
    if not sent:
        return
    if is_uuid_shaped(sent):
        if got != sent:
            v(f"expected X-Correlation-ID {sent!r} echoed, got {got!r}")
    elif not is_uuid_shaped(got):
        v(f"expected a fresh UUID as X-Correlation-ID for the non-UUID id {sent!r}, got {got!r}")


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


def _check_terminal(events: list[dict], tokens: int, v: Any) -> None:
    for e in events:
        kind = e.get("type")
        if kind == "end":
            _check_end(e, tokens, v)
        elif kind == "error":
            code, msg = e.get("code"), e.get("message")
            if code not in ERROR_CODES:
                v(f"expected `error.code` in {sorted(ERROR_CODES)}, got {_r(code)}")
            if not isinstance(msg, str) or not msg:
                v(f"expected `error.message` to be a non-empty string, got {_r(msg)}")


def _check_end(e: dict, tokens: int, v: Any) -> None:
    out = e.get("tokens_out")
    if not _is_int(out):
        v(f"expected `end.tokens_out` to be an integer, got {_r(out)}")
    elif out != tokens:
        v(f"expected `end.tokens_out` == number of token events ({tokens}), got {out}")
    dt = e.get("decode_time_ms")
    if not isinstance(dt, int | float) or isinstance(dt, bool) or dt < 0:  # _is_num, narrowed
        v(f"expected `end.decode_time_ms` to be a number >= 0, got {_r(dt)}")
    raw = e.get("stop_reason")
    reason = normalise_stop_reason(raw)
    if reason is None:
        v(f"expected `end.stop_reason` in {sorted(STOP_REASONS)} (or the same in snake_case), "
          f"got {_r(raw)}")
    if "stop_sequence_matched" in e:  # absent is fine: the real worker never sends it
        match = e["stop_sequence_matched"]
        if reason != "STOP_SEQUENCE":
            v(f"expected no `end.stop_sequence_matched` with stop_reason {raw!r}, got {_r(match)}")
        elif not isinstance(match, str):
            v(f"expected `end.stop_sequence_matched` to be a string, got {_r(match)}")


def is_success(result: StreamResult) -> bool:
    """A generation that ended with `end` and a stream that keeps every contract rule."""
    term = result.terminal
    return term is not None and term.get("type") == "end" and not check_stream(result)
