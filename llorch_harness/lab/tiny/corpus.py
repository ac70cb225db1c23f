"""The small tiny Qwen2 model: a 768-token byte-level BPE trained on a fixed corpus.

Why: the harness's own worker tests and the download tests want a model that builds in
milliseconds and loads fast (about 0.55 MB, float32, a 512-token context); the embedded
gate uses the Qwen2.5 vocabulary instead (``qwen.py``). ``tiny_config`` is also the base
of the Qwen2.5 build's config.json.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from llorch_harness.lab import qwen_vocab
from llorch_harness.lab.tiny.weights import json_text, tiny_weights, write_repo

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|endoftext|>"
TOKENIZER_VOCAB_TARGET = 768

# Architecture: Qwen2 in miniature (GQA 4 query heads over 2 kv heads, head_dim 16).
HIDDEN_SIZE = 64
INTERMEDIATE_SIZE = 176
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
MAX_POSITIONS = 512

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus_text() -> str:
    """The fixed training text shipped as package data."""
    return (resources.files("llorch_harness") / "data" / "tiny_corpus.txt").read_text(
        encoding="utf-8"
    )


def train_tokenizer(vocab_size: int = TOKENIZER_VOCAB_TARGET) -> Tokenizer:
    """A byte-level BPE like Qwen's (any byte sequence encodes), trained on the corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_text().splitlines(keepends=True), trainer)
    return tok


def tiny_config(vocab_size: int, eos_id: int) -> dict[str, Any]:
    """``config.json`` with every key llorch-candled's Qwen2 loader reads."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "hidden_act": "silu",
        "hidden_size": HIDDEN_SIZE,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE_SIZE,
        "max_position_embeddings": MAX_POSITIONS,
        "max_window_layers": NUM_LAYERS,
        "model_type": "qwen2",
        "num_attention_heads": NUM_HEADS,
        "num_hidden_layers": NUM_LAYERS,
        "num_key_value_heads": NUM_KV_HEADS,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "sliding_window": MAX_POSITIONS,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: the char a ByteLevel token uses per byte."""
    return {ch: b for b, ch in qwen_vocab.bytes_to_unicode().items()}


def fragment_token_ids(tok: Tokenizer) -> list[int]:
    """Ids of single-byte tokens whose byte is not printable ASCII (or space/newline)."""
    table = byte_decoder()
    out = []
    for token, idx in tok.get_vocab(with_added_tokens=False).items():
        if len(token) == 1 and token in table:
            b = table[token]
            if b >= 0x80 or (b < 0x20 and b != 0x0A):
                out.append(idx)
    return sorted(out)


def build_corpus_model(out_dir: Path, seed: int) -> list[Path]:
    """Write the small Qwen2 repo into ``out_dir`` (which exists); return its files."""
    tok = train_tokenizer()
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    eos_id = tok.token_to_id(EOS_TOKEN)
    assert eos_id is not None
    config = tiny_config(vocab_size, eos_id)
    weights = tiny_weights(config, seed, fragment_token_ids(tok))
    files = {
        "config.json": json_text(config),
        "generation_config.json": json_text({
            "bos_token_id": eos_id, "do_sample": False, "eos_token_id": eos_id,
            "max_new_tokens": 64, "pad_token_id": eos_id,
        }),
        "tokenizer.json": tok.to_str(pretty=True) + "\n",
        "tokenizer_config.json": json_text({
            "add_bos_token": False, "add_prefix_space": False, "bos_token": None,
            "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
            "eos_token": EOS_TOKEN, "model_max_length": MAX_POSITIONS, "pad_token": EOS_TOKEN,
            "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": None,
        }),
    }
    return write_repo(out_dir, files, weights)
