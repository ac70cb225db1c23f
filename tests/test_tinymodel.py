"""The embedded tiny Qwen2 model: reproducible bytes, contract-shaped files, varied output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from llorch_harness.refworker.engine import Engine, GenerationParams
from llorch_harness.refworker.qwen2 import REQUIRED_CONFIG_KEYS, read_safetensors
from llorch_harness.tinymodel import (
    SPECIAL_TOKENS,
    TINY_QWEN_REPO,
    build_tiny_model,
    export_variant,
)

EXPECTED_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "tiny-qwen"
    build_tiny_model(out, seed=0)
    return out


def _contents(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_repo_id() -> None:
    assert TINY_QWEN_REPO == "llorch-test/tiny-qwen"


def test_build_returns_the_files_it_wrote(tmp_path: Path) -> None:
    files = build_tiny_model(tmp_path / "m", seed=3)
    assert [f.name for f in files] == EXPECTED_FILES
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == EXPECTED_FILES
    assert sum(f.stat().st_size for f in files) < 2_000_000


def test_same_seed_is_byte_identical_even_in_another_process(tiny: Path, tmp_path: Path) -> None:
    build_tiny_model(tmp_path / "again", seed=0)
    assert _contents(tmp_path / "again") == _contents(tiny)
    # Rust HashMaps (tokenizers, safetensors) are seeded per process: check a fresh one too.
    code = "import sys; from pathlib import Path; from llorch_harness.tinymodel import "
    code += "build_tiny_model; build_tiny_model(Path(sys.argv[1]), seed=0)"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "proc")], check=True, timeout=120)
    assert _contents(tmp_path / "proc") == _contents(tiny)


def test_other_seed_changes_weights_only(tiny: Path, tmp_path: Path) -> None:
    build_tiny_model(tmp_path / "s1", seed=1)
    a, b = _contents(tiny), _contents(tmp_path / "s1")
    assert a["model.safetensors"] != b["model.safetensors"]
    assert {k: v for k, v in a.items() if k != "model.safetensors"} == {
        k: v for k, v in b.items() if k != "model.safetensors"
    }


def test_config_has_every_key_the_worker_reads(tiny: Path) -> None:
    cfg = json.loads((tiny / "config.json").read_text())
    for key in REQUIRED_CONFIG_KEYS:
        assert key in cfg, key
    assert cfg["model_type"] == "qwen2"
    assert cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg["torch_dtype"] == "float32"
    assert cfg["hidden_size"] == 64 and cfg["num_hidden_layers"] == 2
    assert cfg["num_attention_heads"] == 4 and cfg["num_key_value_heads"] == 2
    assert cfg["tie_word_embeddings"] is True and cfg["use_sliding_window"] is False
    assert cfg["hidden_act"] == "silu"
    tok = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    assert cfg["vocab_size"] >= tok.get_vocab_size(with_added_tokens=True)
    assert 512 <= tok.get_vocab_size(with_added_tokens=True) <= 1000
    eos = tok.token_to_id("<|endoftext|>")
    assert cfg["eos_token_id"] == eos
    assert json.loads((tiny / "generation_config.json").read_text())["eos_token_id"] == eos
    assert json.loads((tiny / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"


def test_tensor_names_and_dtype_match_hugging_face_qwen2(tiny: Path) -> None:
    tensors = read_safetensors(tiny / "model.safetensors")
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(2):
        p = f"model.layers.{i}."
        expected |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        expected |= {p + f"self_attn.{x}_proj.{y}" for x in "qkv" for y in ("weight", "bias")}
        expected |= {p + "self_attn.o_proj.weight"}
        expected |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
    assert set(tensors) == expected  # tied: no lm_head.weight
    header_len = int.from_bytes((tiny / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((tiny / "model.safetensors").read_bytes()[8 : 8 + header_len])
    assert header["__metadata__"] == {"format": "pt"}
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F32"}


def test_tokenizer_is_byte_level_bpe_with_specials(tiny: Path) -> None:
    tok = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    for text in ["Hello, how are you?", "naïve café 世界 🙂\n\ttabs", "x" * 50]:
        assert tok.decode(tok.encode(text).ids) == text
    for special in SPECIAL_TOKENS:
        assert tok.encode(special).ids == [tok.token_to_id(special)]
    # trained merges: common words are single tokens, not bytes
    assert len(tok.encode("Hello, how are you?").ids) <= 8


def test_greedy_output_is_varied_and_prompt_dependent(tiny: Path) -> None:
    engine = Engine.load(tiny)
    params = GenerationParams(max_tokens=32, temperature=0.0)
    a = engine.generate("Hello, how are you?", params)
    b = engine.generate("The weather is sunny today.", params)
    assert a.stop_reason == "max_tokens" and len(a.token_ids) == 32
    assert len(set(a.token_ids)) >= 16
    assert a.token_ids != b.token_ids
    assert a.text != b.text


def test_export_variant_bf16_two_shards(tiny: Path, tmp_path: Path) -> None:
    files = export_variant(tiny, tmp_path / "v", dtype="BF16", shards=2)
    names = [f.name for f in files]
    assert "model-00001-of-00002.safetensors" in names
    assert "model-00002-of-00002.safetensors" in names
    index = json.loads((tmp_path / "v" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(read_safetensors(tiny / "model.safetensors"))
    copied = (tmp_path / "v" / "tokenizer.json").read_bytes()
    assert copied == (tiny / "tokenizer.json").read_bytes()
