"""The embedded tiny Qwen2 model: reproducible bytes, contract-shaped files, varied output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from llorch_harness.checks.inference_checks import GATE_PROMPTS
from llorch_harness.errors import HarnessError
from llorch_harness.lab import qwen_vocab
from llorch_harness.lab.refworker.engine import Engine, GenerationParams
from llorch_harness.lab.refworker.qwen2 import REQUIRED_CONFIG_KEYS, read_safetensors
from llorch_harness.lab.tinymodel import (
    ARCHITECTURES,
    EMBEDDED_VOCAB,
    SPECIAL_TOKENS,
    TINY_QWEN_REPO,
    VOCABS,
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
    code = "import sys; from pathlib import Path; from llorch_harness.lab.tinymodel import "
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


# -- the Qwen2.5 vocabulary (`tiny-model build` and the embedded gate) ----------------------

# The gate's greedy prompts: inference_checks.GATE_PROMPTS and tests_hw/test_qwen_inference.py's
# LONG (copied: tests_hw is the gate, not importable from here).
GATE_LONG = ("Write a short story about a lighthouse keeper who finds a message in a bottle. "
             "The keeper lives alone on a rocky island, far from the mainland, and the bottle "
             "arrives on a stormy night in late autumn.")
GATE_MAX_TOKENS = 20


@pytest.fixture(scope="module")
def qwen_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qwen") / "tiny-qwen"
    build_tiny_model(out, seed=0, vocab="qwen2.5")
    return out


def _greedy(engine: Engine, prompt: str, n: int) -> list[int]:
    """Greedy ids by argmax over the engine's logits (independent of generate()'s rules)."""
    ids = engine.encode(prompt)
    model = engine.model
    if hasattr(model, "new_cache") and hasattr(model, "forward"):
        cache = model.new_cache(len(ids) + n)
        logits = model.forward(ids, cache)[-1]
        out: list[int] = []
        for _ in range(n):
            out.append(int(logits.argmax()))
            logits = model.forward([out[-1]], cache)[-1]
        return out
    out = []
    for _ in range(n):
        out.append(int(engine.forward_logits(ids + out)[-1].argmax()))
    return out


def test_qwen_is_the_default_of_the_cli_and_the_gate() -> None:
    from llorch_harness.cli import harness_main
    from llorch_harness.cli.harness_main import build_parser, tiny_vocab

    assert EMBEDDED_VOCAB == "qwen2.5" and set(VOCABS) == {"qwen2.5", "corpus"}
    # the CLI keeps its own copies (it does not import numpy): they must not drift
    assert (harness_main.VOCABS, harness_main.ARCHITECTURES) == (VOCABS, ARCHITECTURES)
    args = build_parser().parse_args(["tiny-model", "build", "d"])
    assert (args.architecture, tiny_vocab(args)) == ("qwen2", "qwen2.5")
    for extra, vocab in [(["--vocab", "corpus"], "corpus"), (["--architecture", "llama"],
                                                             "corpus")]:
        assert tiny_vocab(build_parser().parse_args(["tiny-model", "build", "d", *extra])) \
            == vocab


def test_qwen_files_size_config_and_published_tokenizer_files(qwen_tiny: Path) -> None:
    files = sorted(qwen_tiny.iterdir())
    assert [f.name for f in files] == EXPECTED_FILES
    assert sum(f.stat().st_size for f in files) < 20_000_000
    cfg = json.loads((qwen_tiny / "config.json").read_text())
    for key in REQUIRED_CONFIG_KEYS:
        assert key in cfg, key
    assert cfg["vocab_size"] == 151_936 and cfg["torch_dtype"] == "bfloat16"
    assert cfg["bos_token_id"] == 151_643 and cfg["eos_token_id"] == 151_645
    assert cfg["tie_word_embeddings"] is True and cfg["model_type"] == "qwen2"
    assert cfg["hidden_size"] == 32
    header_len = int.from_bytes((qwen_tiny / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((qwen_tiny / "model.safetensors").read_bytes()[8 : 8 + header_len])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    assert header["model.embed_tokens.weight"]["shape"] == [151_936, 32]
    assert "lm_head.weight" not in header
    assert (qwen_tiny / "tokenizer.json").read_text(encoding="utf-8") \
        == qwen_vocab.qwen_tokenizer_json()
    assert (qwen_tiny / "tokenizer_config.json").read_text(encoding="utf-8") \
        == qwen_vocab.tokenizer_config_json_text()
    gen = json.loads((qwen_tiny / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151_645, 151_643] and gen["pad_token_id"] == 151_643
    tok = Tokenizer.from_file(str(qwen_tiny / "tokenizer.json"))
    assert tok.encode("Hello, how are you?").ids == [9707, 11, 1246, 525, 498, 30]
    assert tok.token_to_id("<|im_end|>") == 151_645


def test_qwen_same_seed_is_byte_identical_even_in_another_process(
    qwen_tiny: Path, tmp_path: Path
) -> None:
    build_tiny_model(tmp_path / "again", seed=0, vocab="qwen2.5")
    assert _contents(tmp_path / "again") == _contents(qwen_tiny)
    code = "import sys; from pathlib import Path; from llorch_harness.lab.tinymodel import "
    code += "build_tiny_model; build_tiny_model(Path(sys.argv[1]), seed=0, vocab='qwen2.5')"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "proc")], check=True, timeout=300)
    assert _contents(tmp_path / "proc") == _contents(qwen_tiny)


def test_qwen_other_seed_changes_weights_only(qwen_tiny: Path, tmp_path: Path) -> None:
    build_tiny_model(tmp_path / "s1", seed=1, vocab="qwen2.5")
    a, b = _contents(qwen_tiny), _contents(tmp_path / "s1")
    assert a["model.safetensors"] != b["model.safetensors"]
    assert {k: v for k, v in a.items() if k != "model.safetensors"} == {
        k: v for k, v in b.items() if k != "model.safetensors"
    }


def test_unknown_vocab_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="unknown vocabulary") as info:
        build_tiny_model(tmp_path / "m", vocab="gpt2")
    assert info.value.exit_code == 2
    assert not (tmp_path / "m").exists()


def test_qwen_greedy_output_meets_real_pieces(qwen_tiny: Path) -> None:
    """Each gate prompt's greedy output is varied and prompt-dependent; together they hold
    the pieces the wire checks must handle: words after a space, punctuation, a character
    split across two tokens, and a special token that decodes to nothing."""
    engine = Engine.load(qwen_tiny)
    tok = engine.tokenizer
    prompts = [*GATE_PROMPTS.values(), GATE_LONG]
    outs = [_greedy(engine, p, GATE_MAX_TOKENS) for p in prompts]
    for out in outs:
        assert len(set(out)) >= 10, [tok.id_to_token(i) for i in out]
        assert not {151_643, 128_247} & set(out)  # the worker's EOS ids: no early stop
    assert len({tuple(o) for o in outs}) == len(outs)
    every = [i for out in outs for i in out]
    texts = [tok.decode([i], skip_special_tokens=True) for i in every]
    assert any(t.startswith(" ") and t[1:].isalpha() for t in texts)
    assert any(t and all(c in ".,!?;:'\"()-" for c in t.strip()) and t.strip() for t in texts)
    assert 151_644 in every and tok.decode([151_644], skip_special_tokens=True) == ""
    split = [(a, b) for out in outs for a, b in zip(out, out[1:], strict=False)
             if "\ufffd" in tok.decode([a]) and "\ufffd" in tok.decode([b])
             and len(tok.decode([a, b])) == 1 and "\ufffd" not in tok.decode([a, b])]
    assert split, "no character split across two tokens"
    long_out = _greedy(engine, GATE_LONG, 32)
    assert len(set(long_out)) >= 16
