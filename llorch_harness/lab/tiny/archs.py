"""tiny-llama, tiny-mistral and tiny-phi3: CP4's three new architectures in miniature.

Why: CP4 runs TinyLlama 1.1B Chat, Mistral 7B Instruct v0.2 and Phi-3 Mini 4K Instruct
beside Qwen2.5; the embedded lab and the harness's tests need each architecture's file
layout (config.json keys, tensor names, Phi-3's fused ``qkv_proj``/``gate_up_proj``,
untied LM heads, bf16) and its tokenizer shape (``spm.py``) without a download. Sizes are
tiny (hidden 64, 2 layers); everything else follows the published config.json of each
model: grouped-query attention where the real one has it (TinyLlama 32/4, Mistral 32/8;
Phi-3 none), Mistral v0.2's rope_theta 1e6 and no sliding window, Phi-3's sliding
window 2047 and padded vocabulary, the real bos/eos ids and chat templates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llorch_harness.lab.tiny.spm import FIRST_PIECE_ID, PHI3_ADDED, spm_tokenizer
from llorch_harness.lab.tiny.weights import (
    FRAGMENT_EMBED_SCALE,
    json_text,
    tiny_weights,
    write_repo,
)

SPM_ARCHITECTURES: tuple[str, ...] = ("llama", "phi3", "mistral")
HIDDEN_SIZE = 64
INTERMEDIATE_SIZE = 176
NUM_LAYERS = 2
NUM_HEADS = 4
# Greedy decoding picks LM-head rows with large norms: <unk>, <s>, </s> (the worker's EOS),
# Phi-3's chat tokens and the padding rows stay tiny so greedy runs never stop early;
# byte tokens are shrunk so that output reads mostly as words (sampling reaches them all).
SPECIAL_ROW_SCALE = 0.02

LLAMA_CHAT_TEMPLATE = (  # TinyLlama-1.1B-Chat-v1.0's (Zephyr style)
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + "
    "message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and "
    "add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
MISTRAL_CHAT_TEMPLATE = (  # Mistral-7B-Instruct-v0.2's
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only "
    "user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
PHI3_CHAT_TEMPLATE = (  # Phi-3-mini-4k-instruct's
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + "
    "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == "
    "'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}"
    "{{ eos_token }}{% endif %}"
)


def _ids(architecture: str, n_tokens: int) -> dict[str, Any]:
    """bos/eos/pad ids as the real model publishes them (Phi-3's relative to its tokens)."""
    if architecture != "phi3":
        return {"bos_token_id": 1, "eos_token_id": 2}
    base = n_tokens - len(PHI3_ADDED)
    endoftext = base + PHI3_ADDED.index("<|endoftext|>")
    return {"bos_token_id": 1, "eos_token_id": endoftext, "pad_token_id": endoftext}


def spm_config(architecture: str, n_tokens: int) -> dict[str, Any]:
    """config.json of ``tiny-<architecture>`` for a tokenizer of ``n_tokens``."""
    cfg: dict[str, Any] = {
        "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": HIDDEN_SIZE,
        "initializer_range": 0.02, "intermediate_size": INTERMEDIATE_SIZE,
        "model_type": architecture, "num_attention_heads": NUM_HEADS,
        "num_hidden_layers": NUM_LAYERS, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
        "vocab_size": n_tokens, **_ids(architecture, n_tokens),
    }
    if architecture == "llama":
        cfg.update(architectures=["LlamaForCausalLM"], attention_bias=False,
                   max_position_embeddings=2048, mlp_bias=False, num_key_value_heads=2,
                   pretraining_tp=1, rope_scaling=None)
    elif architecture == "mistral":
        cfg.update(architectures=["MistralForCausalLM"], max_position_embeddings=32768,
                   num_key_value_heads=2, rope_theta=1000000.0, sliding_window=None)
    else:
        cfg.update(architectures=["Phi3ForCausalLM"], attention_bias=False, embd_pdrop=0.0,
                   max_position_embeddings=4096, num_key_value_heads=NUM_HEADS,
                   original_max_position_embeddings=4096, resid_pdrop=0.0, rope_scaling=None,
                   sliding_window=2047, vocab_size=-(-n_tokens // 64) * 64)
    return cfg


def tokenizer_config(architecture: str) -> dict[str, Any]:
    """tokenizer_config.json: the real model's special tokens and chat template."""
    cfg: dict[str, Any] = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
        "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": False,
        "pad_token": None, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
    }
    if architecture == "llama":
        cfg.update(chat_template=LLAMA_CHAT_TEMPLATE, model_max_length=2048, pad_token="</s>")
    elif architecture == "mistral":
        cfg.update(chat_template=MISTRAL_CHAT_TEMPLATE, model_max_length=32768)
    else:
        cfg.update(chat_template=PHI3_CHAT_TEMPLATE, eos_token="<|endoftext|>",
                   model_max_length=4096, pad_token="<|endoftext|>")
    return cfg


def generation_config(architecture: str, n_tokens: int) -> dict[str, Any]:
    ids = _ids(architecture, n_tokens)
    if architecture == "phi3":  # Phi-3 stops at <|endoftext|>, <|assistant|> and <|end|>
        base = n_tokens - len(PHI3_ADDED)
        ids["eos_token_id"] = [base + PHI3_ADDED.index(t)
                               for t in ("<|endoftext|>", "<|assistant|>", "<|end|>")]
    return ids


def spm_row_scale(vocab_size: int, n_tokens: int, architecture: str) -> np.ndarray:
    """Per-row LM-head scale (see SPECIAL_ROW_SCALE)."""
    scale = np.ones(vocab_size, dtype=np.float32)
    scale[:3] = SPECIAL_ROW_SCALE
    scale[3:FIRST_PIECE_ID] = FRAGMENT_EMBED_SCALE
    if architecture == "phi3":
        scale[n_tokens - len(PHI3_ADDED):] = SPECIAL_ROW_SCALE
    scale[n_tokens:] = SPECIAL_ROW_SCALE
    return scale


def build_spm_model(out_dir: Path, seed: int, architecture: str) -> list[Path]:
    """Write ``tiny-<architecture>`` into ``out_dir`` (which exists); return its files."""
    tok = spm_tokenizer(architecture)
    n_tokens = tok.get_vocab_size(with_added_tokens=True)
    config = spm_config(architecture, n_tokens)
    vocab_size = int(config["vocab_size"])
    weights = tiny_weights(config, seed,
                           row_scale=spm_row_scale(vocab_size, n_tokens, architecture))
    files = {
        "config.json": json_text(config),
        "generation_config.json": json_text(generation_config(architecture, n_tokens)),
        "tokenizer.json": tok.to_str(pretty=True) + "\n",
        "tokenizer_config.json": json_text(tokenizer_config(architecture)),
    }
    return write_repo(out_dir, files, weights, dtype="BF16")
