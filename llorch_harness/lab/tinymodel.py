"""Deterministic tiny models that the harness builds instead of downloading.

Why: tests and the local hub need models with the exact file layout of a Hugging Face
repo (config.json, model.safetensors, tokenizer.json, ...) that load in the reference
worker and in ``transformers``, without any network. Same seed => byte-identical files,
so their hashes can be pinned; the weights are random but scaled so that greedy output
is varied (not one token repeated) and depends on the prompt.

Four architectures (``architecture=``), CP4's models in miniature (the parts live in
``llorch_harness.lab.tiny``):

- ``qwen2`` (the default) with one of two vocabularies (``vocab=``): ``"qwen2.5"`` is
  Qwen2.5-0.5B-Instruct's real tokenizer (vocab_size 151936, about 17 MB, bf16): the
  default of ``llorch-harness tiny-model build`` and of the embedded gate; ``"corpus"`` is
  a 768-token byte-level BPE trained on a small corpus (about 0.55 MB, float32, a 512-token
  context): the default of :func:`build_tiny_model` itself, which the harness's own worker
  tests use because it is small and fast.
- ``llama``, ``mistral``, ``phi3`` (TinyLlama, Mistral 7B Instruct v0.2, Phi-3 Mini 4K):
  vocabulary ``"corpus"`` only, a Llama-style SentencePiece BPE trained on the same corpus
  (``tiny/spm.py``), bf16, untied LM heads. See docs/tiny-model.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import atomic_write_bytes, atomic_write_text
from llorch_harness.lab import qwen_vocab
from llorch_harness.lab.tiny.archs import build_spm_model
from llorch_harness.lab.tiny.corpus import (
    CHAT_TEMPLATE,
    EOS_TOKEN,
    SPECIAL_TOKENS,
    build_corpus_model,
    corpus_text,
    fragment_token_ids,
    tiny_config,
    train_tokenizer,
)
from llorch_harness.lab.tiny.qwen import build_qwen_model, qwen_config
from llorch_harness.lab.tiny.weights import (
    MAX_SEED,
    check_seed,
    json_text,
    safetensors_bytes,
    tiny_weights,
)
from llorch_harness.pool.catalog import TINY_QWEN_REPO  # the pool side names the repo

__all__ = [
    "ARCHITECTURES", "CHAT_TEMPLATE", "EMBEDDED_VOCAB", "EOS_TOKEN", "MAX_SEED",
    "SPECIAL_TOKENS", "TINY_QWEN_REPO", "TINY_REPOS", "VOCABS", "build_tiny_model",
    "check_architecture", "check_seed", "check_vocab", "corpus_text", "export_variant",
    "fragment_token_ids", "qwen_config", "safetensors_bytes", "tiny_config", "tiny_weights",
    "train_tokenizer",
]

_json_text = json_text  # the name benchmarks/bench_refworker.py imports

# The local hub's repos: one tiny model per architecture (build_embedded_hub_root).
TINY_REPOS: dict[str, str] = {
    TINY_QWEN_REPO: "qwen2",
    "llorch-test/tiny-llama": "llama",
    "llorch-test/tiny-phi3": "phi3",
    "llorch-test/tiny-mistral": "mistral",
}
EXTRA_TINY_REPOS: dict[str, str] = {r: a for r, a in TINY_REPOS.items() if r != TINY_QWEN_REPO}

ARCH_QWEN2 = "qwen2"
ARCHITECTURES: tuple[str, ...] = (ARCH_QWEN2, "llama", "phi3", "mistral")
VOCAB_QWEN = "qwen2.5"
VOCAB_CORPUS = "corpus"
VOCABS: tuple[str, ...] = (VOCAB_QWEN, VOCAB_CORPUS)
# `llorch-harness tiny-model build` and the embedded gate build this one.
EMBEDDED_VOCAB = VOCAB_QWEN


def check_vocab(vocab: object, architecture: str = ARCH_QWEN2) -> str:
    """A vocabulary the architecture has: qwen2 both, the others ``corpus`` only."""
    allowed = VOCABS if architecture == ARCH_QWEN2 else (VOCAB_CORPUS,)
    if vocab not in allowed:
        if vocab in VOCABS:
            raise HarnessError(f"vocabulary {vocab!r} is for --architecture qwen2 only",
                               f"omit --vocab or pass --vocab corpus for {architecture}",
                               exit_code=2)
        raise HarnessError(f"unknown vocabulary {vocab!r}",
                           "pass --vocab " + " or ".join(allowed), exit_code=2)
    return str(vocab)


def check_architecture(architecture: object) -> str:
    if architecture not in ARCHITECTURES:
        raise HarnessError(f"unknown architecture {architecture!r}",
                           "pass --architecture " + ", ".join(ARCHITECTURES), exit_code=2)
    return str(architecture)


def build_tiny_model(out_dir: Path, seed: int = 0, vocab: str | None = None,
                     architecture: str = ARCH_QWEN2) -> list[Path]:
    """Write a tiny model repo into ``out_dir``; return its files' paths (sorted).

    ``architecture``: qwen2 (default), llama, mistral or phi3. ``vocab`` (None: ``corpus``):
    ``"qwen2.5"`` (EMBEDDED_VOCAB, qwen2 only) is Qwen2.5's real tokenizer, 151936 rows,
    bf16; ``"corpus"`` is the small trained tokenizer in the architecture's own style.
    """
    check_seed(seed)  # every check before anything is written
    check_architecture(architecture)
    vocab = check_vocab(VOCAB_CORPUS if vocab is None else vocab, architecture)
    out_dir = Path(out_dir)
    if vocab == VOCAB_QWEN:
        qwen_vocab.tiktoken_bytes()  # a missing package is an error before any write
        out_dir.mkdir(parents=True, exist_ok=True)
        return build_qwen_model(out_dir, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if architecture == ARCH_QWEN2:
        return build_corpus_model(out_dir, seed)
    return build_spm_model(out_dir, seed, architecture)


def export_variant(
    src_dir: Path, out_dir: Path, *, dtype: str = "F32", shards: int = 1
) -> list[Path]:
    """Copy a model dir with its weights re-encoded as ``dtype`` and split into ``shards``.

    Why: real checkpoints come as bf16 and in several shards (with an index file); the
    loaders must handle both, and tests need such variants without a download.
    """
    from llorch_harness.lab.refworker.weights import read_safetensors

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for src in sorted(src_dir.iterdir()):
        if src.is_file() and src.suffix == ".json" and src.name != "model.safetensors.index.json":
            dst = out_dir / src.name
            atomic_write_bytes(dst, src.read_bytes())
            written.append(dst)
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(src_dir.glob("*.safetensors")):
        tensors.update(read_safetensors(f))
    names = sorted(tensors)
    if shards <= 1:
        dst = out_dir / "model.safetensors"
        atomic_write_bytes(dst, safetensors_bytes(tensors, dtype=dtype))
        return sorted([*written, dst])
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(shards):
        part = names[i * per : (i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        data = safetensors_bytes({n: tensors[n] for n in part}, dtype=dtype)
        dst = out_dir / fname
        atomic_write_bytes(dst, data)
        written.append(dst)
        weight_map.update(dict.fromkeys(part, fname))
        itemsize = 4 if dtype == "F32" else 2
        total += sum(int(tensors[n].size) * itemsize for n in part)
    index = out_dir / "model.safetensors.index.json"
    atomic_write_text(
        index, json_text({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return sorted([*written, index])
