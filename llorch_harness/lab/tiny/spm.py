"""A Llama-style SentencePiece BPE trained on the tiny corpus, for tiny-llama/-mistral/-phi3.

Why this shape and not the byte-level BPE of the Qwen builds: TinyLlama, Mistral and
Phi-3 ship Llama's SentencePiece vocabulary converted to tokenizer.json, and the worker's
text handling differs there: words carry a leading "▁" (U+2581), the decoder strips the
first space, characters outside the vocabulary fall back to byte tokens ``<0xE4>``..
(so a CJK character is three tokens and a lone byte decodes to U+FFFD), ``<s>`` is
prepended to every encoding, and ``</s>`` is a real token (id 2, llorch-candled's EOS).
Layout as in the real files: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<0x00>``..``<0xFF>``
3..258, then the trained pieces; Phi-3 appends its chat tokens (``<|endoftext|>``,
``<|assistant|>``, ..., ``<|end|>``, ``<|user|>``) after them, as at 32000..32010.
"""

from __future__ import annotations

import functools
import json
import string

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from llorch_harness.lab.tiny.corpus import corpus_text

SP = "\u2581"  # SentencePiece's word-boundary mark
SPM_SPECIALS: tuple[str, ...] = ("<unk>", "<s>", "</s>")
NUM_BYTE_TOKENS = 256
FIRST_PIECE_ID = len(SPM_SPECIALS) + NUM_BYTE_TOKENS  # 259
# Phi-3-mini-4k-instruct's added tokens, in id order (32000..32010 there).
PHI3_ADDED: tuple[str, ...] = (
    "<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>",
    "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>",
    "<|placeholder6|>", "<|user|>",
)
# Trained pieces per vocabulary (alphabet included): two sizes, so that tiny-llama and
# tiny-mistral, like the real models, do not share one vocabulary (448 yields 426: the
# training stops when no pair occurs twice; 400 yields 400). Phi-3 reuses Llama's.
PIECE_TARGETS: dict[str, int] = {"llama": 448, "mistral": 400, "phi3": 448}


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.Prepend(SP), normalizers.Replace(" ", SP)])


@functools.lru_cache(maxsize=4)
def _trained(target: int) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Pieces (in trained order) and merges of a BPE trained like SentencePiece: words
    start with "▁", punctuation and single digits stay apart, every printable ASCII
    character is a piece. Newlines and tabs are left to the byte tokens, as in Llama."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=SP, prepend_scheme="never", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    alphabet = [c for c in string.printable if not c.isspace()] + [SP]
    trainer = trainers.BpeTrainer(vocab_size=target + len(SPM_SPECIALS), min_frequency=2,
                                  special_tokens=list(SPM_SPECIALS), initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(corpus_text().splitlines(), trainer)
    model = json.loads(tok.to_str())["model"]
    pieces = tuple(p for p, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])
                   if p not in SPM_SPECIALS)
    merges = tuple((str(a), str(b)) for a, b in (
        m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]))
    return pieces, merges


def spm_tokenizer(architecture: str) -> Tokenizer:
    """The tokenizer of ``tiny-<architecture>`` (llama, mistral or phi3)."""
    pieces, merges = _trained(PIECE_TARGETS[architecture])
    vocab = {tok: i for i, tok in enumerate(SPM_SPECIALS)}
    for b in range(NUM_BYTE_TOKENS):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges), unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.normalizer = _normalizer()
    tok.decoder = decoders.Sequence([decoders.Replace(SP, " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    added = SPM_SPECIALS + (PHI3_ADDED if architecture == "phi3" else ())
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in added])
    return tok

