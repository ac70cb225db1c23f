"""Oracle: the numpy engine computes what Hugging Face transformers computes.

Why: the harness judges real workers by comparing token streams; the reference worker
is only a fair yardstick if its maths is Qwen2's. transformers' ``Qwen2ForCausalLM``
on CPU in float32 is the independent implementation we check against.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_REASON = "oracle needs the 'oracle' extra: pip install -e .[oracle]"
torch = pytest.importorskip("torch", reason=_REASON)
transformers = pytest.importorskip("transformers", reason=_REASON)

from llorch_harness.lab.refworker.engine import Engine, GenerationParams  # noqa: E402
from llorch_harness.lab.tinymodel import build_tiny_model, corpus_text, export_variant  # noqa: E402

SHORT = "Hello, how are you?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("oracle") / "tiny-qwen"
    build_tiny_model(out, seed=0)
    return out


@pytest.fixture(scope="module")
def engine(tiny: Path) -> Engine:
    return Engine.load(tiny)


@pytest.fixture(scope="module")
def long_prompt(engine: Engine) -> str:
    text = corpus_text()
    words = text.split(" ")
    n = 10
    while len(engine.encode(" ".join(words[:n]))) < 200:
        n += 5
    return " ".join(words[:n])


def _hf(model_dir: Path) -> object:
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, local_files_only=True
    )
    return model.eval()


def _hf_logits(model: object, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.long)).logits[0].float().numpy()


def _assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= tol, f"max |diff| {err} > {tol}"


@pytest.fixture(scope="module")
def hf_model(tiny: Path) -> object:
    return _hf(tiny)


@pytest.mark.parametrize("which", ["short", "long"])
def test_logits_match_transformers(
    engine: Engine, hf_model: object, long_prompt: str, which: str
) -> None:
    prompt = SHORT if which == "short" else long_prompt
    ids = engine.encode(prompt)
    if which == "long":
        assert 200 <= len(ids) <= 300
    _assert_close(engine.forward_logits(ids), _hf_logits(hf_model, ids))


@pytest.mark.parametrize("which", ["short", "long"])
def test_greedy_generation_matches_transformers(
    engine: Engine, hf_model: object, long_prompt: str, which: str
) -> None:
    prompt = SHORT if which == "short" else long_prompt
    ids = engine.encode(prompt)
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([ids], dtype=torch.long),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=32,
            pad_token_id=0,
        )
    hf_new = out[0, len(ids) :].tolist()
    ours = engine.generate(prompt, GenerationParams(max_tokens=32, temperature=0.0))
    eos = sorted(engine.eos_token_ids)
    cut = next((i for i, t in enumerate(hf_new) if t in eos), None)
    if cut is None:
        assert ours.stop_reason == "max_tokens"
        assert ours.token_ids == hf_new
    else:  # HF stops at EOS (and pads); we stop at EOS without emitting it
        assert ours.stop_reason == "eos"
        assert ours.token_ids == hf_new[:cut]
    assert len(ours.token_ids) >= 8, "too short to mean anything"


@pytest.mark.parametrize(("dtype", "shards"), [("BF16", 1), ("F16", 1), ("F32", 2), ("BF16", 2)])
def test_variants_match_transformers(
    tiny: Path, tmp_path: Path, long_prompt: str, dtype: str, shards: int
) -> None:
    d = tmp_path / f"{dtype}-{shards}"
    export_variant(tiny, d, dtype=dtype, shards=shards)
    ours = Engine.load(d)
    ids = ours.encode(long_prompt)
    # transformers upcasts the same half-precision weights to f32: results agree tightly
    _assert_close(ours.forward_logits(ids), _hf_logits(_hf(d), ids))


# -- the Qwen2.5 vocabulary: transformers loads the model and its tokenizer ------------------

QWEN_TEXTS = [
    "Hello, how are you?",
    "Hi",
    "naïve café 世界 🙂 👨‍👩‍👧 ＦＵＬＬ\n\ttabs  and   spaces",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "x = [1, 22, 333]  # comment\r\n",
]


@pytest.fixture(scope="module")
def qwen_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("oracle-qwen") / "tiny-qwen"
    build_tiny_model(out, seed=0, vocab="qwen2.5")
    return out


@pytest.fixture(scope="module")
def qwen_engine(qwen_tiny: Path) -> Engine:
    return Engine.load(qwen_tiny)


def test_qwen_tokenizer_loads_in_transformers(qwen_tiny: Path, qwen_engine: Engine) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(qwen_tiny, local_files_only=True)
    assert len(tok) == 151_665
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 151_645
    assert tok.pad_token_id == 151_643 and tok.bos_token is None
    for text in QWEN_TEXTS:
        assert tok(text)["input_ids"] == qwen_engine.encode(text), text
    msgs = [{"role": "user", "content": SHORT}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nHello, how are you?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen_model_matches_the_reference_worker(qwen_tiny: Path, qwen_engine: Engine) -> None:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        qwen_tiny, dtype=torch.float32, local_files_only=True
    ).eval()
    assert model.config.vocab_size == 151_936
    ids = qwen_engine.encode(SHORT)
    ours = qwen_engine.forward_logits(ids)
    assert ours.shape == (len(ids), 151_936)
    _assert_close(ours, _hf_logits(model, ids))
    # greedy: argmax of both over 16 steps, each fed its own choice
    theirs_ids, ours_ids = list(ids), list(ids)
    for _ in range(16):
        theirs_ids.append(int(_hf_logits(model, theirs_ids)[-1].argmax()))
        ours_ids.append(int(qwen_engine.forward_logits(ours_ids)[-1].argmax()))
    assert ours_ids == theirs_ids
    assert len(set(ours_ids[len(ids):])) >= 8
