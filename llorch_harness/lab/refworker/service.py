"""One validated `/execute` request in, the SSE events out, with the real worker's logs.

Why apart from the HTTP code: what a request produces depends on the wire (`cp3`, the real
CP3 format, or `legacy`) and on the fault switches, not on sockets; this keeps both testable
and keeps http/execute.rs's logging in one place: on success INFO "Inference complete"
{job_id, tokens}; on failure WARN "Inference failed" {job_id, error} plus a narration with
`error_kind` "inference_failed" and a 200 stream holding only
`{"type":"error","code":"INFERENCE_FAILED","message":...}`.

The caller (server.py) holds the process-wide lock, so one request runs at a time.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from llorch_harness.lab.refworker import narration
from llorch_harness.lab.refworker.engine import Engine, GenerationParams, GenerationResult
from llorch_harness.lab.refworker.faults import Faults, context_edge
from llorch_harness.lab.refworker.inference import CandledBackend, SamplingConfig
from llorch_harness.lab.refworker.jsonbody import RawExecuteRequest
from llorch_harness.lab.refworker.logs import JsonLogger
from llorch_harness.lab.refworker.persona import WIRE_CP3

Event = dict[str, Any]


def cp3_events(job_id: str, pieces: list[str], decode_time_ms: int) -> list[Event]:
    """http/execute.rs's stream: started (model "model", started_at "0"), pieces, end."""
    events: list[Event] = [{"type": "started", "job_id": job_id, "model": "model",
                            "started_at": "0"}]
    events += [{"type": "token", "t": t, "i": i} for i, t in enumerate(pieces)]
    events.append({"type": "end", "tokens_out": len(pieces), "decode_time_ms": decode_time_ms,
                   "stop_reason": "MAX_TOKENS"})
    return events


def legacy_events(job_id: str, model: str, result: GenerationResult,
                  started_at: str) -> list[Event]:
    """The legacy wire: started, one token per sampled token, metrics, end (lower case)."""
    events: list[Event] = [
        {"type": "started", "job_id": job_id, "model": model, "started_at": started_at}
    ]
    events += [{"type": "token", "t": t, "i": i} for i, t in enumerate(result.pieces)]
    n = len(result.pieces)
    decode = result.decode_seconds
    events.append({"type": "metrics", "tokens_per_sec": round(n / decode, 3) if decode > 0
                   else 0.0, "vram_bytes": 0})
    end: Event = {"type": "end", "tokens_out": n, "decode_time_ms": int(round(decode * 1000)),
                  "stop_reason": result.stop_reason}
    if result.stop_reason == "stop_sequence":
        end["stop_sequence_matched"] = result.stop_sequence_matched
    events.append(end)
    return events


def error_events(message: str) -> list[Event]:
    return [{"type": "error", "code": "INFERENCE_FAILED", "message": message}]


class InferenceService:
    """Runs requests on the backend of the chosen wire; decides, per the legacy cache
    faults, whether a request reuses the KV cache an earlier pass left behind."""

    def __init__(self, engine: Engine, backend: CandledBackend, faults: Faults,
                 log: JsonLogger, *, wire: str = WIRE_CP3) -> None:
        self.engine = engine
        self.backend = backend
        self.faults = faults
        self.log = log
        self.wire = wire
        self._last_prompt_len: int | None = None
        self._polluted_by_warmup = False
        self._dirty = False  # the determinism-axis faults: the next request reuses the cache
        self._never = threading.Event()

    def warm_up(self, *, pollute: bool) -> None:
        """The cuda/metal warm-up (also run by the `warmup_pollution` fault, `pollute`)."""
        n = self.backend.warmup()
        if pollute:
            if self.wire != WIRE_CP3:
                self.engine.warm_up()
            self._last_prompt_len = n
            self._polluted_by_warmup = True

    def mark_dirty(self) -> None:
        """The next request runs on the last one's cache (the determinism-axis faults)."""
        self._dirty = True

    def _reuse_cache(self, prompt: str) -> bool:
        f = self.faults
        if self._dirty:
            self._dirty = False
            return True
        if self._polluted_by_warmup or (f.broadcast and f.drift):
            return True
        if not (f.broadcast or f.drift) or self._last_prompt_len is None:
            return False
        same_len = len(self.engine.encode(prompt)) == self._last_prompt_len
        return same_len if f.drift else not same_len

    def _fault_delays(self, job_id: str) -> None:
        if self.faults.stall:
            self.log.info("stall fault: request accepted, never answered", job_id=job_id)
            self._never.wait()
        if self.faults.slow_execute > 0:
            time.sleep(self.faults.slow_execute)  # a generation that takes its time

    def run(self, req: RawExecuteRequest, model_name: str) -> list[Event]:
        """The events for one valid request (failures included); logs as execute.rs."""
        self._fault_delays(req.job_id)
        started = time.perf_counter()
        reuse = self._reuse_cache(req.prompt)
        self._polluted_by_warmup = False
        try:
            pieces, events, n_prompt = self._generate(req, model_name, reuse)
        except Exception as err:  # every failure becomes an error event, never a dead worker
            if self.faults.dirty_after_failure:  # fault: the error path leaves keys behind
                self.warm_up(pollute=True)
            message = str(err) or type(err).__name__
            self.log.warn("Inference failed", job_id=req.job_id, error=message)
            narration.inference_failed(self.log, req.job_id, message)
            return error_events(message)
        self._last_prompt_len = n_prompt
        if self.faults.nan:
            self.log.warn("NaN detected in logits; sampling continued", job_id=req.job_id)
        self.log.info("Inference complete", job_id=req.job_id, tokens=len(pieces))
        if self.faults.slow > 1:  # the `slow=F` fault: this request took F times as long
            time.sleep((self.faults.slow - 1.0) * (time.perf_counter() - started))
        if self.faults.token_delay > 0:  # the `token_delay=S` fault: S more per token
            time.sleep(self.faults.token_delay * len(pieces))
        return events

    def _generate(self, req: RawExecuteRequest, model_name: str,
                  reuse: bool) -> tuple[list[str], list[Event], int]:
        cfg = SamplingConfig.from_request(req)
        if self.faults.context_edge:
            edge = context_edge(int(self.engine.config.max_position_embeddings))
            if len(self.engine.encode(req.prompt)) >= edge:
                raise IndexError(f"index out of range: the position buffer holds {edge} "
                                 "positions (fault switch context_edge)")
        if self.wire == WIRE_CP3:
            stale = self._last_prompt_len if reuse else None
            if reuse and stale is None:
                stale = len(self.engine.encode(req.prompt))  # nothing ran yet: fresh
            res = self.backend.execute(req.prompt, cfg, stale_prompt_len=stale)
            events = cp3_events(req.job_id, res.pieces, res.decode_time_ms)
            return res.pieces, events, res.prompt_tokens
        return self._generate_legacy(req, cfg, model_name, reuse)

    def _generate_legacy(self, req: RawExecuteRequest, cfg: SamplingConfig, model_name: str,
                         reuse: bool) -> tuple[list[str], list[Event], int]:
        params = GenerationParams(
            max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
            top_k=cfg.top_k, min_p=cfg.min_p, repetition_penalty=cfg.repetition_penalty,
            seed=cfg.seed, stop=cfg.stop_strings)
        started_at = datetime.now(UTC).isoformat()
        result = self.engine.generate(req.prompt, params, reuse_cache=reuse)
        n = len(result.token_ids)
        ms = int((result.prefill_seconds + result.decode_seconds) * 1000)
        tps = n * 1000 // ms if ms > 0 else 0
        self.log.info("Inference completed", tokens_generated=n, duration_ms=ms,
                      tokens_per_sec=tps)
        narration.inference_complete(self.log, n, ms, tps)
        events = legacy_events(req.job_id, model_name, result, started_at)
        return result.pieces, events, result.prompt_tokens
