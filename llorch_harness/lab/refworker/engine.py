"""Text in, tokens out: the reference worker's inference engine.

Why it exists: the harness needs a worker that behaves like llorch-candled on the wire
but runs anywhere (CI, laptops) with real, deterministic inference. This module wires
the numpy decoder (``decoder.py``; Qwen2, Llama, Mistral or Phi-3 as ``architectures.py``
reads config.json), the tokenizer and sampling (``sampling.py``).

Two generation loops use it. The default wire (what llorch-candled at CP3 sends) is
``inference.py``, a port of the worker's ``backend/inference.rs`` that drives the model
step by step itself. ``Engine.generate`` below is the *legacy* wire's loop (env
``LLORCH_REF_WIRE=legacy``) and the library entry point of benchmarks and oracle tests;
its decisions:
- Every ``generate()`` starts from a fresh KV cache. ``reuse_cache=True`` is a test hook
  for the fault switches: it keeps the previous cache, like llorch-candled's Qwen path
  that never resets it (a differing prompt length raises :class:`BroadcastError` with
  candle's text; an equal length silently drifts).
- One piece per emitted token (``_Detokenizer``, legacy wire only; the default wire
  cuts pieces with ``token_stream.TokenOutputStream``). A token whose bytes end in an
  incomplete UTF-8 sequence yields ``""`` and its text appears in a later piece, so no
  piece holds broken UTF-8 and ``"".join(pieces) == tokenizer.decode(token_ids)``.
- Stop strings are matched on the generated text only; the pieces are kept up to and
  including the token that completed the stop string (no truncation).
- EOS ends generation and is not emitted. A prompt of ``max_context`` tokens or more
  raises :class:`ContextOverflowError`; when the context fills during decoding,
  generation ends with ``stop_reason="max_tokens"``.
- Not thread-safe: the server serialises requests (one lock around the model), as the
  real worker does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from llorch_harness.lab.refworker.architectures import (
    SUPPORTED,
    ArchSpec,
    DecoderConfig,
    canonical_architecture,
    detect_architecture,
    parse_config,
)
from llorch_harness.lab.refworker.decoder import DecoderModel, KVCache
from llorch_harness.lab.refworker.sampling import make_rng, select_token
from llorch_harness.lab.refworker.weights import (
    ModelLoadError,
    load_weights,
    read_json_object,
    weight_files,
)

__all__ = [
    "CANDLED_EOS_TOKEN",
    "QWEN_EOS_TOKEN_ID",
    "BroadcastError",
    "ContextOverflowError",
    "Engine",
    "GenerationParams",
    "GenerationResult",
    "ModelLoadError",
]

# llorch-candled hard-codes the Qwen end-of-sequence id (other architectures: their
# ArchSpec.eos_fallback).
QWEN_EOS_TOKEN_ID = 151643
# llorch-candled's EOS rule: the id of this token in tokenizer.json when present.
CANDLED_EOS_TOKEN = "</s>"


@dataclass(frozen=True)
class GenerationParams:
    """The sampling knobs of ``POST /execute`` (validation is the server's job)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int = 42
    stop: tuple[str, ...] = ()


@dataclass
class GenerationResult:
    """What one request produced; ``pieces[i]`` is the text streamed for ``token_ids[i]``."""

    token_ids: list[int]
    pieces: list[str]
    stop_reason: str  # "max_tokens" | "eos" | "stop_sequence"
    stop_sequence_matched: str | None
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class ContextOverflowError(Exception):
    """The prompt does not fit the model's context (``max_position_embeddings``)."""


class BroadcastError(RuntimeError):
    """Simulated candle shape error of a polluted KV cache (only with ``reuse_cache``)."""


class _Detokenizer:
    """Legacy wire: incremental decoding that never splits a UTF-8 character across pieces.

    Decodes a short window of recent ids and emits the new text only when the window
    no longer ends in U+FFFD (an incomplete byte sequence), the way TGI streams text.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True) if ids else ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (decoded lossily, as ``tokenizer.decode`` does)."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text) :]


def _ids(value: Any) -> set[int]:
    if isinstance(value, bool):
        return set()
    if isinstance(value, int):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, int) and not isinstance(v, bool)}
    return set()


def _parse_config(raw: dict[str, Any], config_path: Path) -> DecoderConfig:
    """config.json for one of the architectures the decoder runs (as candle detects it)."""
    detected = detect_architecture(raw)
    model_type = canonical_architecture(detected)
    if model_type is None:
        what = repr(detected) if detected else "(no model_type nor architectures)"
        raise ModelLoadError(
            f"{config_path}: unsupported architecture {what} "
            f"(the reference worker runs {', '.join(SUPPORTED)})"
        )
    return parse_config(raw, config_path, model_type)


class Engine:
    """A loaded model plus tokenizer; ``generate()`` serves one request at a time."""

    def __init__(
        self,
        model: DecoderModel,
        tokenizer: Tokenizer,
        *,
        model_name: str,
        eos_token_ids: frozenset[int],
        weight_files: tuple[Path, ...] = (),
        detected_architecture: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config: DecoderConfig = model.config
        self.model_name = model_name
        self.eos_token_ids = eos_token_ids
        self.max_context = model.config.max_position_embeddings
        self.vocab_size = model.config.vocab_size
        self.weight_files = weight_files
        # what "Detected model architecture" logs: model_type lower-cased ("qwen2", "phi3")
        self.detected_architecture = detected_architecture or model.config.model_type
        self._cache: KVCache | None = None
        self._last_prompt_len: int | None = None

    @classmethod
    def load(cls, model_path: Path) -> Engine:
        """Load a directory of ``*.safetensors`` (or one file) with its config and tokenizer."""
        model_dir, files = weight_files(Path(model_path))
        config_path = model_dir / "config.json"
        raw = read_json_object(config_path)
        config = _parse_config(raw, config_path)
        tok_path = model_dir / "tokenizer.json"
        if not tok_path.is_file():
            if (model_dir / "tokenizer.model").is_file():
                raise ModelLoadError(
                    f"{tok_path}: missing (a SentencePiece tokenizer.model alone is not supported)"
                )
            raise ModelLoadError(f"{tok_path}: missing")
        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise ModelLoadError(f"{tok_path}: cannot load tokenizer: {exc}") from exc
        eos = _ids(raw.get("eos_token_id"))
        gen_path = model_dir / "generation_config.json"
        if gen_path.is_file():
            eos |= _ids(read_json_object(gen_path).get("eos_token_id"))
        eos.add(config.candle_eos_fallback)
        eos_ids = frozenset(i for i in eos if 0 <= i < config.vocab_size)
        try:
            model = DecoderModel(config, load_weights(files))
        except ModelLoadError as exc:
            names = ", ".join(f.name for f in files)
            raise ModelLoadError(f"{exc.message} (in {names})") from exc
        return cls(model, tokenizer, model_name=model_dir.name, eos_token_ids=eos_ids,
                   weight_files=tuple(files), detected_architecture=detect_architecture(raw))

    @property
    def architecture(self) -> ArchSpec:
        """The architecture's names (``worker_name`` and ``display`` for the log lines)."""
        return self.config.spec

    @property
    def candled_eos_id(self) -> int:
        """llorch-candled's one EOS id: ``"</s>"`` in the tokenizer if present, else the
        model's own (Qwen 151643, Mistral 2, Phi 50256, Llama config.json's eos_token_id).

        Not ``eos_token_ids`` (config and generation_config): the real worker reads neither,
        so with a Qwen tokenizer ``<|im_end|>`` (151645) never stops it.
        """
        eos = self.tokenizer.token_to_id(CANDLED_EOS_TOKEN)
        return self.config.candle_eos_fallback if eos is None else int(eos)

    # -- inference ---------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def warm_up(self, prompt: str = "Hello") -> None:
        """One forward pass over ``prompt``, as cuda/metal llorch-candled does at start-up.

        Like the real Qwen path, the cache is left holding the prompt's keys: only a later
        ``generate(..., reuse_cache=True)`` sees them; a plain ``generate()`` never does.
        """
        ids = self.encode(prompt)
        cache = self.model.new_cache(len(ids))
        self.model.forward(ids, cache)
        self._cache = cache
        self._last_prompt_len = len(ids)

    def forward_logits(self, token_ids: list[int]) -> np.ndarray:
        """``[seq, vocab]`` float32 logits of one full pass over ``token_ids`` (fresh cache)."""
        if len(token_ids) > self.max_context:
            raise ContextOverflowError(
                f"{len(token_ids)} tokens exceed the context of {self.max_context}"
            )
        cache = self.model.new_cache(len(token_ids))
        return self.model.forward(token_ids, cache, all_logits=True)

    def generate(
        self, prompt: str, params: GenerationParams, *, reuse_cache: bool = False
    ) -> GenerationResult:
        """Prefill the prompt in one pass, then decode token by token with the KV cache."""
        prompt_ids = self.encode(prompt)
        cache = self._cache_for(len(prompt_ids), params, reuse_cache)
        t0 = time.perf_counter()
        logits = self.model.forward(prompt_ids, cache)[-1]
        t1 = time.perf_counter()
        token_ids, pieces, stop_reason, matched = self._decode(prompt_ids, logits, cache, params)
        t2 = time.perf_counter()
        return GenerationResult(
            token_ids=token_ids,
            pieces=pieces,
            stop_reason=stop_reason,
            stop_sequence_matched=matched,
            prompt_tokens=len(prompt_ids),
            prefill_seconds=t1 - t0,
            decode_seconds=t2 - t1,
        )

    def _cache_for(self, n_prompt: int, params: GenerationParams, reuse: bool) -> KVCache:
        """A fresh cache, or (``reuse``) the previous request's, with the fault's errors."""
        if n_prompt == 0:
            raise ValueError("the prompt encodes to no tokens")
        if n_prompt >= self.max_context:
            raise ContextOverflowError(
                f"prompt has {n_prompt} tokens; the model's context is {self.max_context}"
            )
        if reuse and self._cache is not None:
            cache = self._cache
            if self._last_prompt_len != n_prompt:
                heads = self.config.num_attention_heads
                raise BroadcastError(
                    f"cannot broadcast [{n_prompt}, {n_prompt}] to "
                    f"[1, {heads}, {n_prompt}, {n_prompt + cache.length}]"
                )
            if cache.length + n_prompt >= self.max_context:
                raise ContextOverflowError(
                    f"stale cache of {cache.length} plus {n_prompt} prompt tokens exceed "
                    f"the context of {self.max_context}"
                )
        else:
            budget = min(self.max_context, n_prompt + max(params.max_tokens, 0))
            cache = self.model.new_cache(budget)
        self._cache = cache
        self._last_prompt_len = n_prompt
        return cache

    def _decode(
        self, prompt_ids: list[int], logits: np.ndarray, cache: KVCache, params: GenerationParams
    ) -> tuple[list[int], list[str], str, str | None]:
        """The legacy decode loop: token ids, one piece per id, stop reason, stop matched."""
        rng = make_rng(params.seed)
        seen = set(prompt_ids)
        detok = _Detokenizer(self.tokenizer)
        token_ids: list[int] = []
        pieces: list[str] = []
        text = ""
        stop_reason = "max_tokens"
        matched: str | None = None
        while len(token_ids) < params.max_tokens:
            tok = select_token(
                logits, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                min_p=params.min_p, repetition_penalty=params.repetition_penalty, seen=seen,
                rng=rng,
            )
            if tok in self.eos_token_ids:
                stop_reason = "eos"
                break
            token_ids.append(tok)
            seen.add(tok)
            piece = detok.push(tok)
            pieces.append(piece)
            if piece and params.stop:
                before = len(text)
                text += piece
                matched = _first_stop(text, before, params.stop)
                if matched is not None:
                    stop_reason = "stop_sequence"
                    break
            if len(token_ids) >= params.max_tokens or cache.length >= self.max_context:
                break
            logits = self.model.forward([tok], cache)[-1]
        tail = detok.flush()
        if tail and pieces:
            pieces[-1] += tail
        return token_ids, pieces, stop_reason, matched


def _first_stop(text: str, before: int, stops: tuple[str, ...]) -> str | None:
    """The stop string whose first occurrence, ending in the new text, ends earliest."""
    best: tuple[int, int, str] | None = None
    for order, stop in enumerate(stops):
        if not stop:
            continue
        pos = text.find(stop, max(0, before - len(stop) + 1))
        if pos >= 0:
            key = (pos + len(stop), order, stop)
            if best is None or key < best:
                best = key
    return None if best is None else best[2]
