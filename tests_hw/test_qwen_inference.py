"""CP3 gate, Qwen Testing: inference checks (a)-(g) on one live worker per backend.

The "broadcasting" bug of llorch-candled shows as an error event and WARN line on the
first or second request of a worker's life, or silently as different tokens for the same
greedy request; so these checks repeat, interleave prompt lengths, restart, scan logs and
streams, and compare against golden files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gatehelpers import backend_param, expect

from llorch_harness import errorscan, golden, streamcheck
from llorch_harness.fixtures import note_log, worker_facts
from llorch_harness.workerclient import ExecuteRequest, StreamResult, execute

SECTION = "Qwen Testing"
GOLDEN_DIR = Path(__file__).parent / "golden"
MAX_TOKENS = 20  # the seed's curl request
SHORT = "Hello, how are you?"
LONG = ("Write a short story about a lighthouse keeper who finds a message in a bottle. "
        "The keeper lives alone on a rocky island, far from the mainland, and the bottle "
        "arrives on a stormy night in late autumn.")
GOLDEN_PROMPTS = {"short": SHORT, "long": LONG}
BACKENDS = [backend_param(b) for b in ("metal", "cuda", "cpu")]
WORKS_ITEM = {"metal": "Qwen works on Metal (mac)", "cuda": "Qwen works on CUDA (workstation)",
              "cpu": "Qwen works on CPU (this pool)"}

_STREAMS: dict[str, list[StreamResult]] = {}  # every stream per backend, for check (f)
_LOG_START: dict[str, tuple[str, int]] = {}    # log path and size before the first request


def _worker(worker_factory, backend: str, gate_record: dict[str, Any]) -> Any:
    handle = worker_factory.live(backend)
    log = str(handle.log_path)
    if backend not in _LOG_START or _LOG_START[backend][0] != log:
        _LOG_START[backend] = (log, Path(log).stat().st_size if Path(log).exists() else 0)
    note_log(gate_record, log)
    gate_record.setdefault("worker", worker_facts(handle))
    return handle


def _run(handle, backend: str, prompt: str, *, job: str, max_tokens: int = MAX_TOKENS,
         temperature: float = 0.0, seed: int = 42) -> StreamResult:
    req = ExecuteRequest(job_id=f"gate-{backend}-{job}", prompt=prompt, max_tokens=max_tokens,
                         temperature=temperature, seed=seed)
    res = execute(handle.uri, req)
    _STREAMS.setdefault(backend, []).append(res)
    return res


def _ok(res: StreamResult, handle, what: str) -> list[str]:
    """The stream must be a successful, contract-conforming generation; returns its tokens."""
    problems = streamcheck.check_stream(res)
    err = res.error_event
    got = (f"error event {err}" if err else res.transport_error or "; ".join(problems)
           or f"{len(res.tokens)} tokens")
    expect(err is None and res.transport_error is None and not problems and res.tokens,
           f"{what}: started, tokens, end (no error event, contract kept)", got,
           str(handle.log_path))
    return res.tokens


def _record_streams(gate_record, **streams: StreamResult) -> None:
    gate_record.setdefault("streams", {}).update({k: v.summary() for k, v in streams.items()})
    rates = [s.tokens_per_sec for s in streams.values() if s.tokens_per_sec]
    if rates:
        gate_record["tokens_per_sec"] = round(max(rates), 2)


@pytest.mark.parametrize("backend", [
    backend_param(b, pytest.mark.gate(SECTION, WORKS_ITEM[b])) for b in ("metal", "cuda", "cpu")
])
def test_qwen_works(backend, worker_factory, gate_record):
    """spawn -> greedy inference (the seed's request) -> answer with tokens."""
    handle = _worker(worker_factory, backend, gate_record)
    res = _run(handle, backend, SHORT, job="works")
    _ok(res, handle, "the seed's request")
    _record_streams(gate_record, works=res)


@pytest.mark.gate(SECTION, "No broadcasting errors")
@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_repeat_identical(backend, worker_factory, gate_record):
    """(a) the same greedy request three times gives identical tokens."""
    handle = _worker(worker_factory, backend, gate_record)
    runs = [_run(handle, backend, SHORT, job=f"greedy-{i}") for i in range(3)]
    tokens = [_ok(r, handle, f"greedy request {i + 1} of 3") for i, r in enumerate(runs)]
    _record_streams(gate_record, **{f"greedy-{i}": r for i, r in enumerate(runs)})
    for i in (1, 2):
        cmp = golden.compare_tokens(tokens[0], tokens[i])
        expect(cmp.equal, f"request {i + 1} identical to request 1", cmp.describe(),
               str(handle.log_path))


@pytest.mark.gate(SECTION, "No broadcasting errors")
@pytest.mark.parametrize("backend", BACKENDS)
def test_interleaved_prompt_lengths(backend, worker_factory, gate_record):
    """(b) short, long, short: the short prompt's tokens identical both times, no error."""
    handle = _worker(worker_factory, backend, gate_record)
    first = _run(handle, backend, SHORT, job="interleave-short-1")
    long_ = _run(handle, backend, LONG, job="interleave-long")
    second = _run(handle, backend, SHORT, job="interleave-short-2")
    _record_streams(gate_record, short_1=first, long=long_, short_2=second)
    a = _ok(first, handle, "short prompt (1st)")
    _ok(long_, handle, "long prompt")
    b = _ok(second, handle, "short prompt after the long one")
    cmp = golden.compare_tokens(a, b)
    expect(cmp.equal, "short prompt's tokens identical before and after the long prompt",
           cmp.describe(), str(handle.log_path))


@pytest.mark.gate(SECTION, "No broadcasting errors")
@pytest.mark.parametrize("backend", BACKENDS)
def test_restart_gives_same_tokens(backend, worker_factory, gate_record):
    """(d) stop and respawn the worker: the greedy tokens equal those from before."""
    handle = _worker(worker_factory, backend, gate_record)
    before = _run(handle, backend, SHORT, job="restart-before")
    a = _ok(before, handle, "greedy request before the restart")
    fresh = worker_factory.restart(backend)
    _LOG_START[backend] = (str(fresh.log_path), 0)
    note_log(gate_record, fresh.log_path)
    after = _run(fresh, backend, SHORT, job="restart-after")
    b = _ok(after, fresh, "greedy request after the restart")
    _record_streams(gate_record, before=before, after=after)
    cmp = golden.compare_tokens(a, b)
    expect(cmp.equal, "identical greedy tokens across a restart", cmp.describe(),
           str(fresh.log_path))


@pytest.mark.gate(SECTION, "No broadcasting errors")
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_error_patterns(backend, worker_factory, gate_record):
    """(f) the worker log since the checks began and every stream: no known error pattern."""
    handle = _worker(worker_factory, backend, gate_record)
    for job, prompt in (("scan-short", SHORT), ("scan-long", LONG), ("scan-short-2", SHORT)):
        _run(handle, backend, prompt, job=job)
    log, start = _LOG_START[backend]
    matches = errorscan.scan_log(Path(log), start)
    for res in _STREAMS.get(backend, []):
        matches += errorscan.scan_stream(res)
    gate_record["error_patterns_version"] = errorscan.PATTERNS_VERSION
    gate_record["streams_scanned"] = len(_STREAMS.get(backend, []))
    expect(not matches, "no error pattern in the worker log or any stream",
           errorscan.format_matches(matches), log)


@pytest.mark.gate(SECTION, "Inference completes successfully")
@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_sampling(backend, worker_factory, gate_record):
    """(c) temperature 0.7 seed 42 twice: identical; three other seeds: not all the same."""
    handle = _worker(worker_factory, backend, gate_record)
    runs = [_run(handle, backend, SHORT, job=f"seed42-{i}", temperature=0.7, seed=42)
            for i in range(2)]
    others = [_run(handle, backend, SHORT, job=f"seed{s}", temperature=0.7, seed=s)
              for s in (1, 2, 3)]
    toks = [_ok(r, handle, f"sampled request (seed {r.request_json['seed']})")
            for r in [*runs, *others]]
    _record_streams(gate_record, **{r.job_id or str(i): r for i, r in enumerate([*runs, *others])})
    cmp = golden.compare_tokens(toks[0], toks[1])
    expect(cmp.equal, "seed 42 twice gives identical tokens", cmp.describe(),
           str(handle.log_path))
    expect(len({tuple(t) for t in toks[2:]}) > 1, "seeds 1, 2, 3 do not all give the same tokens",
           f"all three identical: {toks[2][:10]}...", str(handle.log_path))


@pytest.mark.gate(SECTION, "Inference completes successfully")
@pytest.mark.parametrize("backend", BACKENDS)
def test_streams_obey_contract(backend, worker_factory, gate_record):
    """(e) started first, consecutive indices, one terminal event, tokens_out, stop_reason,
    max_tokens honoured: for fresh requests and every stream of this backend so far."""
    handle = _worker(worker_factory, backend, gate_record)
    for n in (1, 5, MAX_TOKENS):
        _run(handle, backend, SHORT, job=f"contract-{n}", max_tokens=n)
    bad = []
    for res in _STREAMS.get(backend, []):
        for problem in streamcheck.check_stream(res):
            bad.append(f"{res.job_id}: {problem}")
    gate_record["streams_checked"] = len(_STREAMS.get(backend, []))
    expect(not bad, "every stream obeys the contract", "\n".join(bad[:20]), str(handle.log_path))


@pytest.mark.gate(SECTION, "Tokens are generated")
@pytest.mark.parametrize("backend", BACKENDS)
def test_tokens_generated(backend, worker_factory, gate_record):
    """max_tokens tokens come back (fewer only on eos), with text, and tokens_out agrees."""
    handle = _worker(worker_factory, backend, gate_record)
    res = _run(handle, backend, SHORT, job="tokens")
    toks = _ok(res, handle, "greedy request")
    end = res.terminal or {}
    _record_streams(gate_record, tokens=res)
    expect(end.get("tokens_out") == len(toks), f"tokens_out = {len(toks)} token events",
           str(end.get("tokens_out")), str(handle.log_path))
    expect(len(toks) == MAX_TOKENS or end.get("stop_reason") == "eos",
           f"{MAX_TOKENS} tokens, or fewer with stop_reason eos",
           f"{len(toks)} tokens, stop_reason {end.get('stop_reason')}", str(handle.log_path))
    expect(res.text.strip() != "", "non-empty generated text", repr(res.text),
           str(handle.log_path))


@pytest.mark.gate(SECTION, "Tokens are generated")
@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_tokens(backend, lab, worker_factory, gate_record):
    """(g) greedy tokens equal the golden file of this model and backend (record with
    --update-golden); across backends the common prefix must reach --golden-min-prefix."""
    handle = _worker(worker_factory, backend, gate_record)
    model_id = worker_factory.model_id
    got: dict[str, StreamResult] = {
        name: _run(handle, backend, prompt, job=f"golden-{name}")
        for name, prompt in GOLDEN_PROMPTS.items()
    }
    tokens = {name: _ok(r, handle, f"golden prompt {name!r}") for name, r in got.items()}
    _record_streams(gate_record, **{f"golden-{k}": v for k, v in got.items()})
    if lab.settings.update_golden:
        path = golden.save_golden(GOLDEN_DIR, golden.Golden(
            model_id=model_id, backend=backend, worker_binary_sha256=handle.binary_sha256,
            prompts={name: golden.GoldenPrompt(GOLDEN_PROMPTS[name], MAX_TOKENS, tokens[name],
                                               got[name].text) for name in got},
        ))
        gate_record["golden recorded"] = str(path)
    expected = golden.load_golden(GOLDEN_DIR, model_id, backend)
    if expected is None:
        pytest.skip(f"no golden file for {model_id}/{backend} in {GOLDEN_DIR}: record it on a "
                    "trusted build with --update-golden")
    where = str(golden.golden_path(GOLDEN_DIR, model_id, backend))
    for name, gp in sorted(expected.prompts.items()):
        if name not in tokens or gp.max_tokens != MAX_TOKENS:
            continue
        cmp = golden.compare_tokens(gp.token_texts, tokens[name])
        expect(cmp.equal, f"golden tokens for prompt {name!r}", cmp.describe(),
               f"{where} and {handle.log_path}")
    prefixes = golden.cross_backend_prefixes(GOLDEN_DIR, model_id)
    gate_record["cross-backend common prefix"] = {f"{a}/{b}": n for (a, b), n in prefixes.items()}
    need = lab.settings.golden_min_prefix
    short = {f"{a}/{b}": n for (a, b), n in prefixes.items() if backend in (a, b) and n < need}
    expect(not short, f"cross-backend common prefix >= {need} tokens", str(short), where)
