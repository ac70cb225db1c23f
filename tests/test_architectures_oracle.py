"""Oracle for CP4's architectures: the numpy engine computes what transformers computes.

As test_oracle_transformers.py does for Qwen2: transformers' ``LlamaForCausalLM``,
``MistralForCausalLM`` and ``Phi3ForCausalLM`` (float32, CPU, eager attention) load each
tiny model and its tokenizer; logits agree within the same tolerance, greedy tokens are
identical (transformers' ``generate`` uses its KV cache, the engine its own), for the
bf16 files as built, f16/f32 copies and sharded ones, and with a sliding window shorter
than the prompt (Mistral and Phi-3), where the window matters in prefill and in decode.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_REASON = "oracle needs the 'oracle' extra: pip install -e .[oracle]"
torch = pytest.importorskip("torch", reason=_REASON)
transformers = pytest.importorskip("transformers", reason=_REASON)

from llorch_harness.lab.refworker.engine import Engine, GenerationParams  # noqa: E402
from llorch_harness.lab.tinymodel import build_tiny_model, corpus_text, export_variant  # noqa: E402
from tests.test_oracle_transformers import _assert_close, _hf_logits  # noqa: E402  (one tolerance)

ARCHS = ("llama", "phi3", "mistral")
HF_CLASS = {"llama": "LlamaForCausalLM", "phi3": "Phi3ForCausalLM",
            "mistral": "MistralForCausalLM"}
SHORT = "Hello, how are you?"
TEXTS = [SHORT, "naïve café 世界 🙂\n\ttabs  and   spaces", "x = [1, 22, 333]  # comment\r\n",
         "The weather is sunny today."]
SPECIAL_TEXT = "Hi</s> <s>again"
CHAT = {  # the real models' templates, rendered for one user message "Hi"
    "llama": "<|user|>\nHi</s>\n<|assistant|>\n",
    "mistral": "<s>[INST] Hi [/INST]",
    "phi3": "<|user|>\nHi<|end|>\n<|assistant|>\n",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("oracle-archs")
    for arch in ARCHS:
        build_tiny_model(root / arch, seed=0, architecture=arch)
    return {arch: root / arch for arch in ARCHS}


@pytest.fixture(scope="module")
def long_prompt() -> str:
    """About 150 words of the corpus: well past a small sliding window."""
    return " ".join(corpus_text().split()[:150])


def _hf(model_dir: Path) -> Any:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, local_files_only=True, attn_implementation="eager")
    return model.eval()




def _hf_greedy(model: Any, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids], dtype=torch.long),
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=n, min_new_tokens=n,
                             pad_token_id=0)
    return list(out[0, len(ids):].tolist())


def _windowed(src: Path, dst: Path, window: int) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["sliding_window"] = window
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_loads_model_and_tokenizer(models: dict[str, Path], arch: str) -> None:
    model = _hf(models[arch])
    assert type(model).__name__ == HF_CLASS[arch]
    engine = Engine.load(models[arch])
    assert model.config.vocab_size == engine.vocab_size
    tok = transformers.AutoTokenizer.from_pretrained(models[arch], local_files_only=True)
    assert tok.bos_token == "<s>" and tok.bos_token_id == 1
    assert tok.eos_token == ("<|endoftext|>" if arch == "phi3" else "</s>")
    for text in TEXTS:
        assert tok(text)["input_ids"] == engine.encode(text), text
    # transformers 5's LlamaTokenizer builds its own pipeline (no "▁" after a special token)
    # instead of tokenizer.json's, which the worker reads (as it would TinyLlama's own file)
    same = tok(SPECIAL_TEXT)["input_ids"] == engine.encode(SPECIAL_TEXT)
    assert same is (arch != "llama")
    rendered = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                       add_generation_prompt=True)
    assert rendered == CHAT[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_greedy_tokens_match(models: dict[str, Path], long_prompt: str,
                                        arch: str) -> None:
    model, engine = _hf(models[arch]), Engine.load(models[arch])
    for prompt in (SHORT, long_prompt):
        ids = engine.encode(prompt)
        _assert_close(engine.forward_logits(ids), _hf_logits(model, ids))
        ours = engine.generate(prompt, GenerationParams(max_tokens=32, temperature=0.0))
        assert ours.stop_reason == "max_tokens"
        assert ours.token_ids == _hf_greedy(model, ids, 32)
        assert len(set(ours.token_ids)) >= 16


@pytest.mark.parametrize(("arch", "window"), [("mistral", 4), ("mistral", 8), ("phi3", 6)])
def test_sliding_window_matches_with_and_without_cache(
    models: dict[str, Path], tmp_path: Path, long_prompt: str, arch: str, window: int
) -> None:
    d = _windowed(models[arch], tmp_path / "w", window)
    model, engine = _hf(d), Engine.load(d)
    ids = engine.encode(long_prompt)
    assert len(ids) > 10 * window
    _assert_close(engine.forward_logits(ids), _hf_logits(model, ids))
    ours = engine.generate(long_prompt, GenerationParams(max_tokens=24, temperature=0.0))
    assert ours.token_ids == _hf_greedy(model, ids, 24)  # both decode with their KV cache
    # and the window changed the answer: the unwindowed model disagrees
    plain = Engine.load(models[arch])
    assert not np.allclose(plain.forward_logits(ids)[-1], engine.forward_logits(ids)[-1],
                           atol=1e-2)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("dtype", "shards"), [("F16", 1), ("F32", 2), ("BF16", 2)])
def test_variants_match_transformers(models: dict[str, Path], tmp_path: Path, long_prompt: str,
                                     arch: str, dtype: str, shards: int) -> None:
    d = tmp_path / f"{dtype}-{shards}"
    export_variant(models[arch], d, dtype=dtype, shards=shards)
    ours = Engine.load(d)
    ids = ours.encode(long_prompt)
    _assert_close(ours.forward_logits(ids), _hf_logits(_hf(d), ids))
