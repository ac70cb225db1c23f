"""The narration lines llorch-candled writes, one function per `narrate(...)` call site.

Why one module: the real worker's narration texts (actor/action constants of its
`narration.rs`, `human` and `cute` strings) are spread over many source files; the harness
and its tests look for them, so they live here once, each function naming the Rust file it
mirrors. Numbers follow the Rust formatting (`bytes / 1_000_000` for MB, integer division).
"""

from __future__ import annotations

from llorch_harness.lab.refworker.logs import JsonLogger

ACTOR_LLORCH_CANDLED = "llorch-candled"
ACTOR_CANDLE_BACKEND = "candle-backend"
ACTOR_HTTP_SERVER = "http-server"
ACTOR_DEVICE_MANAGER = "device-manager"
ACTOR_MODEL_LOADER = "model-loader"
ACTOR_TOKENIZER = "tokenizer"


def device_init(log: JsonLogger, backend: str, device: int) -> None:
    """device.rs `init_{cpu,cuda,metal}_device`."""
    if backend == "cpu":
        log.narrate(ACTOR_DEVICE_MANAGER, "device_init", "cpu", "Initialized CPU device",
                    cute="CPU device ready to crunch numbers! 💻")
    elif backend == "cuda":
        log.narrate(ACTOR_DEVICE_MANAGER, "device_init", f"cuda-{device}",
                    f"Initialized CUDA device {device}",
                    cute=f"GPU{device} warmed up and ready to zoom! ⚡", device=f"cuda-{device}")
    else:
        log.narrate(ACTOR_DEVICE_MANAGER, "device_init", f"metal-{device}",
                    f"Initialized Apple Metal device {device}",
                    cute=f"Apple GPU{device} polished and ready to shine! ✨",
                    device=f"metal-{device}")


def model_load(log: JsonLogger, arch: str, size_bytes: int, vocab: int) -> None:
    """backend/inference.rs `CandleInferenceBackend::load`."""
    mb = size_bytes // 1_000_000
    log.narrate(ACTOR_MODEL_LOADER, "model_load", arch,
                f"Loaded {arch} model ({mb} MB, vocab: {vocab})",
                cute=f"{arch} model tucked into memory! {mb} MB cozy! 🛏️", model_ref=arch)


def callback_ready(log: JsonLogger, url: str, worker_id: str, vram_bytes: int) -> None:
    """common/startup.rs `callback_ready`, before the POST."""
    mb = vram_bytes // 1_000_000
    log.narrate(ACTOR_LLORCH_CANDLED, "callback_ready", url,
                f"Calling pool-managerd at {url} (worker: {worker_id}, VRAM: {mb} MB)",
                cute=f"Sending ready signal with {mb} MB of VRAM! 📞",
                story=f'"I have {mb} MB VRAM ready!" said worker-{worker_id}.',
                worker_id=worker_id)


def callback_failed(log: JsonLogger, url: str, status: str, worker_id: str) -> None:
    """common/startup.rs: the pool manager answered non-2xx."""
    log.narrate(ACTOR_LLORCH_CANDLED, "error", url, f"Pool manager callback failed: {status}",
                cute=f"Oh no! Pool-managerd didn't answer ({status}). 😟",
                error_kind="callback_failed", worker_id=worker_id)


def server_start(log: JsonLogger, addr: str) -> None:
    """http/server.rs `HttpServer::new`."""
    log.narrate(ACTOR_HTTP_SERVER, "server_start", addr, f"HTTP server initialized on {addr}",
                cute=f"HTTP server ready to greet requests at {addr}! 🚺")


def bind_failed(log: JsonLogger, addr: str, error: str) -> None:
    """http/server.rs `run`: the bind failed."""
    log.narrate(ACTOR_HTTP_SERVER, "error", addr, f"Failed to bind to {addr}: {error}",
                cute=f"Oh dear! Can't bind to {addr} — address already in use? 😟",
                error_kind="bind_failed")


def server_bind(log: JsonLogger, addr: str) -> None:
    """http/server.rs `run`: listening."""
    log.narrate(ACTOR_HTTP_SERVER, "server_bind", addr, f"HTTP server listening on {addr}",
                cute=f"Server ears perked up, listening at {addr}! 👂")


def server_shutdown(log: JsonLogger) -> None:
    """http/server.rs: the graceful-shutdown future fired."""
    log.narrate(ACTOR_HTTP_SERVER, "server_shutdown", "graceful",
                "HTTP server shutting down gracefully",
                cute="Server saying goodnight and tucking in connections! 🌙")


def health_check(log: JsonLogger, status: str, vram_bytes: int) -> None:
    """http/health.rs: one line per `/health` call."""
    log.narrate(ACTOR_HTTP_SERVER, "health_check", status,
                f"Health check: {status} (VRAM: {vram_bytes // 1_000_000} MB)",
                cute=f"Feeling {status}! 💪")


def validation_failed(log: JsonLogger, job_id: str) -> None:
    """http/execute.rs: `validate_all` failed (after WARN "Validation failed")."""
    log.narrate(ACTOR_HTTP_SERVER, "error", job_id, f"Validation failed for job {job_id}",
                cute=f"Job {job_id} has invalid parameters! 😟",
                error_kind="validation_failed", job_id=job_id)


def execute_request(log: JsonLogger, job_id: str) -> None:
    """http/execute.rs: after INFO "Inference request validated"."""
    log.narrate(ACTOR_HTTP_SERVER, "execute_request", job_id,
                f"Inference request validated for job {job_id}",
                cute=f"Job {job_id} looks good, let's go! ✅", job_id=job_id)


def inference_failed(log: JsonLogger, job_id: str, error: str) -> None:
    """http/execute.rs: after WARN "Inference failed"."""
    log.narrate(ACTOR_CANDLE_BACKEND, "error", job_id,
                f"Inference failed for job {job_id}: {error}",
                cute=f"Oh no! Job {job_id} hit a snag: {error} 😟",
                error_kind="inference_failed", job_id=job_id)


def inference_start(log: JsonLogger, prompt_bytes: int, max_tokens: int, temp: str) -> None:
    """backend/inference.rs `execute`: first line (the prompt length is in bytes)."""
    log.narrate(ACTOR_CANDLE_BACKEND, "inference_start", f"prompt-{prompt_bytes}-chars",
                f"Starting inference (prompt: {prompt_bytes} chars, max_tokens: {max_tokens}, "
                f"temp: {temp})",
                cute=f"Time to generate {max_tokens} tokens! Let's go! 🚀")


def tokenize(log: JsonLogger, n_tokens: int) -> None:
    """backend/inference.rs `execute`: the prompt was tokenized."""
    log.narrate(ACTOR_TOKENIZER, "tokenize", f"{n_tokens}-tokens",
                f"Tokenized prompt ({n_tokens} tokens)",
                cute=f"Chopped prompt into {n_tokens} tasty tokens! 🍰", tokens_in=n_tokens)


def cache_reset(log: JsonLogger) -> None:
    """backend/inference.rs `execute`: claims a reset (for Qwen at CP3 it did none)."""
    log.narrate(ACTOR_CANDLE_BACKEND, "cache_reset", "kv-cache",
                "Reset KV cache before inference to clear warmup pollution",
                cute="Tidying up the cache for a fresh start! 🧹")


def token_generate(log: JsonLogger, count: int) -> None:
    """backend/inference.rs `execute`: every 10th loop step."""
    log.narrate(ACTOR_CANDLE_BACKEND, "token_generate", f"token-{count}",
                f"Generated {count} tokens", cute=f"{count} tokens and counting! 🎯",
                tokens_out=count)


def inference_complete(log: JsonLogger, n_tokens: int, duration_ms: int, tps: int) -> None:
    """backend/inference.rs `execute`: after INFO "Inference completed"."""
    log.narrate(ACTOR_CANDLE_BACKEND, "inference_complete", f"{n_tokens}-tokens",
                f"Inference completed ({n_tokens} tokens in {duration_ms} ms, {tps} tok/s)",
                cute=f"Generated {n_tokens} tokens in {duration_ms} ms! {tps} tok/s! 🎉",
                tokens_out=n_tokens, decode_time_ms=duration_ms)


def warmup_start(log: JsonLogger) -> None:
    """backend/inference.rs `warmup` (cuda and metal binaries)."""
    log.narrate(ACTOR_CANDLE_BACKEND, "warmup", "gpu", "Starting GPU warmup",
                cute="Stretching GPU muscles before the big workout! 🏋️")


def warmup_complete(log: JsonLogger, duration_ms: int) -> None:
    """backend/inference.rs `warmup`: done."""
    log.narrate(ACTOR_CANDLE_BACKEND, "warmup", "complete",
                f"GPU warmup complete ({duration_ms} ms)",
                cute=f"GPU all warmed up in {duration_ms} ms! Ready to zoom! ⚡",
                duration_ms=duration_ms)
