"""llorch-candled's `backend/inference.rs` at CP3, ported: warm-up and the generation loop.

Why a port and not `Engine.generate`: the harness must accept exactly what the real worker
sends, and its loop shapes the stream. Per request it logs narration lines (inference
start, tokenize, "Reset KV cache ..."), feeds the prompt at position 0, then loops
`for pos in 0..max_tokens`: forward (the prompt at pos 0, else the last token), sample,
stop at EOS (the id of `"</s>"` in the tokenizer, else the model's: 151643 for Qwen;
never emitted nor counted),
push the token through `TokenOutputStream` (pieces, not tokens), narrate every 10 steps;
then flush `decode_rest`, log "Inference completed" and return. The stop reason is always
MAX_TOKENS; `stop`, `repetition_penalty` and `min_p` have no effect; `decode_time_ms`
includes the prefill. Any forward failure ends the request with exactly
"Forward pass failed: Qwen forward pass failed" (candle's own text is dropped by the
`anyhow` context, so it never reaches the stream or the log); other architectures name
themselves ("Llama forward pass failed", "Mistral ...", "Phi ..."), and Llama alone also
logs ERROR "Llama forward pass failed - Candle error details" with candle's text, as
models/llama.rs does.

A healthy reference worker really resets the KV cache before each request and decodes at
the right positions. Two fault switches (faults.py) restore the real CP3 bugs:
`qwen_cache_bug` (the reset is a no-op that logs WARN "Cache reset not implemented for
Qwen", or Mistral, Llama, Phi after the model's architecture; the prompt goes at position
0 onto the old cache, so a prompt of 2+ tokens fails once the cache is non-empty) and
`decode_positions` (decode step `pos` runs at position `pos`, the loop index, instead of
`prompt_len + pos - 1`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from llorch_harness.lab.refworker import narration
from llorch_harness.lab.refworker.decoder import CandleError
from llorch_harness.lab.refworker.engine import Engine
from llorch_harness.lab.refworker.faults import Faults
from llorch_harness.lab.refworker.jsonbody import RawExecuteRequest
from llorch_harness.lab.refworker.logs import JsonLogger
from llorch_harness.lab.refworker.sampling import make_rng, select_token
from llorch_harness.lab.refworker.token_stream import TokenOutputStream
from llorch_harness.lab.refworker.validation import DEFAULT_SEED, f32_text

__all__ = [
    "FORWARD_FAILED",
    "WARMUP_PROMPT",
    "CandledBackend",
    "CandledResult",
    "InferenceFailed",
    "SamplingConfig",
    "forward_failed_text",
]

WARMUP_PROMPT = "Hello"
FORWARD_FAILED = "Forward pass failed: Qwen forward pass failed"


def forward_failed_text(display: str) -> str:
    """The error event's text for a failed forward pass of a ``display`` model ("Qwen")."""
    return f"Forward pass failed: {display} forward pass failed"

PROGRESS_EVERY = 10


# the architectures whose reset_cache() is a no-op in CP3's llorch-candled (models/mod.rs)
CP3_NO_RESET = ("Qwen", "Mistral")


class InferenceFailed(Exception):
    """`execute` failed; `str()` is exactly what the real worker sends and logs."""


@dataclass(frozen=True)
class SamplingConfig:
    """common/sampling_config.rs, built as http/execute.rs builds it."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    stop_strings: tuple[str, ...] = ()
    seed: int = DEFAULT_SEED

    @classmethod
    def from_request(cls, req: RawExecuteRequest) -> SamplingConfig:
        return cls(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                   top_k=req.top_k, repetition_penalty=req.repetition_penalty,
                   min_p=req.min_p, stop_strings=req.stop,
                   seed=DEFAULT_SEED if req.seed is None else req.seed)


@dataclass
class CandledResult:
    """`InferenceResult::max_tokens(...)`: pieces, sampled ids (EOS excluded), time."""

    pieces: list[str]
    token_ids: list[int]
    decode_time_ms: int
    prompt_tokens: int


class CandledBackend:
    """`CandleInferenceBackend`: owns the model's KV cache across calls, as candle's model
    does (so a cache that is never reset stays polluted)."""

    def __init__(self, engine: Engine, log: JsonLogger, faults: Faults) -> None:
        self.engine = engine
        self.log = log
        self.faults = faults
        self.cache = engine.model.new_cache()
        self.eos_id = engine.candled_eos_id
        self.display = engine.architecture.display

    # -- start-up -------------------------------------------------------------------------

    def warmup(self) -> int:
        """The cuda/metal warm-up: one forward pass over "Hello" at position 0 that leaves
        its keys in the cache. Returns the prompt's token count."""
        self.log.info("Starting GPU warmup...")
        narration.warmup_start(self.log)
        t0 = time.perf_counter()
        ids = self.engine.encode(WARMUP_PROMPT)
        try:
            self.engine.model.forward(ids, self.cache, position=0)
        except (CandleError, ValueError) as err:
            raise InferenceFailed("Warmup forward pass failed") from err
        ms = int((time.perf_counter() - t0) * 1000)
        # duration_ms is a u128 in Rust: tracing's JSON writes it through Debug, as a string
        self.log.info("GPU warmup complete (cache will be reset before inference)",
                      duration_ms=str(ms))
        narration.warmup_complete(self.log, ms)
        return len(ids)

    # -- one request ----------------------------------------------------------------------

    def execute(self, prompt: str, cfg: SamplingConfig, *,
                stale_prompt_len: int | None = None) -> CandledResult:
        """One generation. `stale_prompt_len` (legacy cache faults `broadcast`, `drift`,
        `warmup_pollution` only): keep the previous request's cache and fail with candle's
        broadcast text when this prompt's length differs from that request's."""
        narration.inference_start(self.log, len(prompt.encode("utf-8")), cfg.max_tokens,
                                  f32_text(cfg.temperature))
        ids = self._tokenize(prompt)
        narration.tokenize(self.log, len(ids))
        base = self._reset_cache(stale_prompt_len)
        narration.cache_reset(self.log)
        t0 = time.perf_counter()
        if stale_prompt_len is not None and stale_prompt_len != len(ids):
            raise InferenceFailed(f"Forward pass failed: {self._broadcast_text(len(ids))}")
        token_ids, pieces = self._loop(ids, cfg, base)
        duration_ms = int((time.perf_counter() - t0) * 1000)
        n = len(token_ids)
        tps = n * 1000 // duration_ms if duration_ms > 0 else 0
        self.log.info("Inference completed", tokens_generated=n, duration_ms=duration_ms,
                      tokens_per_sec=tps)
        narration.inference_complete(self.log, n, duration_ms, tps)
        return CandledResult(pieces, token_ids, duration_ms, len(ids))

    def _tokenize(self, prompt: str) -> list[int]:
        try:
            return self.engine.encode(prompt)
        except Exception as err:  # tokenizers raises its own Exception subclass
            raise InferenceFailed(f"Tokenization failed: {err}") from err

    def _reset_cache(self, stale_prompt_len: int | None) -> int:
        """`model.reset_cache()`; returns the position the prompt goes to."""
        if self.faults.qwen_cache_bug or (self.faults.cp3_cache
                                          and self.display in CP3_NO_RESET):
            self.log.warn(f"Cache reset not implemented for {self.display}")
            return 0
        if stale_prompt_len is not None:
            return self.cache.length  # the legacy faults' stale cache: positions continue
        self.cache = self.engine.model.new_cache()
        return 0

    def _broadcast_text(self, n: int) -> str:
        heads = self.engine.config.num_attention_heads
        return f"cannot broadcast [{n}, {n}] to [1, {heads}, {n}, {n + self.cache.length}]"

    def _position(self, pos: int, n_prompt: int, base: int) -> int:
        """Where loop step `pos` runs: the prompt at `base`; decode steps after it, or at
        the bare loop index with the `decode_positions` fault (inference.rs:228-258)."""
        if pos == 0:
            return base
        return base + (pos if self.faults.decode_positions else n_prompt + pos - 1)

    def _forward(self, ids: list[int], position: int) -> np.ndarray:
        try:
            return self.engine.model.forward(ids, self.cache, position=position)[-1]
        except (CandleError, ValueError) as err:
            if self.display == "Llama":  # models/llama.rs logs candle's text first
                self.log.error("Llama forward pass failed - Candle error details",
                               error=str(err), position=position, input_shape=f"[1, {len(ids)}]")
                if "shape" in str(err):
                    self.log.error("Shape mismatch detected in forward pass")
            raise InferenceFailed(forward_failed_text(self.display)) from err

    def _loop(self, ids: list[int], cfg: SamplingConfig,
              base: int) -> tuple[list[int], list[str]]:
        rng = make_rng(cfg.seed)
        stream = TokenOutputStream(self.engine.tokenizer)
        tokens = list(ids)
        generated: list[int] = []
        pieces: list[str] = []
        for pos in range(cfg.max_tokens):
            step_ids = tokens if pos == 0 else tokens[-1:]
            logits = self._forward(step_ids, self._position(pos, len(ids), base))
            tok = select_token(logits, temperature=cfg.temperature, top_k=cfg.top_k,
                               top_p=cfg.top_p, rng=rng)
            if tok == self.eos_id:
                break
            piece = stream.next_token(tok)
            if piece is not None:
                pieces.append(piece)
            generated.append(tok)
            tokens.append(tok)
            if (pos + 1) % PROGRESS_EVERY == 0:
                narration.token_generate(self.log, pos + 1)
        rest = stream.decode_rest()
        if rest is not None:
            pieces.append(rest)
        return generated, pieces
