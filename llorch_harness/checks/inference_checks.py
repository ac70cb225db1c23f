"""The CP3 gate's inference checks (a)-(g) as plain functions on a live worker.

They know nothing of pytest so that the gate tests, the CLI and the fault suite
can share them. Each returns a `CheckOutcome` whose message says what was
expected, what came and where to look, whose `details` carry the token streams
and figures a report shows, and whose `results` hold every stream the check
made, so that (e) contract and (f) error-pattern checks can cover all of them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llorch_harness.checks.errorscan import (
    PATTERNS,
    PATTERNS_VERSION,
    ErrorMatch,
    ErrorPattern,
    diagnose_text,
    format_matches,
    scan_log,
    scan_stream,
)
from llorch_harness.checks.golden import (
    Golden,
    GoldenPrompt,
    compare_tokens,
    golden_backends,
    golden_path,
    load_golden,
    save_golden,
)
from llorch_harness.checks.streamcheck import check_stream, is_success, stop_reason_spelling
from llorch_harness.checks.workerclient import ExecuteRequest, StreamResult, execute
from llorch_harness.checks.workerlog import facts_for, log_size
from llorch_harness.errors import HarnessError

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
_MAX_QUOTED = 20


@dataclass
class CheckOutcome:
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


def _where(res: StreamResult) -> str:
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
               f"{_where(res)}"
    err = res.error_event
    if err is not None:
        msg = err.get("message")
        found = diagnose_text(msg) if isinstance(msg, str) else []
        diagnosis = "".join(f" Diagnosis: {d}." for d in found)
        return (f"expected a generation ending in `end`, got error event "
                f"{err.get('code')}: {msg!r}.{diagnosis} {_where(res)}")
    violations = check_stream(res)
    if violations:
        shown = "; ".join(violations[:5])
        more = f" (and {len(violations) - 5} more)" if len(violations) > 5 else ""
        return f"the stream breaks the contract: {shown}{more}; {_where(res)}"
    term = res.terminal
    return f"expected a terminal `end` event, got {term!r}; {_where(res)}"


def _stream_details(results: Sequence[StreamResult], **extra: Any) -> dict[str, Any]:
    """What every check reports about its streams (tokens, rates, summaries), plus `extra`."""
    return {**extra, "token_streams": [r.tokens for r in results],
            "tokens_per_sec": [r.tokens_per_sec for r in results],
            "streams": [r.summary() for r in results]}


def _first_failure(results: Sequence[StreamResult], labels: Sequence[str]) -> str | None:
    for res, label in zip(results, labels, strict=True):
        why = stream_failure(res)
        if why is not None:
            return f"{label} failed: {why}"
    return None


# -- one answer: the gate's "Qwen works" and "Tokens are generated" items ----------------------

def check_answer(res: StreamResult, label: str = "the request") -> CheckOutcome:
    """A successful, contract-keeping generation with at least one token event whose log
    (when read) agrees with it."""
    details = _stream_details([res])
    why = stream_failure(res)
    if why is not None:
        return CheckOutcome(False, f"{label} failed: {why}", details, [res])
    if not res.tokens:
        return CheckOutcome(False, f"{label}: expected at least one token event, got none "
                                   f"(terminal {res.terminal!r}); {_where(res)}", details, [res])
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
        return CheckOutcome(False, f"{label}: " + "; ".join(problems) + f"; {_where(res)}",
                            out.details, out.results)
    ended = ("max_tokens reached" if generated == max_tokens
             else f"ended at EOS after {generated} of max_tokens={max_tokens}")
    return CheckOutcome(True, f"{label}: {generated} tokens generated ({ended}) in "
                              f"{len(res.tokens)} pieces, stop_reason {reason!r}, text "
                              f"{res.text[:40]!r}", out.details, out.results)


# -- (a) ---------------------------------------------------------------------------------------

def check_greedy_repeat(uri: str, prompt: str, max_tokens: int, times: int = 3,
                        **execute_kw: Any) -> CheckOutcome:
    """(a) The same greedy request `times` times gives identical tokens."""
    if times < 2:
        raise ValueError("times must be at least 2 to compare anything")
    results = [run_request(uri, prompt, max_tokens, f"greedy{i + 1}", **execute_kw)
               for i in range(times)]
    details = _stream_details(results, prompt=prompt, max_tokens=max_tokens)
    labels = [f"greedy request {i + 1} of {times}" for i in range(times)]
    fail = _first_failure(results, labels)
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
                f"{_where(res)}",
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
    details = _stream_details(results, prompts=[short, long, short], max_tokens=max_tokens)
    fail = _first_failure(results, labels)
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
            f"(KV cache not reset). {_where(results[2])}",
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
    details = _stream_details(results, prompt=prompt, max_tokens=max_tokens,
                              temperature=temperature,
                              seeds=[SAMPLING_SEED, SAMPLING_SEED, *seeds])
    fail = _first_failure(results, labels)
    if fail:
        return CheckOutcome(False, fail, details, results)
    cmp = compare_tokens(same[0].tokens, same[1].tokens)
    details["same_seed_comparison"] = cmp.describe()
    if not cmp.equal:
        return CheckOutcome(
            False,
            f"seed {SAMPLING_SEED} at temperature {temperature} twice gave different tokens: "
            f"{cmp.describe()}. Expected identical tokens for the same seed; the sampler is not "
            f"seeded from the request (or state leaks between requests). {_where(same[1])}",
            details, results)
    streams = [r.tokens for r in other]
    if all(s == streams[0] for s in streams):
        return CheckOutcome(
            False,
            f"{len(seeds)} different seeds {list(seeds)} at temperature {temperature} all gave "
            f"the same {len(streams[0])} tokens {streams[0]!r}. Expected at least two to differ; "
            f"the seed or the temperature is ignored (greedy decoding?). {_where(other[-1])}",
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
        shown = "\n".join(lines[:_MAX_QUOTED])
        more = f"\n(and {len(lines) - _MAX_QUOTED} more)" if len(lines) > _MAX_QUOTED else ""
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
        shown = format_matches(matches[:_MAX_QUOTED])
        more = (f"\n(and {len(matches) - _MAX_QUOTED} more matches)"
                if len(matches) > _MAX_QUOTED else "")
        return CheckOutcome(
            False,
            f"expected no known error patterns, found {len(matches)} "
            f"(patterns version {PATTERNS_VERSION}):\n{shown}{more}",
            details, results)
    scanned = "the worker log and " if log_path is not None else ""
    return CheckOutcome(True, f"no error patterns in {scanned}{len(results)} streams "
                              f"(patterns version {PATTERNS_VERSION})", details, results)


# -- (g) ---------------------------------------------------------------------------------------

def _golden_from(model_id: str, backend: str, prompts_results: Mapping[str, StreamResult],
                 worker_binary_sha256: str | None) -> Golden:
    prompts = {}
    for name, res in prompts_results.items():
        req = res.request_json or {}
        prompts[name] = GoldenPrompt(str(req.get("prompt", "")), int(req.get("max_tokens", 0)),
                                     list(res.tokens), res.text)
    return Golden(model_id=model_id, backend=backend, prompts=prompts,
                  worker_binary_sha256=worker_binary_sha256)


def _cross_backend(golden_dir: Path, model_id: str, backend: str,
                   current: Golden, min_common_prefix: int) -> tuple[dict, list[str]]:
    table: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    for other in golden_backends(golden_dir, model_id):
        if other == backend:
            continue
        theirs = load_golden(golden_dir, model_id, other)
        if theirs is None:
            continue
        for name, mine in sorted(current.prompts.items()):
            gp = theirs.prompts.get(name)
            if gp is None or (gp.prompt, gp.max_tokens) != (mine.prompt, mine.max_tokens):
                continue
            cmp = compare_tokens(gp.token_texts, mine.token_texts)
            table.setdefault(other, {})[name] = cmp.common_prefix
            need = min(min_common_prefix, len(gp.token_texts), len(mine.token_texts))
            if cmp.common_prefix < need:
                problems.append(
                    f"{backend} vs {other} golden on prompt {name!r}: common prefix "
                    f"{cmp.common_prefix} tokens, expected at least {need} "
                    f"(min_common_prefix={min_common_prefix}); {cmp.describe()}")
    return table, problems


def check_golden(golden_dir: Path, model_id: str, backend: str,
                 prompts_results: Mapping[str, StreamResult], update: bool,
                 min_common_prefix: int, worker_binary_sha256: str | None = None,
                 reference_problems: list[str] | None = None) -> CheckOutcome:
    """(g) tokens equal the recorded golden of this model and backend (or record it).

    Goldens are a per-hardware regression check on top of the reference, not the source
    of truth: `reference_problems` holds the reference check's disagreements on these
    streams (None when no reference ran). Output that disagrees is never recorded, and a
    missing golden passes when the reference agreed. Across backends only a common prefix
    of `min_common_prefix` tokens is required (CPU and GPU arithmetic may diverge later).
    """
    results = list(prompts_results.values())
    try:
        path = golden_path(Path(golden_dir), model_id, backend)
    except HarnessError as exc:
        return CheckOutcome(False, exc.one_line(), {}, results)
    details: dict[str, Any] = {"golden_path": str(path), "update": update,
                               "token_streams": {n: r.tokens for n, r in prompts_results.items()}}
    broken = [f"prompt {n!r}: {why}" for n, r in prompts_results.items()
              if (why := stream_failure(r)) is not None]
    if broken:
        return CheckOutcome(False, "cannot compare or record golden outputs from failed "
                                   "requests: " + "; ".join(broken), details, results)
    if update and reference_problems:
        return CheckOutcome(False, "refusing to record golden outputs that disagree with the "
                                   "reference implementation: " + "; ".join(reference_problems),
                            details, results)
    current = _golden_from(model_id, backend, prompts_results, worker_binary_sha256)
    try:
        if update:
            save_golden(Path(golden_dir), current)
            verdict_ok = True
            message = f"recorded golden outputs for {len(current.prompts)} prompts at {path}"
        else:
            golden = load_golden(Path(golden_dir), model_id, backend)
            if golden is None:
                return _no_golden(model_id, backend, path, details, results, reference_problems)
            verdict_ok, message = _compare_golden(golden, current, path, details)
        table, problems = _cross_backend(Path(golden_dir), model_id, backend, current,
                                         min_common_prefix)
    except HarnessError as exc:
        return CheckOutcome(False, exc.one_line(), details, results)
    details["cross_backend_prefixes"] = table
    details["min_common_prefix"] = min_common_prefix
    if problems:
        verdict_ok = False
        message = f"{message}. Across backends: " + "; ".join(problems)
    return CheckOutcome(verdict_ok, message, details, results)


def _no_golden(model_id: str, backend: str, path: Path, details: dict[str, Any],
               results: list[StreamResult], reference_problems: list[str] | None) -> CheckOutcome:
    """No golden yet: the reference decides; without one nothing can be said."""
    details["golden_missing"] = True
    if reference_problems is None:
        return CheckOutcome(False, f"no golden outputs for {model_id} on {backend} at {path} and "
                                   "no reference check ran (--reference off): nothing to compare "
                                   "with; record them with --update-golden on a trusted build",
                            details, results, skipped=True)
    if reference_problems:
        return CheckOutcome(False, "no golden outputs yet, and the output disagrees with the "
                                   "reference implementation: " + "; ".join(reference_problems),
                            details, results)
    return CheckOutcome(True, f"no golden outputs for {model_id} on {backend} at {path} yet; the "
                              "output agrees with the reference implementation (record a "
                              "per-hardware regression baseline with --update-golden)",
                        details, results)


def _compare_golden(golden: Golden, current: Golden, path: Path,
                    details: dict[str, Any]) -> tuple[bool, str]:
    problems: list[str] = []
    comparisons: dict[str, str] = {}
    for name in sorted(set(golden.prompts) | set(current.prompts)):
        exp, got = golden.prompts.get(name), current.prompts.get(name)
        if got is None:
            problems.append(f"golden prompt {name!r} was not run")
            continue
        if exp is None:
            problems.append(f"prompt {name!r} has no golden output in {path}")
            continue
        if (exp.prompt, exp.max_tokens) != (got.prompt, got.max_tokens):
            problems.append(f"prompt {name!r}: golden recorded for prompt {exp.prompt!r} with "
                            f"max_tokens={exp.max_tokens}, this run used {got.prompt!r} with "
                            f"max_tokens={got.max_tokens}")
            continue
        cmp = compare_tokens(exp.token_texts, got.token_texts)
        comparisons[name] = cmp.describe()
        if not cmp.equal:
            problems.append(f"prompt {name!r}: {cmp.describe()}")
    details["comparisons"] = comparisons
    details["golden_recorded_at"] = golden.recorded_at
    details["golden_worker_binary_sha256"] = golden.worker_binary_sha256
    if not problems:
        return True, f"tokens equal the golden outputs ({len(comparisons)} prompts, {path})"
    binary = ""
    if (golden.worker_binary_sha256 and current.worker_binary_sha256
            and golden.worker_binary_sha256 != current.worker_binary_sha256):
        binary = (f" The golden was recorded with worker binary sha256 "
                  f"{golden.worker_binary_sha256[:12]}..., this run's is "
                  f"{current.worker_binary_sha256[:12]}...")
    return False, (f"expected the golden outputs of {path} (recorded {golden.recorded_at}), got: "
                   + "; ".join(problems) + "." + binary
                   + " If the change is intended, re-record with --update-golden.")


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
        shown = "\n".join(problems[:_MAX_QUOTED])
        return CheckOutcome(False, f"{len(problems)} of {len(greedy)} greedy streams disagree "
                                   f"with the reference ({who}):\n{shown}", details, greedy)
    return CheckOutcome(True, f"all {len(greedy)} greedy streams agree with the reference ({who}; "
                              f"largest gap {details['max_gap']:.3f}, delta {runner.delta})",
                        details, greedy)
