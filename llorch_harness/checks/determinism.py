"""Determinism beyond repeat, seed, interleaved lengths and restart (issue 26 item 3).

Why these axes: a worker can be deterministic when asked politely, one request at a time,
and still answer differently when requests overlap (state shared between requests), after
a request it rejected or that failed (state left over from the error path), or near the
limit of what it accepts (buffers sized too small, positions wrapped). Each check compares
greedy tokens with those of the same request asked alone on a clean worker, and names its
axis in the failure so a reader knows which situation broke the worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llorch_harness.checks.answer import (
    CheckOutcome,
    first_failure,
    run_request,
    stream_details,
    stream_failure,
    where,
)
from llorch_harness.checks.golden import compare_tokens
from llorch_harness.checks.streamresult import StreamResult
from llorch_harness.checks.workerclient import execute, generation_deadline

AXIS_CONCURRENT = "concurrency"
AXIS_AFTER_REJECTED = "after a rejected request"
AXIS_AFTER_FAILED = "after a failed request"
AXIS_NEAR_LIMIT = "near the context limit"
PROMPT_CHAR_LIMIT = 32768  # the contract's validation: prompt 1 to 32768 characters


def _differs(axis: str, label: str, base: StreamResult, res: StreamResult,
             why: str) -> str | None:
    cmp = compare_tokens(base.tokens, res.tokens)
    if cmp.equal:
        return None
    return (f"[{axis}] {label} gave other greedy tokens than the same request alone: "
            f"{cmp.describe()}. Expected identical tokens; {why} {where(res)}")


def check_concurrent_identical(uri: str, prompt: str, max_tokens: int, n: int = 4,
                               **execute_kw: Any) -> CheckOutcome:
    """The same greedy request alone, then `n` copies at once: the worker serialises them
    (the real runtime is one frozen thread), so each answer must be complete and equal the
    one alone. The deadlines allow for the wait behind the others."""
    alone = run_request(uri, prompt, max_tokens, "alone", **execute_kw)
    kw = {**execute_kw, "total_timeout": generation_deadline(max_tokens) * (n + 1)}
    kw.setdefault("first_event_timeout", kw["total_timeout"])
    start = threading.Barrier(n)

    def one(i: int) -> StreamResult:
        start.wait(timeout=60)  # all sent at once, so they meet at the worker
        return run_request(uri, prompt, max_tokens, f"concurrent{i + 1}", **kw)

    with ThreadPoolExecutor(max_workers=n) as pool:
        together = list(pool.map(one, range(n)))
    results = [alone, *together]
    labels = ["the request alone"] + [f"concurrent request {i + 1} of {n}" for i in range(n)]
    details = stream_details(results, prompt=prompt, max_tokens=max_tokens, concurrent=n)
    fail = first_failure(results, labels)
    if fail:
        return CheckOutcome(False, f"[{AXIS_CONCURRENT}] {fail} Every one of {n} concurrent "
                                   "requests must complete (the worker serialises them).",
                            details, results)
    for label, res in zip(labels[1:], together, strict=True):
        problem = _differs(AXIS_CONCURRENT, label, alone, res,
                           "requests that overlap share state they must not share "
                           "(a KV cache, a sampler, a buffer).")
        if problem:
            return CheckOutcome(False, problem, details, results)
    return CheckOutcome(True, f"{n} concurrent greedy requests: all complete, all equal to the "
                              f"request alone ({len(alone.tokens)} tokens)", details, results)


def rejected_bodies(prompt: str, max_tokens: int) -> list[tuple[str, dict[str, Any]]]:
    """Bodies the contract rejects: 422 (a missing field) and 400 (a failed validation)."""
    return [("422: max_tokens missing", {"job_id": "gate-rejected-422", "prompt": prompt}),
            ("400: max_tokens 0", {"job_id": "gate-rejected-400", "prompt": prompt,
                                   "max_tokens": 0, "temperature": 0.0})]


def check_after_error(uri: str, prompt: str, max_tokens: int, axis: str,
                      provoke: Callable[[], Sequence[StreamResult]],
                      expect_status: Callable[[StreamResult], str | None],
                      **execute_kw: Any) -> CheckOutcome:
    """Greedy tokens alone, then the error requests `provoke` sends (each judged by
    `expect_status`: None when it was refused or failed as it should), then the same
    greedy request again: identical to the first."""
    before = run_request(uri, prompt, max_tokens, "before-error", **execute_kw)
    errors = list(provoke())
    after = run_request(uri, prompt, max_tokens, "after-error", **execute_kw)
    results = [before, after]
    details = stream_details(results, prompt=prompt, max_tokens=max_tokens,
                             error_requests=[e.summary() for e in errors])
    fail = first_failure(results, [f"the greedy request before the error ({axis})",
                                   f"the greedy request {axis}"])
    if fail:
        return CheckOutcome(False, f"[{axis}] {fail}", details, results)
    for res in errors:
        wrong = expect_status(res)
        if wrong:
            return CheckOutcome(False, f"[{axis}] {wrong} {where(res)}", details, results)
    problem = _differs(axis, f"the greedy request {axis}", before, after,
                       "the error path left state behind (a cache, a counter, a half-read "
                       "body) that the next request ran on.")
    if problem:
        return CheckOutcome(False, problem, details, results)
    return CheckOutcome(True, f"greedy tokens {axis} equal those before it "
                              f"({len(before.tokens)} tokens)", details, results)


def check_after_rejected(uri: str, prompt: str, max_tokens: int,
                         **execute_kw: Any) -> CheckOutcome:
    """The request after a 422 and a 400 equals the request before them."""
    raw_kw = {k: v for k, v in execute_kw.items() if k != "log_path"}  # run_request's own

    def provoke() -> list[StreamResult]:
        return [execute(uri, body, **raw_kw) for _, body in rejected_bodies(prompt, max_tokens)]

    def refused(res: StreamResult) -> str | None:
        if res.status_code in (400, 422):
            return None
        return (f"a body the contract rejects (400/422) got HTTP {res.status_code}; "
                "expected the worker to refuse it")
    return check_after_error(uri, prompt, max_tokens, AXIS_AFTER_REJECTED, provoke, refused,
                             **execute_kw)


def over_limit_prompt(context_tokens: int, count: Callable[[str], int]) -> str | None:
    """The shortest prompt of digits the worker accepts by its validation (at most 32768
    characters) whose tokens (`count`: the model's tokenizer) overflow the model's context;
    None when no valid prompt can (a context larger than any valid prompt fills)."""
    filler = "0123456789 " * (PROMPT_CHAR_LIMIT // 11 + 1)
    need = context_tokens + 16
    if count(filler[:PROMPT_CHAR_LIMIT]) < need:
        return None
    lo, hi = 1, PROMPT_CHAR_LIMIT
    while lo < hi:
        mid = (lo + hi) // 2
        if count(filler[:mid]) >= need:
            hi = mid
        else:
            lo = mid + 1
    return filler[:lo]


def check_after_failed(uri: str, prompt: str, max_tokens: int, context_tokens: int,
                       count: Callable[[str], int], **execute_kw: Any) -> CheckOutcome:
    """The request after one that failed (a valid body whose prompt overflows the context:
    an `error` event, or a refusal) equals the request before it. Skipped (said so) when
    no valid prompt overflows the context."""
    bad = over_limit_prompt(context_tokens, count)
    if bad is None:
        return CheckOutcome(False, f"[{AXIS_AFTER_FAILED}] not checked: no prompt of at most "
                                  f"{PROMPT_CHAR_LIMIT} characters overflows the context of "
                                  f"{context_tokens} tokens, so no valid request fails",
                            {"context_tokens": context_tokens}, skipped=True)

    def provoke() -> list[StreamResult]:
        return [run_request(uri, bad, max_tokens, "over-limit", **execute_kw)]

    def failed(res: StreamResult) -> str | None:
        if res.status_code in (400, 413, 422) or stream_failure(res) is not None:
            return None
        return (f"a prompt of {count(bad)} tokens, beyond the model's context of "
                f"{context_tokens} tokens, was answered as a success; expected an error event "
                "or a refusal")
    return check_after_error(uri, prompt, max_tokens, AXIS_AFTER_FAILED, provoke, failed,
                             **execute_kw)


def near_limit_prompt(text: str, target_tokens: int, count: Callable[[str], int],
                      max_chars: int = PROMPT_CHAR_LIMIT) -> str:
    """`text` repeated and cut to the longest prompt of at most `target_tokens` tokens and
    `max_chars` characters (binary search on the length; `count` is the tokenizer)."""
    filler = (text.rstrip() + " ") * (max_chars // max(1, len(text)) + 1)
    lo, hi = 1, max_chars
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(filler[:mid]) <= target_tokens:
            lo = mid
        else:
            hi = mid - 1
    return filler[:lo]


def check_near_limit(uri: str, prompt: str, prompt_tokens: int, max_tokens: int,
                     context_tokens: int, **execute_kw: Any) -> CheckOutcome:
    """A prompt of `prompt_tokens` tokens (near the context, within the character limit)
    twice: both complete, with tokens, and identical."""
    kw = {**execute_kw, "total_timeout": generation_deadline(max_tokens) * 4}
    results = [run_request(uri, prompt, max_tokens, f"near-limit{i + 1}", **kw)
               for i in range(2)]
    details = stream_details(results, prompt_chars=len(prompt), prompt_tokens=prompt_tokens,
                             context_tokens=context_tokens, max_tokens=max_tokens)
    head = (f"a prompt of {prompt_tokens} tokens ({len(prompt)} characters; context "
            f"{context_tokens} tokens)")
    fail = first_failure(results, [f"{head}, request {i + 1}" for i in range(2)])
    if fail:
        return CheckOutcome(False, f"[{AXIS_NEAR_LIMIT}] {fail} The worker must answer every "
                                   "prompt it accepts.", details, results)
    if not results[0].tokens:
        return CheckOutcome(False, f"[{AXIS_NEAR_LIMIT}] {head} ended without a token. "
                                   f"{where(results[0])}", details, results)
    problem = _differs(AXIS_NEAR_LIMIT, f"{head}, request 2", results[0], results[1],
                       "long prompts run on state that differs between requests.")
    if problem:
        return CheckOutcome(False, problem, details, results)
    return CheckOutcome(True, f"{head}: answered twice, identical greedy tokens "
                              f"({len(results[0].tokens)})", details, results)
