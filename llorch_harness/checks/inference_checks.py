"""The CP3 gate's inference checks (a)-(f) and the reference check, as plain functions.

They know nothing of pytest so that the gate tests, the CLI and the fault suite
can share them. Each returns a `CheckOutcome` whose message says what was
expected, what came and where to look, whose `details` carry the token streams
and figures a report shows, and whose `results` hold every stream the check
made, so that (e) contract and (f) error-pattern checks can cover all of them.
One answer's parts live in `answer`, check (g) (goldens) in `golden_check`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from llorch_harness.checks.answer import (
    DIFFERENT_SEEDS,
    GATE_MAX_TOKENS,
    GATE_PROMPTS,
    MAX_QUOTED,
    SAMPLING_SEED,
    SAMPLING_TEMPERATURE,
    CheckOutcome,
    check_answer,
    check_tokens_generated,
    first_failure,
    log_disagreements,
    run_prompts,
    run_request,
    stream_details,
    stream_failure,
    where,
)
from llorch_harness.checks.errorscan import (
    PATTERNS,
    PATTERNS_VERSION,
    ErrorMatch,
    ErrorPattern,
    format_matches,
    scan_log,
    scan_stream,
)
from llorch_harness.checks.golden import compare_tokens
from llorch_harness.checks.golden_check import check_golden
from llorch_harness.checks.streamcheck import check_stream, stop_reason_spelling
from llorch_harness.checks.workerclient import StreamResult

__all__ = [  # one answer's parts live in answer, (g) in golden_check; callers import here
    "DIFFERENT_SEEDS", "GATE_MAX_TOKENS", "GATE_PROMPTS", "SAMPLING_SEED",
    "SAMPLING_TEMPERATURE", "CheckOutcome", "check_answer", "check_contract", "check_golden",
    "check_greedy_repeat", "check_interleaved_lengths", "check_no_error_patterns",
    "check_reference", "check_restart_stable", "check_seeded_sampling",
    "check_tokens_generated", "is_greedy", "log_disagreements", "run_prompts", "run_request",
    "stream_failure",
]


# -- (a) ---------------------------------------------------------------------------------------

def check_greedy_repeat(uri: str, prompt: str, max_tokens: int, times: int = 3,
                        **execute_kw: Any) -> CheckOutcome:
    """(a) The same greedy request `times` times gives identical tokens."""
    if times < 2:
        raise ValueError("times must be at least 2 to compare anything")
    results = [run_request(uri, prompt, max_tokens, f"greedy{i + 1}", **execute_kw)
               for i in range(times)]
    details = stream_details(results, prompt=prompt, max_tokens=max_tokens)
    labels = [f"greedy request {i + 1} of {times}" for i in range(times)]
    fail = first_failure(results, labels)
    if fail:
        return CheckOutcome(False, fail, details, results)
    for i, res in enumerate(results[1:], 2):
        cmp = compare_tokens(results[0].tokens, res.tokens)
        if not cmp.equal:
            details["comparison"] = cmp.describe()
            return CheckOutcome(
                False,
                f"greedy request {i} of {times} (temperature 0, seed {SAMPLING_SEED}) gave other "
                f"tokens than request 1: {cmp.describe()}. Expected request {i} identical to "
                f"request 1; a KV cache not reset between requests does this (the contract's "
                f"broadcasting bug). "
                f"{where(res)}",
                details, results)
    return CheckOutcome(True, f"{times} greedy requests gave identical tokens "
                              f"({len(results[0].tokens)} tokens)", details, results)


# -- (b) ---------------------------------------------------------------------------------------

def check_interleaved_lengths(uri: str, short: str, long: str, max_tokens: int,
                              **execute_kw: Any) -> CheckOutcome:
    """(b) short, long, short: no error event, no contract break, short tokens identical."""
    if len(long) <= len(short):
        raise ValueError("the long prompt must be longer than the short one")
    results = [run_request(uri, p, max_tokens, tag, **execute_kw)
               for p, tag in ((short, "short1"), (long, "long"), (short, "short2"))]
    labels = ["the first short-prompt request", "the long-prompt request (after a short one)",
              "the second short-prompt request (after a long one)"]
    details = stream_details(results, prompts=[short, long, short], max_tokens=max_tokens)
    fail = first_failure(results, labels)
    if fail:
        return CheckOutcome(False, fail + " Prompts of different lengths on one worker must not "
                                          "fail (the broadcasting bug).", details, results)
    cmp = compare_tokens(results[0].tokens, results[2].tokens)
    details["comparison"] = cmp.describe()
    if not cmp.equal:
        return CheckOutcome(
            False,
            f"the short prompt gave other tokens after a long prompt: {cmp.describe()}. Expected "
            f"identical greedy tokens; state from the long prompt leaked into the next request "
            f"(KV cache not reset). {where(results[2])}",
            details, results)
    return CheckOutcome(True, "short, long, short: no errors, short-prompt tokens identical",
                        details, results)


# -- (c) ---------------------------------------------------------------------------------------

def check_seeded_sampling(uri: str, prompt: str, max_tokens: int,
                          seeds: Sequence[int] = DIFFERENT_SEEDS,
                          temperature: float = SAMPLING_TEMPERATURE,
                          **execute_kw: Any) -> CheckOutcome:
    """(c) the same seed twice gives the same tokens; different seeds are not all the same."""
    if len(set(seeds)) < 2 or SAMPLING_SEED in seeds:
        raise ValueError(f"need at least two distinct seeds other than {SAMPLING_SEED}")
    same = [run_request(uri, prompt, max_tokens, f"seed{SAMPLING_SEED}-{i + 1}",
                        temperature=temperature, seed=SAMPLING_SEED, **execute_kw)
            for i in range(2)]
    other = [run_request(uri, prompt, max_tokens, f"seed{s}", temperature=temperature, seed=s,
                         **execute_kw) for s in seeds]
    results = same + other
    labels = ([f"sampled request {i + 1} with seed {SAMPLING_SEED}" for i in range(2)]
              + [f"sampled request with seed {s}" for s in seeds])
    details = stream_details(results, prompt=prompt, max_tokens=max_tokens,
                              temperature=temperature,
                              seeds=[SAMPLING_SEED, SAMPLING_SEED, *seeds])
    fail = first_failure(results, labels)
    if fail:
        return CheckOutcome(False, fail, details, results)
    cmp = compare_tokens(same[0].tokens, same[1].tokens)
    details["same_seed_comparison"] = cmp.describe()
    if not cmp.equal:
        return CheckOutcome(
            False,
            f"seed {SAMPLING_SEED} at temperature {temperature} twice gave different tokens: "
            f"{cmp.describe()}. Expected identical tokens for the same seed; the sampler is not "
            f"seeded from the request (or state leaks between requests). {where(same[1])}",
            details, results)
    streams = [r.tokens for r in other]
    if all(s == streams[0] for s in streams):
        return CheckOutcome(
            False,
            f"{len(seeds)} different seeds {list(seeds)} at temperature {temperature} all gave "
            f"the same {len(streams[0])} tokens {streams[0]!r}. Expected at least two to differ; "
            f"the seed or the temperature is ignored (greedy decoding?). {where(other[-1])}",
            details, results)
    return CheckOutcome(True, f"seed {SAMPLING_SEED} reproducible; seeds {list(seeds)} differ",
                        details, results)


# -- (d) ---------------------------------------------------------------------------------------

def check_restart_stable(before: list[str], after: list[str]) -> CheckOutcome:
    """(d) greedy tokens after stopping and respawning the worker equal those from before."""
    cmp = compare_tokens(before, after)
    details = {"token_streams": [before, after], "comparison": cmp.describe()}
    if not cmp.equal:
        return CheckOutcome(
            False,
            f"greedy tokens after a worker restart differ from before it: {cmp.describe()}. "
            f"Expected identical tokens; look for state that survives a restart or is not "
            f"deterministic (uninitialised memory, warm-up pollution, nondeterministic kernels) "
            f"and at the worker logs of both runs.",
            details)
    return CheckOutcome(True, f"greedy tokens identical across a restart ({len(before)} tokens)",
                        details)


# -- (e) ---------------------------------------------------------------------------------------

def check_contract(results: Iterable[StreamResult], max_tokens: int | None = None) -> CheckOutcome:
    """(e) every stream obeys the contract and agrees with the worker log where it was read;
    `max_tokens=None` uses each request's own."""
    results = list(results)
    per_job: dict[str, list[str]] = {}
    for n, res in enumerate(results, 1):
        violations = check_stream(res, max_tokens=max_tokens) + log_disagreements(res)
        if violations:
            per_job[res.job_id or f"stream {n}"] = violations
    spellings = sorted({s for r in results if r.terminal
                        and (s := stop_reason_spelling(r.terminal.get("stop_reason")))})
    details = {"streams_checked": len(results), "violations": per_job,
               "stop_reason_spellings": spellings,
               "logs_read": sum(1 for r in results if r.log is not None)}
    if not results:
        return CheckOutcome(False, "no streams to check: expected the streams of the other "
                                   "inference checks", details)
    if per_job:
        lines = [v for vs in per_job.values() for v in vs]
        shown = "\n".join(lines[:MAX_QUOTED])
        more = f"\n(and {len(lines) - MAX_QUOTED} more)" if len(lines) > MAX_QUOTED else ""
        return CheckOutcome(
            False,
            f"{len(per_job)} of {len(results)} streams break the worker contract "
            f"(llorch-candled.md, HTTP section):\n{shown}{more}",
            details, results)
    return CheckOutcome(True, f"all {len(results)} streams obey the contract", details, results)


# -- (f) ---------------------------------------------------------------------------------------

def _match_json(m: ErrorMatch) -> dict[str, Any]:
    return {"pattern": m.pattern.name, "source": m.source, "line_no": m.line_no, "line": m.line}


def check_no_error_patterns(log_path: Path | None, log_offset: int,
                            results: Iterable[StreamResult],
                            patterns: Sequence[ErrorPattern] = PATTERNS) -> CheckOutcome:
    """(f) no known error pattern in the worker log (since `log_offset`) or in any stream."""
    results = list(results)
    matches: list[ErrorMatch] = []
    notes: list[str] = []
    if log_path is None:
        notes.append("no worker log given: only the streams were scanned")
    else:
        try:
            matches += scan_log(Path(log_path), log_offset, patterns)
        except OSError as exc:
            return CheckOutcome(
                False, f"cannot read the worker log {log_path}: {exc}; expected a readable log "
                       f"to scan for error patterns", {"log_path": str(log_path)}, results)
    for res in results:
        matches += scan_stream(res, patterns)
    details: dict[str, Any] = {"patterns_version": PATTERNS_VERSION,
                               "log_path": None if log_path is None else str(log_path),
                               "log_offset": log_offset, "streams_scanned": len(results),
                               "matches": [_match_json(m) for m in matches], "notes": notes}
    if matches:
        shown = format_matches(matches[:MAX_QUOTED])
        more = (f"\n(and {len(matches) - MAX_QUOTED} more matches)"
                if len(matches) > MAX_QUOTED else "")
        return CheckOutcome(
            False,
            f"expected no known error patterns, found {len(matches)} "
            f"(patterns version {PATTERNS_VERSION}):\n{shown}{more}",
            details, results)
    scanned = "the worker log and " if log_path is not None else ""
    return CheckOutcome(True, f"no error patterns in {scanned}{len(results)} streams "
                              f"(patterns version {PATTERNS_VERSION})", details, results)



# -- the reference implementation --------------------------------------------------------------

def is_greedy(res: StreamResult) -> bool:
    """Temperature 0: the only streams a reference can judge (a sampler's RNG is the worker's)."""
    return (res.request_json or {}).get("temperature") == 0


def check_reference(runner: Any, results: Iterable[StreamResult]) -> CheckOutcome:
    """Every greedy stream agrees with the reference implementation (`agreement`).

    A failed request cannot be compared and fails here too; sampled streams are judged
    by repeatability in (c), not here. `details["comparisons"]` holds, per stream, the
    worker's and the reference's text side by side, the first difference and the
    largest logit gap; `details["reference"]` who judged.
    """
    greedy = [r for r in results if is_greedy(r)]
    details: dict[str, Any] = {"reference": runner.identity, "comparisons": {},
                               "streams_judged": len(greedy)}
    if not greedy:
        return CheckOutcome(False, "no greedy streams to compare with the reference", details)
    problems: list[str] = []
    gaps: list[float] = []
    for n, res in enumerate(greedy, 1):
        label = f"job {res.job_id or n}"
        why = stream_failure(res)
        if why is not None:
            problems.append(f"{label}: cannot compare a failed request: {why}")
            continue
        verdict = runner.compare(res, label)
        details["comparisons"][res.job_id or f"stream {n}"] = {
            "ok": verdict.ok, "message": verdict.message,
            **{k: verdict.details.get(k) for k in ("prompt", "side_by_side", "first_difference",
                                                   "max_gap", "worker_text", "reference_text")}}
        gaps.append(float(verdict.details.get("max_gap") or 0.0))
        if not verdict.ok:
            problems.append(verdict.message)
    details["max_gap"] = max(gaps, default=0.0)
    who = runner.ref.identity.label()
    if problems:
        shown = "\n".join(problems[:MAX_QUOTED])
        return CheckOutcome(False, f"{len(problems)} of {len(greedy)} greedy streams disagree "
                                   f"with the reference ({who}):\n{shown}", details, greedy)
    return CheckOutcome(True, f"all {len(greedy)} greedy streams agree with the reference ({who}; "
                              f"largest gap {details['max_gap']:.3f}, delta {runner.delta})",
                        details, greedy)
