"""One request to a worker and its answer judged: the parts every inference check uses.

Why apart: the gate's "Qwen works" and "Tokens are generated" items judge one answer, and
checks (a)-(g) are built from the same parts (a recognisable job id, the worker log read
around the request, why a stream is not a success, what a report shows of streams).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llorch_harness.checks.errorscan import diagnose_text
from llorch_harness.checks.streamcheck import check_stream, is_success, stop_reason_spelling
from llorch_harness.checks.workerclient import ExecuteRequest, StreamResult, execute
from llorch_harness.checks.workerlog import facts_for, log_size

GATE_MAX_TOKENS = 20  # what the CP3 plan's curl commands ask for
GATE_PROMPTS: dict[str, str] = {
    "cp3": "Hello, how are you?",  # the CP3 plan's prompt
    "long": (
        "Please write a short and friendly paragraph for a new colleague who has just joined "
        "our small team. Explain that we build software that runs language models on our own "
        "computers, that every change is tested carefully on several different machines before "
        "it ships, and that questions are always welcome. Mention that we share lunch on "
        "Fridays, and end the paragraph with a warm greeting."
    ),
    "short": "Hi",
}
SAMPLING_TEMPERATURE = 0.7
SAMPLING_SEED = 42
DIFFERENT_SEEDS = (1, 2, 3)
MAX_QUOTED = 20


@dataclass
class CheckOutcome:
    """A check's verdict: the message people read, the details a report shows, the streams."""

    ok: bool
    message: str
    details: dict = field(default_factory=dict)
    results: list[StreamResult] = field(default_factory=list)  # every stream the check made
    skipped: bool = False  # could not be decided (e.g. no golden yet); ok is False then too


def _job_id(tag: str) -> str:
    return f"gate-{tag}-{uuid.uuid4().hex[:8]}"


def run_request(uri: str, prompt: str, max_tokens: int, tag: str, *,
                temperature: float = 0.0, seed: int = SAMPLING_SEED,
                log_path: Path | None = None, **execute_kw: Any) -> StreamResult:
    """One /execute with a fresh, recognisable job id (`gate-<tag>-<hex>`).

    With `log_path` (the worker's log) the lines written during the request are read
    and attached as `res.log`: the only place that says how many tokens were generated.
    """
    req = ExecuteRequest(job_id=_job_id(tag), prompt=prompt, max_tokens=max_tokens,
                         temperature=temperature, seed=seed)
    offset = log_size(log_path)
    res = execute(uri, req, **execute_kw)
    if log_path is not None:
        res.log = facts_for(Path(log_path), req.job_id, offset)
    return res


def run_prompts(uri: str, prompts: Mapping[str, str] = GATE_PROMPTS,
                max_tokens: int = GATE_MAX_TOKENS, **execute_kw: Any) -> dict[str, StreamResult]:
    """Greedy run of each named prompt: the input of (d) and (g)."""
    return {name: run_request(uri, p, max_tokens, f"prompt-{name}", **execute_kw)
            for name, p in prompts.items()}


def log_disagreements(res: StreamResult) -> list[str]:
    """Where the worker log's account of a successful request disagrees with its stream.

    Empty when no log was read. The log's "Inference completed" `tokens_generated` is the
    true count (at most max_tokens, at least the number of pieces), and "Inference
    complete" `tokens` must equal the token events the stream carried.
    """
    facts, term = res.log, res.terminal
    if facts is None or term is None or term.get("type") != "end":
        return []
    where = f"job {res.job_id}: "
    if not facts.found:
        return [where + "expected the worker log to hold the job's \"Inference completed\" and "
                        "\"Inference complete\" lines, found neither"]
    out: list[str] = []
    events, n = len(res.tokens), facts.tokens_generated
    max_tokens = (res.request_json or {}).get("max_tokens")
    if n is None:
        out.append(where + "expected `tokens_generated` (an integer) in the log's \"Inference "
                           "completed\" line, found none")
    else:
        if isinstance(max_tokens, int) and n > max_tokens:
            out.append(where + f"the log says {n} tokens were generated, more than "
                               f"max_tokens={max_tokens}")
        if n < events:
            out.append(where + f"the log says {n} tokens were generated, fewer than the {events} "
                               "token events sent (each piece holds at least one token)")
    if facts.pieces is not None and facts.pieces != events:
        out.append(where + f"the log's \"Inference complete\" counts {facts.pieces} pieces, the "
                           f"stream carried {events} token events")
    return out


def where(res: StreamResult) -> str:
    return (f"look at the worker log for job_id {res.job_id!r} "
            f"(correlation id {res.correlation_id or res.request_correlation_id!r})")


def stream_failure(res: StreamResult) -> str | None:
    """Why a stream is not a successful generation, in one paragraph; None if it is.

    A failed inference (a lone `error` event) is named with its diagnosis when the
    message is a known signature; a stream whose log disagrees with it fails too.
    """
    if is_success(res):
        disagreements = log_disagreements(res)
        if not disagreements:
            return None
        return f"the worker log disagrees with the stream: {'; '.join(disagreements)}; " \
               f"{where(res)}"
    err = res.error_event
    if err is not None:
        msg = err.get("message")
        found = diagnose_text(msg) if isinstance(msg, str) else []
        diagnosis = "".join(f" Diagnosis: {d}." for d in found)
        return (f"expected a generation ending in `end`, got error event "
                f"{err.get('code')}: {msg!r}.{diagnosis} {where(res)}")
    violations = check_stream(res)
    if violations:
        shown = "; ".join(violations[:5])
        more = f" (and {len(violations) - 5} more)" if len(violations) > 5 else ""
        return f"the stream breaks the contract: {shown}{more}; {where(res)}"
    term = res.terminal
    return f"expected a terminal `end` event, got {term!r}; {where(res)}"


def stream_details(results: Sequence[StreamResult], **extra: Any) -> dict[str, Any]:
    """What every check reports about its streams (tokens, rates, summaries), plus `extra`."""
    return {**extra, "token_streams": [r.tokens for r in results],
            "tokens_per_sec": [r.tokens_per_sec for r in results],
            "streams": [r.summary() for r in results]}


def first_failure(results: Sequence[StreamResult], labels: Sequence[str]) -> str | None:
    for res, label in zip(results, labels, strict=True):
        why = stream_failure(res)
        if why is not None:
            return f"{label} failed: {why}"
    return None



def check_answer(res: StreamResult, label: str = "the request") -> CheckOutcome:
    """A successful, contract-keeping generation with at least one token event whose log
    (when read) agrees with it."""
    details = stream_details([res])
    why = stream_failure(res)
    if why is not None:
        return CheckOutcome(False, f"{label} failed: {why}", details, [res])
    if not res.tokens:
        return CheckOutcome(False, f"{label}: expected at least one token event, got none "
                                   f"(terminal {res.terminal!r}); {where(res)}", details, [res])
    return CheckOutcome(True, f"{label}: {len(res.tokens)} pieces", details, [res])


def check_tokens_generated(res: StreamResult, max_tokens: int,
                           label: str = "the request") -> CheckOutcome:
    """Tokens are generated: the log's `tokens_generated` is `max_tokens` (fewer only where the
    model reached EOS, which ends a real worker's stream with "MAX_TOKENS" too), the pieces
    carry text, and the log's counts agree with the stream (`check_answer`).

    Token events are detokenizer pieces, so their number is no token count; without the
    worker log the count cannot be known, and the check says so instead of guessing.
    """
    out = check_answer(res, label)
    if not out.ok:
        return out
    end = res.terminal or {}
    reason = end.get("stop_reason")
    generated = res.tokens_generated
    out.details.update({"max_tokens": max_tokens, "stop_reason": reason,
                        "stop_reason_spelling": stop_reason_spelling(reason),
                        "tokens_generated": generated, "pieces": len(res.tokens)})
    problems = []
    if res.log is None:
        problems.append("no worker log was read, so the number of generated tokens is unknown "
                        "(token events are pieces, not tokens); pass the worker's log")
    elif generated is not None and generated < 1:
        problems.append(f"expected at least one generated token, the log says {generated}")
    if not res.text.strip():
        problems.append(f"expected the pieces to carry text, got {res.text!r} "
                        f"({len(res.tokens)} pieces)")
    if problems:
        return CheckOutcome(False, f"{label}: " + "; ".join(problems) + f"; {where(res)}",
                            out.details, out.results)
    ended = ("max_tokens reached" if generated == max_tokens
             else f"ended at EOS after {generated} of max_tokens={max_tokens}")
    return CheckOutcome(True, f"{label}: {generated} tokens generated ({ended}) in "
                              f"{len(res.tokens)} pieces, stop_reason {reason!r}, text "
                              f"{res.text[:40]!r}", out.details, out.results)
