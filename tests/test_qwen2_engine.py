"""The numpy Qwen2 engine of the reference worker: cache, sampling, text, errors, faults,
the candle-style position override and the CP3 generation loop (refworker/inference.py)."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from llorch_harness.errors import HarnessError
from llorch_harness.lab.refworker.engine import (
    QWEN_EOS_TOKEN_ID,
    BroadcastError,
    ContextOverflowError,
    Engine,
    GenerationParams,
    ModelLoadError,
    _Detokenizer,
)
from llorch_harness.lab.refworker.faults import parse_faults
from llorch_harness.lab.refworker.inference import (
    FORWARD_FAILED,
    CandledBackend,
    InferenceFailed,
    SamplingConfig,
)
from llorch_harness.lab.refworker.logs import JsonLogger
from llorch_harness.lab.refworker.qwen2 import CandleError, bf16_bits_to_f32
from llorch_harness.lab.refworker.sampling import (
    apply_repetition_penalty,
    make_rng,
    select_token,
)
from llorch_harness.lab.tinymodel import build_tiny_model, export_variant

PROMPT = "Hello, how are you?"
GREEDY = GenerationParams(max_tokens=32, temperature=0.0)
# the contract's candle text, e.g. "cannot broadcast [5, 5] to [1, 14, 5, 10]"
BROADCAST_RE = re.compile(r"cannot broadcast \[(\d+), \1\] to \[1, (\d+), \1, (\d+)\]")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "tiny-qwen"
    build_tiny_model(out, seed=0)
    return out


@pytest.fixture
def engine(tiny: Path) -> Engine:
    return Engine.load(tiny)


# -- loading ------------------------------------------------------------------------------


def test_load_dir_and_single_file(tiny: Path) -> None:
    e1 = Engine.load(tiny)
    e2 = Engine.load(tiny / "model.safetensors")
    assert e1.model_name == "tiny-qwen" == e2.model_name
    assert e1.max_context == 512 and e1.vocab_size >= 512
    assert e1.eos_token_ids == frozenset({e1.tokenizer.token_to_id("<|endoftext|>")})
    ids = e1.encode(PROMPT)
    np.testing.assert_array_equal(e1.forward_logits(ids), e2.forward_logits(ids))


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json", "model.safetensors"])
def test_missing_file_names_it(tiny: Path, tmp_path: Path, missing: str) -> None:
    d = shutil.copytree(tiny, tmp_path / "m")
    (d / missing).unlink()
    with pytest.raises(ModelLoadError) as info:
        Engine.load(d)
    assert missing in str(info.value) or "*.safetensors" in str(info.value)
    assert isinstance(info.value, HarnessError)


def test_sentencepiece_alone_is_refused(tiny: Path, tmp_path: Path) -> None:
    d = shutil.copytree(tiny, tmp_path / "m")
    (d / "tokenizer.json").unlink()
    (d / "tokenizer.model").write_bytes(b"\x00sentencepiece")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json.*tokenizer\.model"):
        Engine.load(d)


def test_bad_inputs_are_load_errors(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        Engine.load(tmp_path / "nope")
    d = shutil.copytree(tiny, tmp_path / "m")
    with pytest.raises(ModelLoadError, match="not a .safetensors"):
        Engine.load(d / "config.json")
    cfg = json.loads((d / "config.json").read_text())
    for other in ("gemma", "phi"):  # "phi" is candle's Phi-1/2, not Phi-3
        (d / "config.json").write_text(json.dumps({**cfg, "model_type": other}))
        with pytest.raises(ModelLoadError, match=f"unsupported architecture '{other}' "
                           r"\(the reference worker runs qwen2, llama, mistral, phi3\)"):
            Engine.load(d)
    del cfg["rope_theta"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="config.json: missing key.*rope_theta"):
        Engine.load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json: cannot parse"):
        Engine.load(d)


def test_truncated_weights_name_the_file(tiny: Path, tmp_path: Path) -> None:
    d = shutil.copytree(tiny, tmp_path / "m")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        Engine.load(d)


@pytest.mark.parametrize(("dtype", "shards", "tol"), [("F16", 1, 2e-2), ("BF16", 2, 1.5e-1)])
def test_half_precision_and_shards_load(
    tiny: Path, tmp_path: Path, dtype: str, shards: int, tol: float
) -> None:
    ref = Engine.load(tiny)
    export_variant(tiny, tmp_path / "v", dtype=dtype, shards=shards)
    other = Engine.load(tmp_path / "v")
    ids = ref.encode(PROMPT * 3)
    a, b = ref.forward_logits(ids), other.forward_logits(ids)
    assert np.abs(a - b).max() <= tol * max(1.0, float(np.abs(a).max()))


def test_bf16_conversion_is_exact_for_representable_values() -> None:
    values = np.array([0.0, 1.0, -2.5, 3.140625, 65280.0], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(bf16_bits_to_f32(bits), values)


# -- forward pass and cache ---------------------------------------------------------------


def test_kv_cache_decode_equals_full_recompute(engine: Engine) -> None:
    ids = engine.encode("The train leaves at seven o'clock.")
    result = engine.generate("The train leaves at seven o'clock.", GREEDY)
    seq = ids + result.token_ids
    full = engine.forward_logits(seq)
    cache = engine.model.new_cache(4)  # small on purpose: exercises growth
    step_logits = [engine.model.forward(ids, cache, all_logits=True)]
    for tok in result.token_ids[:-1]:
        step_logits.append(engine.model.forward([tok], cache))
    incremental = np.concatenate(step_logits)
    assert incremental.shape == (len(seq) - 1, engine.vocab_size)
    tol = 1e-4 * max(1.0, float(np.abs(full).max()))
    assert np.abs(incremental - full[:-1]).max() <= tol
    # and greedy picks are the argmax of the recomputed rows
    assert list(full[len(ids) - 1 : -1].argmax(axis=-1)) == result.token_ids


def test_fresh_cache_per_request(engine: Engine) -> None:
    first = engine.generate(PROMPT, GREEDY)
    engine.generate("Some other prompt that is longer than the first one.", GREEDY)
    assert engine.generate(PROMPT, GREEDY).token_ids == first.token_ids


def test_context_overflow(engine: Engine) -> None:
    long_prompt = "one two three four five six seven eight nine ten " * 60
    assert len(engine.encode(long_prompt)) >= engine.max_context
    with pytest.raises(ContextOverflowError):
        engine.generate(long_prompt, GREEDY)


def test_context_fills_during_decode_ends_as_max_tokens(engine: Engine) -> None:
    words = "one two three four five six seven eight nine ten "
    prompt = words * 30
    n = len(engine.encode(prompt))
    while n < engine.max_context - 5:
        prompt += "one "
        n = len(engine.encode(prompt))
    result = engine.generate(prompt, GenerationParams(max_tokens=100, temperature=0.0))
    assert result.stop_reason in ("max_tokens", "eos")
    assert result.prompt_tokens + len(result.token_ids) <= engine.max_context + 1


# -- sampling -----------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible_and_seed_dependent(engine: Engine) -> None:
    params = GenerationParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=7)
    a = engine.generate(PROMPT, params)
    b = engine.generate(PROMPT, params)
    assert a.token_ids == b.token_ids
    outs = {
        tuple(engine.generate(PROMPT, GenerationParams(max_tokens=24, seed=s)).token_ids)
        for s in range(5)
    }
    assert len(outs) > 1


def test_top_k_one_is_greedy(engine: Engine) -> None:
    greedy = engine.generate(PROMPT, GREEDY)
    topk = engine.generate(PROMPT, GenerationParams(max_tokens=32, temperature=1.5, top_k=1))
    assert topk.token_ids == greedy.token_ids


def test_select_token_rules() -> None:
    logits = np.array([1.0, 3.0, 3.0, -1.0], dtype=np.float32)
    assert select_token(logits, temperature=0.0) == 1  # tie -> lowest id
    rng = make_rng(0)
    for _ in range(20):
        assert select_token(logits, temperature=1.0, top_p=0.01, rng=rng) in (1, 2)
        assert select_token(logits, temperature=1.0, min_p=0.5, rng=rng) in (1, 2)
        assert select_token(logits, temperature=1.0, top_k=2, rng=rng) in (1, 2)
    penalised = apply_repetition_penalty(logits.astype(np.float64), [1, 3], 2.0)
    np.testing.assert_allclose(penalised, [1.0, 1.5, 3.0, -2.0])
    assert select_token(logits, temperature=0.0, repetition_penalty=2.0, seen=[1]) == 2
    with pytest.raises(ValueError):
        select_token(logits, temperature=1.0)


def test_repetition_penalty_changes_greedy_output(engine: Engine) -> None:
    plain = engine.generate(PROMPT, GREEDY)
    penal = engine.generate(
        PROMPT, GenerationParams(max_tokens=32, temperature=0.0, repetition_penalty=1.8)
    )
    assert penal.token_ids != plain.token_ids
    assert len(set(penal.token_ids)) >= len(set(plain.token_ids))


# -- text, stop, eos ----------------------------------------------------------------------


def test_pieces_join_to_decoded_text(engine: Engine) -> None:
    for params in [GREEDY, GenerationParams(max_tokens=64, temperature=2.0, seed=3)]:
        result = engine.generate(PROMPT, params)
        assert len(result.pieces) == len(result.token_ids)
        assert "".join(result.pieces) == engine.tokenizer.decode(result.token_ids)


def test_detokenizer_never_splits_a_character(engine: Engine) -> None:
    text = "naïve café: 世界 🙂 ok"
    ids = engine.encode(text)
    detok = _Detokenizer(engine.tokenizer)
    pieces = [detok.push(i) for i in ids]
    pieces[-1] += detok.flush()
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # multi-byte chars span several byte tokens


def test_stop_string(engine: Engine) -> None:
    full = engine.generate(PROMPT, GREEDY)
    k = next(i for i in range(8, 32) if len(full.pieces[i].strip()) >= 2)
    stop = full.pieces[k].strip()
    first = full.text.find(stop)
    result = engine.generate(
        PROMPT, GenerationParams(max_tokens=32, temperature=0.0, stop=("never-there", stop))
    )
    assert result.stop_reason == "stop_sequence"
    assert result.stop_sequence_matched == stop
    assert result.token_ids == full.token_ids[: len(result.token_ids)]
    assert stop in result.text and stop not in "".join(result.pieces[:-1])
    assert result.text.find(stop) == first


def test_eos_stops_and_is_not_emitted(engine: Engine) -> None:
    full = engine.generate(PROMPT, GREEDY)
    engine.eos_token_ids = frozenset({full.token_ids[5]})
    result = engine.generate(PROMPT, GREEDY)
    assert result.stop_reason == "eos"
    assert result.token_ids == full.token_ids[: full.token_ids.index(full.token_ids[5])]
    assert result.stop_sequence_matched is None


def test_max_tokens_and_timings(engine: Engine) -> None:
    result = engine.generate(PROMPT, GenerationParams(max_tokens=5, temperature=0.0))
    assert result.stop_reason == "max_tokens" and len(result.token_ids) == 5
    assert result.prompt_tokens == len(engine.encode(PROMPT))
    assert result.prefill_seconds >= 0.0 and result.decode_seconds >= 0.0


# -- the cache-pollution fault hook -------------------------------------------------------


def test_reuse_cache_with_other_prompt_length_raises_candle_text(engine: Engine) -> None:
    engine.generate("Hello", GenerationParams(max_tokens=1, temperature=0.0))  # warm-up
    n = len(engine.encode(PROMPT))
    with pytest.raises(BroadcastError) as info:
        engine.generate(PROMPT, GREEDY, reuse_cache=True)
    m = BROADCAST_RE.fullmatch(str(info.value))
    assert m is not None, str(info.value)
    assert int(m.group(1)) == n and int(m.group(2)) == 4 and int(m.group(3)) > n


def test_warm_up_pollutes_only_the_reuse_path(engine: Engine) -> None:
    fresh = engine.generate(PROMPT, GREEDY)
    engine.warm_up("Hello")
    with pytest.raises(BroadcastError, match=BROADCAST_RE):
        engine.generate(PROMPT, GREEDY, reuse_cache=True)
    engine.warm_up("Hello")
    assert engine.generate(PROMPT, GREEDY).token_ids == fresh.token_ids
    engine.warm_up("Hello")
    drifted = engine.generate("Hello", GREEDY, reuse_cache=True)  # same length: no error
    assert drifted.token_ids != engine.generate("Hello", GREEDY).token_ids


def test_index_with_path_in_shard_name_is_refused(tiny: Path, tmp_path: Path) -> None:
    d = shutil.copytree(tiny, tmp_path / "m")
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "../model.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="not a plain file name"):
        Engine.load(d)


def test_reuse_cache_with_same_length_drifts(engine: Engine) -> None:
    fresh = engine.generate(PROMPT, GREEDY)
    polluted = engine.generate(PROMPT, GREEDY, reuse_cache=True)
    assert polluted.token_ids != fresh.token_ids
    # the default path is unaffected afterwards
    assert engine.generate(PROMPT, GREEDY).token_ids == fresh.token_ids


def test_reuse_cache_without_previous_request_is_fresh(tiny: Path) -> None:
    engine = Engine.load(tiny)
    assert (
        engine.generate(PROMPT, GREEDY, reuse_cache=True).token_ids
        == engine.generate(PROMPT, GREEDY).token_ids
    )


# -- candle's forward(input, seqlen_offset): the position override ----------------------


def test_explicit_position_at_cache_end_is_the_default_path(engine: Engine) -> None:
    ids = engine.encode(PROMPT)
    a, b = engine.model.new_cache(), engine.model.new_cache()
    la = [engine.model.forward(ids, a, all_logits=True), engine.model.forward([ids[0]], a)]
    lb = [engine.model.forward(ids, b, all_logits=True, position=0),
          engine.model.forward([ids[0]], b, position=len(ids))]
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.lengths == b.lengths == [len(ids) + 1] * engine.config.num_hidden_layers


def test_prompt_at_zero_on_a_filled_cache_fails_after_layer_0_appends(engine: Engine) -> None:
    cache = engine.model.new_cache()
    engine.model.forward(engine.encode("Hello"), cache, position=0)
    n_warm = cache.length
    ids = engine.encode(PROMPT)
    for attempt in (1, 2):  # the failure repeats: layer 0 keeps growing
        with pytest.raises(CandleError) as info:
            engine.model.forward(ids, cache, position=0)
        heads = engine.config.num_attention_heads
        m = len(ids)
        total = n_warm + attempt * m
        assert str(info.value) == (f"shape mismatch in broadcast_add, lhs: [1, {heads}, {m}, "
                                   f"{total}], rhs: [1, 1, {m}, {m}]")
        assert cache.lengths == [total, n_warm]


def test_single_token_runs_on_a_polluted_cache_and_differs(engine: Engine) -> None:
    tok = engine.encode("Hello")[:1]
    fresh = engine.model.forward(tok, engine.model.new_cache(), position=0)
    cache = engine.model.new_cache()
    engine.model.forward(engine.encode(PROMPT), cache, position=0)
    polluted = engine.model.forward(tok, cache, position=0)
    assert not np.array_equal(fresh, polluted)


def test_position_beyond_the_context_is_a_candle_error(engine: Engine) -> None:
    with pytest.raises(CandleError, match="narrow"):
        engine.model.forward([1, 2], engine.model.new_cache(), position=engine.max_context - 1)


def test_decode_position_override_changes_logits(engine: Engine) -> None:
    ids = engine.encode(PROMPT)
    a, b = engine.model.new_cache(), engine.model.new_cache()
    engine.model.forward(ids, a, position=0)
    engine.model.forward(ids, b, position=0)
    right = engine.model.forward([ids[-1]], a, position=len(ids))
    wrong = engine.model.forward([ids[-1]], b, position=1)
    assert not np.array_equal(right, wrong)
    assert a.lengths == b.lengths  # keys are appended at the end either way


# -- the CP3 generation loop (refworker/inference.py) -------------------------------------


def backend_for(engine: Engine, faults: str = "") -> tuple[CandledBackend, io.StringIO]:
    out = io.StringIO()
    return CandledBackend(engine, JsonLogger(out), parse_faults(faults)), out


def records(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def cfg(max_tokens: int = 24, **kw: object) -> SamplingConfig:
    return SamplingConfig(max_tokens=max_tokens, temperature=0.0, **kw)  # type: ignore[arg-type]


def test_candled_eos_is_one_id(engine: Engine, tiny: Path, tmp_path: Path) -> None:
    assert engine.candled_eos_id == QWEN_EOS_TOKEN_ID == 151643  # no "</s>" in the tokenizer
    assert engine.candled_eos_id not in engine.eos_token_ids
    d = shutil.copytree(tiny, tmp_path / "m")
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.add_special_tokens(["</s>"])
    tok.save(str(d / "tokenizer.json"))
    with_s = Engine.load(d)
    assert with_s.candled_eos_id == with_s.tokenizer.token_to_id("</s>")


def test_healthy_loop_matches_the_engine_and_cuts_pieces(engine: Engine) -> None:
    backend, out = backend_for(engine)
    res = backend.execute(PROMPT, cfg(32))
    legacy = engine.generate(PROMPT, GenerationParams(max_tokens=32, temperature=0.0))
    assert res.token_ids[: len(legacy.token_ids)] == legacy.token_ids
    assert "".join(res.pieces) == engine.tokenizer.decode(res.token_ids)
    assert len(res.pieces) <= len(res.token_ids)
    assert res.prompt_tokens == len(engine.encode(PROMPT))
    again = backend.execute(PROMPT, cfg(32))
    assert again.token_ids == res.token_ids  # the cache really is reset


def test_loop_logs_as_inference_rs(engine: Engine) -> None:
    backend, out = backend_for(engine)
    res = backend.execute(PROMPT, cfg(20))
    recs = records(out)
    narr = [(r["fields"]["actor"], r["fields"]["action"]) for r in recs
            if "message" not in r["fields"]]
    assert narr == [("candle-backend", "inference_start"), ("tokenizer", "tokenize"),
                    ("candle-backend", "cache_reset"), ("candle-backend", "token_generate"),
                    ("candle-backend", "token_generate"), ("candle-backend", "inference_complete")]
    assert recs[0]["fields"]["human"] == (
        f"Starting inference (prompt: {len(PROMPT)} chars, max_tokens: 20, temp: 0)")
    assert recs[2]["fields"]["human"] == "Reset KV cache before inference to clear warmup pollution"
    done = next(r for r in recs if r["fields"].get("message") == "Inference completed")
    assert list(done["fields"]) == ["message", "tokens_generated", "duration_ms", "tokens_per_sec"]
    assert done["fields"]["tokens_generated"] == len(res.token_ids) == 20
    assert done["fields"]["duration_ms"] == res.decode_time_ms
    assert isinstance(done["fields"]["tokens_per_sec"], int)
    assert not any(r["level"] == "WARN" for r in recs)


def test_eos_stops_and_is_neither_sent_nor_counted(engine: Engine) -> None:
    backend, _ = backend_for(engine)
    full = backend.execute(PROMPT, cfg(24))
    backend.eos_id = full.token_ids[5]
    cut = backend.execute(PROMPT, cfg(24))
    first = full.token_ids.index(full.token_ids[5])
    assert cut.token_ids == full.token_ids[:first]
    assert "".join(cut.pieces) == engine.tokenizer.decode(cut.token_ids)


def test_stop_min_p_and_repetition_penalty_have_no_effect(engine: Engine) -> None:
    backend, _ = backend_for(engine)
    plain = backend.execute(PROMPT, SamplingConfig(max_tokens=16, temperature=0.9, seed=3))
    knobs = backend.execute(PROMPT, SamplingConfig(
        max_tokens=16, temperature=0.9, seed=3, stop_strings=(plain.pieces[1],), min_p=0.9,
        repetition_penalty=2.0))
    assert knobs.token_ids == plain.token_ids and len(plain.token_ids) == 16


def test_forward_failure_text_hides_candle(engine: Engine) -> None:
    backend, out = backend_for(engine)
    long_prompt = "one two three four five six seven eight nine ten " * 60
    with pytest.raises(InferenceFailed) as info:
        backend.execute(long_prompt, cfg(4))
    assert str(info.value) == FORWARD_FAILED == "Forward pass failed: Qwen forward pass failed"
    assert isinstance(info.value.__cause__, CandleError)
    assert "narrow" not in out.getvalue() and "Inference completed" not in out.getvalue()


def test_qwen_cache_bug_fails_every_multi_token_prompt_after_the_first(engine: Engine) -> None:
    backend, out = backend_for(engine, "qwen_cache_bug")
    first = backend.execute(PROMPT, cfg(8))
    healthy, _ = backend_for(engine)
    assert first.token_ids == healthy.execute(PROMPT, cfg(8)).token_ids
    for _ in range(2):
        with pytest.raises(InferenceFailed) as info:
            backend.execute(PROMPT, cfg(8))
        assert str(info.value) == FORWARD_FAILED
        assert "broadcast_add" in str(info.value.__cause__)
    lengths = backend.cache.lengths
    assert lengths[0] > lengths[1]  # layer 0 appended before each failing add
    one = engine.encode("Hello")[:1]
    single = backend.execute(engine.tokenizer.decode(one), cfg(8))  # runs, on the polluted cache
    assert single.token_ids != healthy.execute(engine.tokenizer.decode(one), cfg(8)).token_ids
    text = out.getvalue()
    assert text.count('"Cache reset not implemented for Qwen"') == 4
    assert text.count("Reset KV cache before inference") == 4
    assert "broadcast_add" not in text and "shape mismatch" not in text


def test_qwen_cache_bug_after_warmup_fails_from_the_first_request(engine: Engine) -> None:
    backend, out = backend_for(engine, "qwen_cache_bug")
    assert backend.warmup() == len(engine.encode("Hello"))
    with pytest.raises(InferenceFailed, match="^Forward pass failed: Qwen forward pass failed$"):
        backend.execute(PROMPT, cfg(4))
    msgs = [r["fields"].get("message") for r in records(out)]
    assert msgs[:2] == ["Starting GPU warmup...", None]
    assert "GPU warmup complete (cache will be reset before inference)" in msgs
    healthy, _ = backend_for(engine)
    healthy.warmup()
    assert healthy.execute(PROMPT, cfg(4)).token_ids  # a real reset clears the warm-up


def test_decode_positions_bug_is_deterministic_but_wrong(engine: Engine) -> None:
    healthy, _ = backend_for(engine)
    buggy, _ = backend_for(engine, "decode_positions")
    right = healthy.execute(PROMPT, cfg(24)).token_ids
    wrong = [buggy.execute(PROMPT, cfg(24)).token_ids for _ in range(2)]
    assert wrong[0] == wrong[1]
    assert wrong[0][0] == right[0]  # the prompt pass is the same ...
    assert wrong[0] != right  # ... the decode steps are not
    one = engine.tokenizer.decode(engine.encode("Hello")[:1])
    assert buggy.execute(one, cfg(12)).token_ids == healthy.execute(one, cfg(12)).token_ids
