"""The reference check: pieces mapped back to tokens, each token judged against the
reference's logits, and every way a worker can be deterministic but wrong caught."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from llorch_harness.checks.agreement import ReferenceRunner, first_difference, side_by_side
from llorch_harness.checks.inference_checks import check_golden, check_reference
from llorch_harness.checks.reference import (
    NumpyReference,
    ReferenceIdentity,
    load_reference,
    pick_implementation,
    worker_eos_id,
)
from llorch_harness.checks.tokenalign import token_bytes
from llorch_harness.checks.workerclient import StreamResult
from llorch_harness.checks.workerlog import GenerationFacts
from llorch_harness.errors import HarnessError
from tests.sse_servers import good_events, pieces_of

PROMPT = "Hello, how are you?"


def stream(prompt: str, pieces: list[str], max_tokens: int, generated: int | None,
           temperature: float = 0.0) -> StreamResult:
    """A successful real-wire stream with the log's count of generated tokens."""
    res = StreamResult(200, good_events("j", pieces), [], None, 0.1, 0.1, None,
                       content_type="text/event-stream",
                       request_json={"job_id": "j", "prompt": prompt, "max_tokens": max_tokens,
                                     "temperature": temperature})
    if generated is not None:
        res.log = GenerationFacts("j", tokens_generated=generated, pieces=len(pieces),
                                  line_nos=[1, 2])
    return res


def worker_pieces(ref: NumpyReference, ids: list[int]) -> list[str]:
    """The pieces a TokenOutputStream-like worker streams for `ids` (special tokens hidden)."""
    table = token_bytes(ref.tokenizer, ref.vocab_size)
    words = [table[i].decode("utf-8", "replace") for i in ids]
    return pieces_of(words)


class ScriptedRef:
    """A reference whose preferences are written down: `prefer(ids)` returns a ranking of
    (token, logit) for the next position; every other token gets -20."""

    def __init__(self, base: NumpyReference,
                 prefer: Callable[[list[int]], list[tuple[int, float]]]) -> None:
        self.tokenizer = base.tokenizer
        self.vocab_size = base.vocab_size
        self.eos_id = 3
        self.identity = ReferenceIdentity("scripted", "test", "float32")
        self._prefer = prefer
        self._encode = base.encode

    def encode(self, text: str) -> list[int]:
        return self._encode(text)

    def logits(self, ids: list[int]) -> np.ndarray:
        rows = np.full((len(ids), self.vocab_size), -20.0, dtype=np.float32)
        for i in range(len(ids)):
            for tok, value in self._prefer(ids[: i + 1]):
                rows[i, tok] = value
        return rows


def test_worker_equal_to_reference_passes_whatever_the_pieces(numpy_ref: NumpyReference) -> None:
    runner = ReferenceRunner(numpy_ref)
    ref = runner.greedy(PROMPT, 20)
    pieces = worker_pieces(numpy_ref, ref["ids"])
    verdict = runner.compare(stream(PROMPT, pieces, 20, len(ref["ids"])), "cp3")
    assert verdict.ok, verdict.message
    assert verdict.details["worker_token_ids"] == ref["ids"]
    assert verdict.details["first_difference"] is None
    # one piece holding everything, or one piece per character, spell the same tokens
    for split in ([ref["text"]], list(ref["text"])):
        assert runner.compare(stream(PROMPT, split, 20, len(ref["ids"])), "cp3").ok


def test_a_wrong_token_fails_naming_position_expected_and_got(numpy_ref: NumpyReference) -> None:
    runner = ReferenceRunner(numpy_ref)
    ref = runner.greedy(PROMPT, 20)
    wrong = list(ref["ids"])
    top = numpy_ref.logits(numpy_ref.encode(PROMPT) + wrong[:5])[-1]
    wrong[5] = int(np.argsort(-top)[50])  # far down the reference's list
    verdict = runner.compare(stream(PROMPT, worker_pieces(numpy_ref, wrong[:6]), 20, 6),
                             "cp3")
    assert not verdict.ok
    msg = verdict.message
    assert "position 5" in msg and f"(id {ref['ids'][5]})" in msg and f"(id {wrong[5]})" in msg
    assert "gap" in msg and "reference numpy" in msg and "text so far" in msg
    assert verdict.details["first_difference"] is not None
    assert "⟦" in verdict.details["side_by_side"]


def test_near_tie_within_delta_passes_beyond_fails(numpy_ref: NumpyReference) -> None:
    a, b = 40, 41  # two single-byte tokens of the tiny vocabulary
    table = token_bytes(numpy_ref.tokenizer, numpy_ref.vocab_size)
    text = (table[b] * 3).decode()

    def prefer(gap: float) -> Callable[[list[int]], list[tuple[int, float]]]:
        return lambda ids: [(a, 10.0), (b, 10.0 - gap)]

    near = ReferenceRunner(ScriptedRef(numpy_ref, prefer(0.2)), delta=0.5, k=5)
    assert near.compare(stream(PROMPT, [text], 3, 3), "tie").ok
    far = ReferenceRunner(ScriptedRef(numpy_ref, prefer(2.0)), delta=0.5, k=5)
    verdict = far.compare(stream(PROMPT, [text], 3, 3), "tie")
    assert not verdict.ok and "gap" in verdict.message
    # inside delta but not in the top k: fails on rank
    crowded = ReferenceRunner(ScriptedRef(numpy_ref, lambda ids: [
        (a, 10.0), (42, 10.0), (43, 10.0), (b, 9.9)]), delta=0.5, k=2)
    assert "rank 4" in crowded.compare(stream(PROMPT, [text], 3, 3), "tie").message


def test_early_stop_must_be_where_the_reference_says_eos(numpy_ref: NumpyReference) -> None:
    tok = 40
    text = token_bytes(numpy_ref.tokenizer, numpy_ref.vocab_size)[tok].decode()
    eos_next = ReferenceRunner(ScriptedRef(numpy_ref, lambda ids: [(tok, 5.0)] if len(ids) < 8
                                           else [(3, 5.0)]))
    n_prompt = len(numpy_ref.encode(PROMPT))
    stops_right = n_prompt + 2 == 8  # the scripted model wants EOS after two tokens
    verdict = eos_next.compare(stream(PROMPT, [text * 2], 20, 2), "eos")
    assert verdict.ok == stops_right, verdict.message
    never_eos = ReferenceRunner(ScriptedRef(numpy_ref, lambda ids: [(tok, 5.0)]))
    verdict = never_eos.compare(stream(PROMPT, [text * 2], 20, 2), "eos")
    assert not verdict.ok and "stopped (EOS) after 2 of max_tokens=20" in verdict.message


def test_count_that_disagrees_with_the_log_fails(numpy_ref: NumpyReference) -> None:
    runner = ReferenceRunner(numpy_ref)
    ref = runner.greedy(PROMPT, 20)
    verdict = runner.compare(stream(PROMPT, [ref["text"]], 20, 25), "cp3")
    assert not verdict.ok and "its log says 25 were generated" in verdict.message


def test_greedy_is_cached_in_the_pool(numpy_ref: NumpyReference, tmp_path: Path) -> None:
    runner = ReferenceRunner(numpy_ref, cache_dir=tmp_path, model_files={"m": "abc"})
    first = runner.greedy(PROMPT, 8)
    assert len(list(tmp_path.glob("*.json"))) == 1

    class Boom(ScriptedRef):
        def logits(self, ids: list[int]) -> np.ndarray:
            raise AssertionError("the cached result must be used")

    cached = ReferenceRunner(Boom(numpy_ref, lambda ids: []), cache_dir=tmp_path,
                             model_files={"m": "abc"})
    cached.ref.identity = numpy_ref.identity
    assert cached.greedy(PROMPT, 8) == first
    other = ReferenceRunner(numpy_ref, cache_dir=tmp_path, model_files={"m": "def"})
    other.greedy(PROMPT, 8)
    assert len(list(tmp_path.glob("*.json"))) == 2  # other files, other key


def test_check_reference_judges_greedy_streams_only(numpy_ref: NumpyReference) -> None:
    runner = ReferenceRunner(numpy_ref)
    ref = runner.greedy(PROMPT, 20)
    good = stream(PROMPT, [ref["text"]], 20, len(ref["ids"]))
    sampled = stream(PROMPT, ["anything at all"], 20, 3, temperature=0.7)
    out = check_reference(runner, [good, sampled])
    assert out.ok, out.message
    assert out.details["streams_judged"] == 1
    bad = stream(PROMPT, ["zzzz qqqq"], 20, 4)
    out = check_reference(runner, [good, bad])
    assert not out.ok and "1 of 2 greedy streams disagree" in out.message


def test_golden_refuses_to_record_disagreeing_output(tmp_path: Path) -> None:
    res = {"cp3": stream(PROMPT, [" a b"], 20, 2)}
    out = check_golden(tmp_path, "tiny-qwen", "cpu", res, update=True, min_common_prefix=0,
                       reference_problems=["position 1: expected 'x', got 'b'"])
    assert not out.ok and "refusing to record" in out.message
    assert not list(tmp_path.rglob("*.json"))
    missing_ok = check_golden(tmp_path, "tiny-qwen", "cpu", res, update=False,
                              min_common_prefix=0, reference_problems=[])
    assert missing_ok.ok and not missing_ok.skipped and "agrees with the reference" in \
        missing_ok.message
    missing_bad = check_golden(tmp_path, "tiny-qwen", "cpu", res, update=False,
                               min_common_prefix=0, reference_problems=["x"])
    assert not missing_bad.ok and not missing_bad.skipped
    no_ref = check_golden(tmp_path, "tiny-qwen", "cpu", res, update=False, min_common_prefix=0)
    assert no_ref.skipped and "--reference off" in no_ref.message


def test_pick_implementation_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_implementation("off", "qwen2") is None
    monkeypatch.setattr("llorch_harness.checks.reference.transformers_available", lambda: False)
    assert pick_implementation("auto", "qwen2") == "numpy"
    for arch in ("llama", "mistral", "phi3"):  # CP4's architectures: the numpy decoder's
        assert pick_implementation("auto", arch) == "numpy"
    with pytest.raises(HarnessError, match="no reference implementation"):
        pick_implementation("auto", "gemma")
    with pytest.raises(HarnessError, match="needs torch and transformers"):
        pick_implementation("transformers", "qwen2")
    with pytest.raises(HarnessError, match="unknown reference"):
        pick_implementation("maybe", "qwen2")
    monkeypatch.setattr("llorch_harness.checks.reference.transformers_available", lambda: True)
    assert pick_implementation("auto", "phi3") == "transformers"


def test_numpy_reference_runs_every_architecture_the_decoder_has() -> None:
    from llorch_harness.checks.reference import _NUMPY_ARCHITECTURES
    from llorch_harness.lab.refworker.architectures import SUPPORTED

    assert set(SUPPORTED) == _NUMPY_ARCHITECTURES


def test_worker_eos_rule(numpy_ref: NumpyReference) -> None:
    # the tiny vocabulary has neither "</s>" nor 151643: the worker can never stop at EOS
    assert worker_eos_id(numpy_ref.tokenizer, numpy_ref.vocab_size) is None
    assert worker_eos_id(numpy_ref.tokenizer, 151936) == 151643


def test_side_by_side_marks_the_first_difference() -> None:
    assert first_difference("abc", "abd") == 2 and first_difference("x", "x") is None
    assert side_by_side("abc", "abd").splitlines()[0] == "worker:    'ab' ⟦ 'c'"


def test_reduced_precision_reference_output_passes(tiny: Path) -> None:
    """A correct model computed in bfloat16 (as a GPU would) agrees with the float32
    reference within the default margins; transformers is an independent implementation."""
    pytest.importorskip("torch", reason="needs the oracle extra")
    pytest.importorskip("transformers", reason="needs the oracle extra")
    judge_ref = ReferenceRunner(load_reference(tiny, "transformers"))
    for dtype in ("bfloat16", "float16"):
        worker = ReferenceRunner(load_reference(tiny, "transformers", dtype))
        for prompt in (PROMPT, "Hi"):
            out = worker.greedy(prompt, 20)
            verdict = judge_ref.compare(stream(prompt, [out["text"]], 20, len(out["ids"])),
                                        f"{dtype} {prompt}")
            assert verdict.ok, verdict.message
