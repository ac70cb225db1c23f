"""The inference checks (a)-(g): each fails on the matching broken worker and passes on a good one.

A stub worker (tests/sse_servers.py) gives exact control over each fault; the
reference worker, run as a real process on the tiny model, proves the checks
pass on a healthy contract worker and fail on its fault switches.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llorch_harness.checks.golden import Golden, GoldenPrompt, load_golden, save_golden
from llorch_harness.checks.inference_checks import (
    GATE_MAX_TOKENS,
    GATE_PROMPTS,
    check_answer,
    check_contract,
    check_golden,
    check_greedy_repeat,
    check_interleaved_lengths,
    check_no_error_patterns,
    check_reference,
    check_restart_stable,
    check_seeded_sampling,
    check_tokens_generated,
    run_prompts,
    run_request,
)
from llorch_harness.checks.workerclient import StreamResult, health
from llorch_harness.checks.workerlog import GenerationFacts
from tests.sse_servers import (
    BROADCAST_MESSAGE,
    QWEN_FAILURE_MESSAGE,
    StubWorker,
    good_events,
    sse_server,
)

CID = "0f8e7c52-6d4b-4e8a-9a51-3c2b1d0e9f7a"
QWEN_DIAGNOSIS = ("the KV cache is never cleared for Qwen: every prompt of two or more tokens "
                  "fails once the cache holds anything")

MT = 6
P_SHORT, P_LONG, P_CP3 = GATE_PROMPTS["short"], GATE_PROMPTS["long"], GATE_PROMPTS["cp3"]


def test_gate_constants() -> None:
    assert GATE_MAX_TOKENS == 20
    assert GATE_PROMPTS["cp3"] == "Hello, how are you?"
    assert GATE_PROMPTS["short"] == "Hi"
    assert 50 <= len(GATE_PROMPTS["long"].split()) <= 75


# -- one answer ----------------------------------------------------------------------------------

def _result(tokens: list[str], stop_reason: str = "MAX_TOKENS", max_tokens: int = MT,
            generated: int | None = None, **end_fields: str) -> StreamResult:
    """A clean 200 stream as execute() builds it, with the given pieces and stop reason, and
    (with `generated`) the log's account: that many tokens, as many pieces as sent."""
    events = good_events("job-1", tokens, stop_reason=stop_reason)
    events[-1].update(end_fields)
    res = StreamResult(
        status_code=200, events=events,
        raw_lines=[], correlation_id=CID, elapsed_s=0.1, first_event_s=0.1,
        transport_error=None, content_type="text/event-stream", request_correlation_id=CID,
        request_json={"job_id": "job-1", "prompt": "p", "max_tokens": max_tokens})
    if generated is not None:
        res.log = GenerationFacts("job-1", tokens_generated=generated, pieces=len(tokens),
                                  line_nos=[1, 3])
    return res


def test_answer_passes_live_and_fails_on_error_or_no_tokens(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    with StubWorker(log_path=log) as w:
        res = run_request(w.url, P_CP3, MT, "answer", log_path=log)
    out = check_answer(res, "the seed's request")
    assert out.ok, out.message
    assert out.results == [res] and out.details["streams"][0]["tokens"] == res.tokens
    assert res.job_id.startswith("gate-answer-")
    assert res.tokens_generated == MT and res.log is not None and res.log.pieces == len(res.tokens)
    with sse_server("broadcast_error") as srv:
        bad = check_answer(run_request(srv.url, P_CP3, MT, "answer"), "the seed's request")
    assert not bad.ok and bad.message.startswith("the seed's request failed: ")
    assert "INFERENCE_FAILED" in bad.message and BROADCAST_MESSAGE in bad.message
    assert "Diagnosis: the attention mask does not fit the keys" in bad.message
    empty = check_answer(_result([], generated=0))
    assert not empty.ok and "expected at least one token event, got none" in empty.message


def test_lone_qwen_error_event_is_a_diagnosed_failed_inference() -> None:
    """CP3's Qwen failure: 200, one `error` event, no `started`, candle's text hidden."""
    with sse_server("qwen_error") as srv:
        res = run_request(srv.url, P_CP3, MT, "answer")
    assert check_contract([res]).ok  # not a broken contract ...
    out = check_answer(res, "the seed's request")  # ... but a failed inference, named
    assert not out.ok
    assert QWEN_FAILURE_MESSAGE in out.message and QWEN_DIAGNOSIS in out.message


def test_tokens_generated_counts_from_the_log(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    with StubWorker(log_path=log) as w:
        res = run_request(w.url, P_CP3, MT, "tokens", log_path=log)
    out = check_tokens_generated(res, MT)
    assert out.ok, out.message
    assert out.details["stop_reason"] == "MAX_TOKENS"
    assert out.details["stop_reason_spelling"] == "SCREAMING_SNAKE_CASE"
    assert out.details["tokens_generated"] == MT and out.details["pieces"] == len(res.tokens)
    # pieces hold several tokens: 2 events for 6 tokens with MAX_TOKENS is a healthy answer
    assert check_tokens_generated(_result([" Hello,", " world"], generated=MT), MT).ok
    eos = check_tokens_generated(_result([" Hi"], generated=2), MT)  # the model reached EOS
    assert eos.ok and "ended at EOS after 2 of max_tokens=6" in eos.message
    blank = check_tokens_generated(_result([" ", "\n"], generated=MT), MT)
    assert not blank.ok and "expected the pieces to carry text" in blank.message
    no_log = check_tokens_generated(_result(["a"]), MT)
    assert not no_log.ok and "no worker log was read" in no_log.message
    broken = check_tokens_generated(_result(["a"], generated=1, tokens_out=2), MT)
    assert not broken.ok and "breaks the contract" in broken.message


@pytest.mark.parametrize(
    ("faults", "needle"),
    [({"log_overcount"}, f"tokens were generated, more than max_tokens={MT}"),
     ({"log_pieces_mismatch"}, "pieces, the stream carried"),
     ({"empty_pieces"}, "expected the pieces to carry text")],
)
def test_tokens_generated_fails_when_log_and_stream_disagree(tmp_path: Path, faults: set[str],
                                                              needle: str) -> None:
    log = tmp_path / "w.log"
    with StubWorker(faults, log_path=log) as w:
        out = check_tokens_generated(run_request(w.url, P_CP3, MT, "tokens", log_path=log), MT)
    assert not out.ok and needle in out.message, out.message


def test_log_without_the_job_fails(tmp_path: Path) -> None:
    log = tmp_path / "other.log"
    log.write_text("")
    with StubWorker() as w:  # logs nowhere: the log we read never names the job
        res = run_request(w.url, P_CP3, MT, "tokens", log_path=log)
    out = check_tokens_generated(res, MT)
    assert not out.ok and "found neither" in out.message


# -- (a) -----------------------------------------------------------------------------------------

def test_greedy_repeat_passes_on_good_worker(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    with StubWorker(log_path=log) as w:
        out = check_greedy_repeat(w.url, P_CP3, MT, log_path=log)
    assert out.ok, out.message
    assert len(out.results) == 3 and len(set(map(tuple, out.details["token_streams"]))) == 1
    assert out.details["tokens_per_sec"] == [500.0, 500.0, 500.0]  # 6 tokens in 12 ms


def test_greedy_repeat_fails_on_qwen_cache_bug_with_diagnosis(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    with StubWorker({"qwen_cache_bug"}, log_path=log) as w:
        out = check_greedy_repeat(w.url, P_CP3, MT, log_path=log)
    assert not out.ok
    assert "greedy request 2 of 3 failed" in out.message and QWEN_DIAGNOSIS in out.message


def test_greedy_repeat_fails_on_drift() -> None:
    with StubWorker({"drift"}) as w:
        out = check_greedy_repeat(w.url, P_CP3, MT)
    assert not out.ok
    assert "greedy request 2 of 3" in out.message and "differs at token" in out.message
    assert "Expected request 2 identical to request 1" in out.message
    assert "job_id 'gate-greedy2-" in out.message


def test_greedy_repeat_fails_on_stalled_worker_within_deadline() -> None:
    t0 = time.monotonic()
    with sse_server("stall_after_token") as srv:
        out = check_greedy_repeat(srv.url, P_CP3, MT, times=2, first_event_timeout=5,
                                  event_timeout=1)
    assert time.monotonic() - t0 < 20
    assert not out.ok
    assert "greedy request 1 of 2 failed" in out.message and "event_timeout=1 s" in out.message


# -- (b) -----------------------------------------------------------------------------------------

def test_interleaved_passes_on_good_worker() -> None:
    with StubWorker() as w:
        out = check_interleaved_lengths(w.url, P_SHORT, P_LONG, MT)
    assert out.ok, out.message
    assert out.details["token_streams"][0] == out.details["token_streams"][2]


def test_interleaved_fails_on_broadcast_error() -> None:
    with StubWorker({"broadcast"}) as w:
        out = check_interleaved_lengths(w.url, P_SHORT, P_LONG, MT)
    assert not out.ok
    assert "the long-prompt request (after a short one) failed" in out.message
    assert BROADCAST_MESSAGE in out.message and "INFERENCE_FAILED" in out.message


def test_interleaved_fails_on_drift() -> None:
    with StubWorker({"drift"}) as w:
        out = check_interleaved_lengths(w.url, P_SHORT, P_LONG, MT)
    assert not out.ok
    assert "short prompt gave other tokens after a long prompt" in out.message


def test_interleaved_refuses_swapped_prompts() -> None:
    with pytest.raises(ValueError):
        check_interleaved_lengths("http://127.0.0.1:9", P_LONG, P_SHORT, MT)


# -- (c) -----------------------------------------------------------------------------------------

def test_seeded_sampling_passes_on_good_worker() -> None:
    with StubWorker() as w:
        out = check_seeded_sampling(w.url, P_CP3, MT)
    assert out.ok, out.message
    assert out.details["seeds"] == [42, 42, 1, 2, 3]
    assert len(out.results) == 5
    sent = [r.request_json for r in out.results]
    assert all(b["temperature"] == 0.7 for b in sent)


def test_seeded_sampling_fails_when_seed_ignored() -> None:
    with StubWorker({"seed_ignored"}) as w:
        out = check_seeded_sampling(w.url, P_CP3, MT)
    assert not out.ok
    assert "different seeds [1, 2, 3] at temperature 0.7 all gave the same" in out.message


def test_seeded_sampling_fails_when_not_reproducible() -> None:
    with StubWorker({"sampling_random"}) as w:
        out = check_seeded_sampling(w.url, P_CP3, MT)
    assert not out.ok
    assert "seed 42 at temperature 0.7 twice gave different tokens" in out.message


# -- (d) -----------------------------------------------------------------------------------------

def test_restart_stable() -> None:
    assert check_restart_stable(["a", "b"], ["a", "b"]).ok
    out = check_restart_stable(["a", "b", "c"], ["a", "x", "c"])
    assert not out.ok
    assert "differs at token 1: expected 'b', got 'x'" in out.message
    assert "after a worker restart" in out.message


# -- (e) -----------------------------------------------------------------------------------------

def test_contract_passes_and_fails() -> None:
    with StubWorker() as w:
        good = check_greedy_repeat(w.url, P_CP3, MT).results
    out = check_contract(good, MT)
    assert out.ok, out.message
    assert out.details["stop_reason_spellings"] == ["SCREAMING_SNAKE_CASE"]
    with StubWorker({"bad_tokens_out"}) as w:
        bad = check_greedy_repeat(w.url, P_CP3, MT).results
    out = check_contract(good + bad, None)
    assert not out.ok
    assert "3 of 6 streams break the worker contract" in out.message
    n = len(bad[0].tokens)
    assert f"`end.tokens_out` == number of token events ({n}), got {n + 1}" in out.message
    assert not check_contract([], MT).ok


def test_contract_accepts_legacy_wire_and_checks_the_log(tmp_path: Path) -> None:
    with StubWorker({"legacy"}) as w:
        legacy = check_greedy_repeat(w.url, P_CP3, MT).results
    out = check_contract(legacy, MT)
    assert out.ok, out.message
    assert out.details["stop_reason_spellings"] == ["snake_case"]
    log = tmp_path / "w.log"
    with StubWorker({"log_pieces_mismatch"}, log_path=log) as w:
        res = check_greedy_repeat(w.url, P_CP3, MT, times=2, log_path=log).results
    out = check_contract(res, MT)
    assert not out.ok and "the log's \"Inference complete\" counts" in out.message


def test_contract_fails_on_two_terminals_live() -> None:
    with sse_server("two_terminals") as srv:
        res = run_prompts(srv.url, {"x": "p"}, max_tokens=2)["x"]
    out = check_contract([res])
    assert not out.ok and "exactly one terminal event, got 2" in out.message


# -- (f) -----------------------------------------------------------------------------------------

def test_error_patterns_clean(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    with StubWorker(log_path=log) as w:
        out_a = check_greedy_repeat(w.url, P_CP3, MT)
    out = check_no_error_patterns(log, 0, out_a.results)
    assert out.ok, out.message
    assert out.details["streams_scanned"] == 3


def test_error_patterns_name_the_qwen_cache_bug_from_the_first_request(tmp_path: Path) -> None:
    """Even where every stream succeeded (the first request on cpu), the WARN that the Qwen
    cache reset is a no-op names the bug, with the matched line."""
    log = tmp_path / "w.log"
    with StubWorker({"qwen_cache_bug"}, log_path=log) as w:
        first = run_request(w.url, P_CP3, MT, "first", log_path=log)
    assert check_answer(first).ok
    out = check_no_error_patterns(log, 0, [first])
    assert not out.ok
    assert f"diagnosis: {QWEN_DIAGNOSIS}" in out.message
    assert "Cache reset not implemented for Qwen" in out.message


@pytest.mark.parametrize(
    ("faults", "needle"),
    [({"panic_log"}, "thread 'tokio-runtime-worker' panicked at"),
     ({"nan_log"}, "NaN detected in logits")],
)
def test_error_patterns_in_log_fail_quoting_line(tmp_path: Path, faults: set[str],
                                                  needle: str) -> None:
    log = tmp_path / "w.log"
    with StubWorker(faults, log_path=log) as w:
        res = check_greedy_repeat(w.url, P_CP3, MT).results
    assert check_contract(res).ok  # the streams look fine: only the log tells
    out = check_no_error_patterns(log, 0, res)
    assert not out.ok
    assert needle in out.message and str(log) in out.message
    assert out.details["matches"]


def test_error_patterns_broadcast_in_stream_and_log(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    with StubWorker({"broadcast"}, log_path=log) as w:
        res = check_interleaved_lengths(w.url, P_SHORT, P_LONG, MT).results
    out = check_no_error_patterns(log, 0, res)
    assert not out.ok
    sources = {m["source"] for m in out.details["matches"] if m["pattern"] == "candle_broadcast"}
    assert str(log) in sources
    assert any(s.startswith("stream job=gate-long-") for s in sources)


def test_error_patterns_respects_offset_and_missing_log(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("thread 'main' panicked at old.rs:1:1:\n")
    assert check_no_error_patterns(log, log.stat().st_size, []).ok
    assert not check_no_error_patterns(log, 0, []).ok
    out = check_no_error_patterns(tmp_path / "missing.log", 0, [])
    assert not out.ok and "cannot read the worker log" in out.message


# -- (g) -----------------------------------------------------------------------------------------

def test_golden_record_compare_and_drift(tmp_path: Path) -> None:
    gdir = tmp_path / "golden"
    with StubWorker() as w:
        first = run_prompts(w.url, max_tokens=MT)
        second = run_prompts(w.url, max_tokens=MT)
    missing = check_golden(gdir, "tiny-qwen", "cpu", first, update=False, min_common_prefix=3)
    assert missing.skipped and not missing.ok and "--update-golden" in missing.message
    rec = check_golden(gdir, "tiny-qwen", "cpu", first, update=True, min_common_prefix=3,
                       worker_binary_sha256="cd" * 32)
    assert rec.ok, rec.message
    g = load_golden(gdir, "tiny-qwen", "cpu")
    assert g is not None and set(g.prompts) == set(GATE_PROMPTS)
    assert g.prompts["cp3"].token_texts == first["cp3"].tokens
    assert g.prompts["cp3"].max_tokens == MT
    same = check_golden(gdir, "tiny-qwen", "cpu", second, update=False, min_common_prefix=3)
    assert same.ok, same.message
    # a drifted build: one prompt's tokens changed
    second["short"].events[2]["t"] = " dog"
    out = check_golden(gdir, "tiny-qwen", "cpu", second, update=False, min_common_prefix=3)
    assert not out.ok
    assert "prompt 'short': differs at token 1" in out.message and "got ' dog'" in out.message


def test_golden_refuses_failed_streams_and_prompt_changes(tmp_path: Path) -> None:
    gdir = tmp_path / "golden"
    with StubWorker({"broadcast"}) as w:
        res = run_prompts(w.url, max_tokens=MT)
    out = check_golden(gdir, "tiny-qwen", "cpu", res, update=True, min_common_prefix=0)
    assert not out.ok and "from failed requests" in out.message
    assert load_golden(gdir, "tiny-qwen", "cpu") is None  # nothing recorded from a broken run
    with StubWorker() as w:
        res = run_prompts(w.url, max_tokens=MT)
        other = run_prompts(w.url, max_tokens=MT + 1)
    assert check_golden(gdir, "tiny-qwen", "cpu", res, update=True, min_common_prefix=0).ok
    out = check_golden(gdir, "tiny-qwen", "cpu", other, update=False, min_common_prefix=0)
    assert not out.ok and f"max_tokens={MT}, this run used" in out.message


def test_golden_cross_backend_prefix(tmp_path: Path) -> None:
    gdir = tmp_path / "golden"
    with StubWorker() as w:
        res = run_prompts(w.url, {"cp3": P_CP3}, max_tokens=MT)
    toks = res["cp3"].tokens
    diverged = toks[:2] + ["zz"] * (MT - 2)
    save_golden(gdir, Golden("tiny-qwen", "cuda",
                             {"cp3": GoldenPrompt(P_CP3, MT, diverged, "".join(diverged))}))
    loose = check_golden(gdir, "tiny-qwen", "cpu", res, update=True, min_common_prefix=2)
    assert loose.ok, loose.message
    assert loose.details["cross_backend_prefixes"] == {"cuda": {"cp3": 2}}
    strict = check_golden(gdir, "tiny-qwen", "cpu", res, update=False, min_common_prefix=4)
    assert not strict.ok
    assert "cpu vs cuda golden on prompt 'cp3': common prefix 2 tokens, expected at least 4" \
        in strict.message


# -- the real reference worker ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tinymodel = pytest.importorskip("llorch_harness.lab.tinymodel")
    out = tmp_path_factory.mktemp("tiny") / "tiny-qwen"
    tinymodel.build_tiny_model(out)
    return out


class RefWorker:
    """The reference worker as a real process, in its own session, always stopped."""

    def __init__(self, model: Path, log: Path, faults: str = "", backend: str = "cpu") -> None:
        pytest.importorskip("llorch_harness.lab.refworker.server",
                            reason="reference worker not present in this checkout")
        self.port = _free_port()
        self.uri = f"http://localhost:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items()
               if k not in ("LLORCH_REF_FAULTS", "LLORCH_REF_BACKEND", "LLORCH_REF_WIRE")}
        env["LLORCH_HARNESS_POOL"] = str(log.parent)  # conftest's leak sweep finds it
        env["LLORCH_REF_BACKEND"] = backend
        if faults:
            env["LLORCH_REF_FAULTS"] = faults
        self._fh = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llorch_harness.lab.refworker", "--worker-id", "w-test",
             "--model", str(model), "--port", str(self.port),
             "--callback-url", "http://localhost:9999/x"],
            stdout=self._fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"reference worker exited {self.proc.returncode}: "
                            f"{self.log.read_text(errors='replace')[-2000:]}")
            if health(self.uri, timeout=1.0):
                return
            time.sleep(0.05)
        pytest.fail("reference worker not healthy within 60 s")

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(grace)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        self._fh.close()


@pytest.fixture
def refworker(tiny_model: Path, tmp_path: Path) -> Iterator[Callable[..., RefWorker]]:
    started: list[RefWorker] = []

    def start(faults: str = "", backend: str = "cpu") -> RefWorker:
        w = RefWorker(tiny_model, tmp_path / f"worker{len(started)}.log", faults, backend)
        started.append(w)
        w.wait_ready()
        return w

    yield start
    for w in started:
        w.stop()


def test_reference_worker_passes_every_check(refworker, tmp_path: Path) -> None:
    w = refworker()
    offset = w.log.stat().st_size
    a = check_greedy_repeat(w.uri, P_CP3, GATE_MAX_TOKENS, log_path=w.log)
    b = check_interleaved_lengths(w.uri, P_SHORT, P_LONG, GATE_MAX_TOKENS, log_path=w.log)
    c = check_seeded_sampling(w.uri, P_CP3, GATE_MAX_TOKENS, log_path=w.log)
    prompts = run_prompts(w.uri, log_path=w.log)
    tokens = check_tokens_generated(prompts["cp3"], GATE_MAX_TOKENS)
    assert tokens.ok, tokens.message
    assert all(r.log is not None and r.log.found for r in prompts.values())
    for out in (a, b, c):
        assert out.ok, out.message
    streams = a.results + b.results + c.results + list(prompts.values())
    e = check_contract(streams, GATE_MAX_TOKENS)
    assert e.ok, e.message
    f = check_no_error_patterns(w.log, offset, streams)
    assert f.ok, f.message
    g = check_golden(tmp_path / "golden", "tiny-qwen", "cpu", prompts, update=True,
                     min_common_prefix=5)
    assert g.ok, g.message
    w.stop()
    w2 = refworker()
    after = run_prompts(w2.uri)
    d = check_restart_stable(prompts["cp3"].tokens, after["cp3"].tokens)
    assert d.ok, d.message
    g2 = check_golden(tmp_path / "golden", "tiny-qwen", "cpu", after, update=False,
                      min_common_prefix=5)
    assert g2.ok, g2.message


def test_reference_worker_broadcast_fault_fails_b_and_f(refworker) -> None:
    w = refworker("broadcast")
    offset = w.log.stat().st_size
    b = check_interleaved_lengths(w.uri, P_SHORT, P_LONG, GATE_MAX_TOKENS)
    assert not b.ok
    assert "failed" in b.message and "INFERENCE_FAILED" in b.message, b.message
    f = check_no_error_patterns(w.log, offset, b.results)
    assert not f.ok
    assert {"candle_broadcast", "candle_shape_mismatch"} & {
        m["pattern"] for m in f.details["matches"]}, f.message


def test_reference_worker_drift_fault_fails_a(refworker) -> None:
    w = refworker("drift")
    a = check_greedy_repeat(w.uri, P_CP3, GATE_MAX_TOKENS)
    assert not a.ok
    assert "gave other tokens than request 1" in a.message, a.message


def test_reference_worker_panic_fails_a_and_f(refworker) -> None:
    w = refworker("panic_after_first")
    offset = w.log.stat().st_size
    a = check_greedy_repeat(w.uri, P_CP3, GATE_MAX_TOKENS, first_event_timeout=20)
    assert not a.ok and "greedy request 2 of 3 failed" in a.message, a.message
    w.proc.wait(10)  # the worker died (exit 101, like a Rust panic)
    f = check_no_error_patterns(w.log, offset, a.results)
    assert not f.ok and "panicked at" in f.message, f.message


def test_reference_worker_nan_fault_fails_f(refworker) -> None:
    w = refworker("nan")
    a = check_greedy_repeat(w.uri, P_CP3, GATE_MAX_TOKENS, times=2)
    f = check_no_error_patterns(w.log, 0, a.results)
    assert not f.ok and "NaN" in f.message, f.message


def test_reference_worker_stall_fault_fails_within_deadline(refworker) -> None:
    w = refworker("stall")
    t0 = time.monotonic()
    a = check_greedy_repeat(w.uri, P_CP3, GATE_MAX_TOKENS, times=2, first_event_timeout=1,
                            event_timeout=1, total_timeout=5)
    assert time.monotonic() - t0 < 20
    assert not a.ok and "first_event_timeout=1 s" in a.message, a.message
    w.stop(grace=0.5)  # a stalled request holds graceful shutdown; no need to wait for it


@pytest.mark.parametrize("backend", ["cpu", "cuda", "metal"])
def test_reference_worker_qwen_cache_bug_is_named_on_every_backend(refworker, backend) -> None:
    """The real CP3 bug: cpu fails from the second request, cuda/metal (warm-up) from the
    first; the candle text is hidden, and the diagnosis names the bug in words."""
    w = refworker("qwen_cache_bug", backend=backend)
    first = run_request(w.uri, P_CP3, GATE_MAX_TOKENS, "first", log_path=w.log)
    works = check_answer(first, "the seed's request")
    assert works.ok == (backend == "cpu"), works.message
    a = check_greedy_repeat(w.uri, P_CP3, GATE_MAX_TOKENS, log_path=w.log)
    assert not a.ok and QWEN_DIAGNOSIS in a.message, a.message
    assert QWEN_FAILURE_MESSAGE in a.message
    f = check_no_error_patterns(w.log, 0, [first, *a.results])
    assert not f.ok and f"diagnosis: {QWEN_DIAGNOSIS}" in f.message
    assert "Cache reset not implemented for Qwen" in f.message
    assert "broadcast_add" not in w.log.read_text()  # the real worker never shows candle's text


def test_reference_worker_decode_positions_fool_self_checks_not_goldens(refworker,
                                                                          tmp_path: Path) -> None:
    """Decode steps at positions 1, 2, ...: deterministic but wrong. Every self-comparison
    passes; only an independent yardstick (a golden from a correct build, the reference
    implementation in test_reference_agreement.py and the gate) catches it."""
    good = refworker()
    recorded = run_prompts(good.uri, log_path=good.log)
    assert check_golden(tmp_path, "tiny-qwen", "cpu", recorded, update=True,
                        min_common_prefix=0).ok
    good.stop()
    w = refworker("decode_positions")
    a = check_greedy_repeat(w.uri, P_CP3, GATE_MAX_TOKENS, log_path=w.log)
    b = check_interleaved_lengths(w.uri, P_SHORT, P_LONG, GATE_MAX_TOKENS, log_path=w.log)
    assert a.ok and b.ok, (a.message, b.message)
    assert check_contract(a.results + b.results).ok
    wrong = run_prompts(w.uri, log_path=w.log)
    g = check_golden(tmp_path, "tiny-qwen", "cpu", wrong, update=False, min_common_prefix=0)
    assert not g.ok and "differs at token" in g.message, g.message


@pytest.fixture(scope="module")
def numpy_runner(tiny_model: Path):
    from llorch_harness.checks.agreement import ReferenceRunner
    from llorch_harness.checks.reference import load_reference

    return ReferenceRunner(load_reference(tiny_model, "numpy"))


@pytest.mark.parametrize("fault", ["", "decode_positions", "wrong_rope_base", "swapped_layers"])
def test_reference_check_catches_deterministic_but_wrong_workers(refworker, numpy_runner,
                                                                 fault: str) -> None:
    """The worker agrees with itself every time; only the reference can tell it is wrong."""
    w = refworker(fault)
    a = check_greedy_repeat(w.uri, P_CP3, GATE_MAX_TOKENS, log_path=w.log)
    assert a.ok, a.message  # deterministic either way
    prompts = run_prompts(w.uri, log_path=w.log)
    out = check_reference(numpy_runner, [*a.results, *prompts.values()])
    if not fault:
        assert out.ok, out.message
        assert out.details["streams_judged"] == 3 + len(prompts)
        return
    assert not out.ok, out.message
    assert "outside the reference's margin" in out.message
    assert "expected" in out.message and "got" in out.message and "(id " in out.message
    assert "reference numpy" in out.message and "text so far" in out.message
    judged = next(c for c in out.details["comparisons"].values() if not c["ok"])
    assert "⟦" in judged["side_by_side"]
