"""Start-up, serving and shutdown in the order of llorch-candled's `src/bin/*.rs` at CP3.

Why the exact order matters: the harness waits for milestones in the log and for the ready
callback, and it must learn that the port is open only from "HTTP server listening":

1. "Starting llorch-<backend>-candled", device init and verification (persona.py);
2. load: "Loading model...", "Detected model architecture", "Loaded Qwen model" (Llama,
   Mistral, Phi after the architecture),
   "Model and tokenizer loaded successfully" + narration, "Model loaded successfully"
   ("... on GPU" / "... on Metal GPU");
3. cuda/metal: the warm-up pass ("Starting GPU warmup...", ..., "GPU warmup complete -
   ready for inference");
4. the ready callback ("Calling back to pool manager", POST, "Pool manager callback
   successful", "Callback sent to pool-managerd"), or "Test mode: skipping pool manager
   callback" when the URL contains `localhost:9999`; a non-2xx answer or a connection error
   ends the process (exit 1);
5. "Worker ready, starting HTTP server", "HTTP server initialized" {addr},
   "llorch-<backend>-candled ready on port N" — all before the bind;
6. bind (failure: `Error: Failed to bind to ADDR: ...`, exit 1), the SIGINT handler, then
   "HTTP server listening" {addr}: a SIGINT sent as soon as that line is read is graceful.

Shutdown on SIGINT (SIGTERM keeps its default action and is never graceful): it waits for
a running generation (the process is frozen while one runs), then INFO "Received
SIGINT/SIGTERM, initiating graceful shutdown", WARN "HTTP server shutting down gracefully"
+ narration, in-flight requests finish, idle connections close, INFO "HTTP server shutdown
complete", exit 0.
"""

from __future__ import annotations

import signal
import threading
import time
from http import HTTPStatus
from pathlib import Path

import httpx

from llorch_harness.lab.refworker import narration
from llorch_harness.lab.refworker.engine import Engine
from llorch_harness.lab.refworker.faults import ENV_VAR, Faults, apply_model_faults
from llorch_harness.lab.refworker.inference import CandledBackend, InferenceFailed
from llorch_harness.lab.refworker.logs import JsonLogger
from llorch_harness.lab.refworker.persona import Persona, WorkerArgs
from llorch_harness.lab.refworker.server import ServerContext, WorkerHTTPServer
from llorch_harness.lab.refworker.service import InferenceService
from llorch_harness.lab.refworker.torch_engine import NUMPY_ONLY_FAULTS, engine_facts, engine_for

TEST_MODE_CALLBACK = "localhost:9999"


class StartupError(Exception):
    """Start-up failed: printed as `Error: <message>` (anyhow style), exit status 1."""


def model_size_bytes(model: Path) -> int:
    """models/mod.rs `calculate_model_size`: the file, or every `*.safetensors` in the dir."""
    if model.is_file() and model.suffix == ".safetensors":
        return model.stat().st_size
    if model.is_dir():
        return sum(p.stat().st_size for p in model.iterdir()
                   if p.suffix == ".safetensors" and p.is_file())
    return 0


def _status_text(code: int) -> str:
    """reqwest's `StatusCode` Display: "500 Internal Server Error"."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} <unknown status code>"


def _addr(host: str, port: int) -> str:
    """Rust's `SocketAddr` Display."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def load_engine(args: WorkerArgs, persona: Persona, log: JsonLogger) -> tuple[Engine, int]:
    """STEP 2: load model and tokenizer; returns the engine and the model size in bytes."""
    log.info(persona.load_message, model=str(args.model))
    try:
        engine = engine_for(args.model, args.engine, args.torch_device, persona.backend,
                            args.device)
    except Exception as err:
        raise StartupError(f"Failed to load model: {err}") from err
    size = model_size_bytes(args.model)
    c, arch = engine.config, engine.architecture
    log.info("Detected model architecture", architecture=engine.detected_architecture,
             path=str(args.model))
    log.info(f"Loaded {arch.display} model", architecture=arch.worker_name,
             hidden_size=c.hidden_size, num_layers=c.num_hidden_layers, vocab_size=c.vocab_size)
    log.info("Model and tokenizer loaded successfully", architecture=arch.worker_name,
             vocab_size=c.vocab_size,
             tokenizer_vocab=engine.tokenizer.get_vocab_size(with_added_tokens=True),
             model_size_mb=size // 1_000_000)
    narration.model_load(log, arch.worker_name, size, c.vocab_size)
    log.info(persona.loaded_message)
    return engine, size


def send_ready_callback(args: WorkerArgs, log: JsonLogger, vram_bytes: int) -> None:
    """STEP 3. No timeout and no retry, as reqwest's default client: a receiver that never
    answers blocks start-up for ever (the harness must time out, not the worker)."""
    if TEST_MODE_CALLBACK in args.callback_url:
        log.info("Test mode: skipping pool manager callback")
        return
    log.info("Calling back to pool manager", callback_url=args.callback_url,
             worker_id=args.worker_id, vram_bytes=vram_bytes)
    narration.callback_ready(log, args.callback_url, args.worker_id, vram_bytes)
    payload = {"worker_id": args.worker_id, "vram_bytes": vram_bytes,
               "uri": f"http://localhost:{args.port}"}
    try:
        with httpx.Client(trust_env=False, timeout=None) as client:
            resp = client.post(args.callback_url, json=payload)
    except httpx.HTTPError as err:
        raise StartupError(f"error sending request for url ({args.callback_url})\n\n"
                           f"Caused by:\n    {err}") from err
    if not resp.is_success:
        status = _status_text(resp.status_code)
        narration.callback_failed(log, args.callback_url, status, args.worker_id)
        raise StartupError(f"Pool manager callback failed: {status}")
    log.info("Pool manager callback successful")
    log.info("Callback sent to pool-managerd")


def _sleep_forever() -> None:
    while True:
        time.sleep(3600)


def prepare(args: WorkerArgs, persona: Persona, wire: str, faults: Faults,
            log: JsonLogger) -> ServerContext:
    """Steps 1 to 4: everything before the HTTP server exists."""
    persona.log_start(log, args.worker_id, str(args.model), args.port, args.device)
    if faults.active:
        log.warn("Test-only fault switches active", faults=",".join(faults.active), env=ENV_VAR)
    persona.log_device(log, args.device)
    engine, size = load_engine(args, persona, log)
    if args.engine != "numpy" and any(getattr(faults, f) for f in NUMPY_ONLY_FAULTS):
        raise StartupError(f"fault switches {', '.join(NUMPY_ONLY_FAULTS)} need --engine numpy")
    apply_model_faults(engine.model, faults)
    backend = CandledBackend(engine, log, faults)
    service = InferenceService(engine, backend, faults, log, wire=wire)
    if persona.has_warmup or faults.warmup_pollution:
        try:
            service.warm_up(pollute=faults.warmup_pollution)
        except InferenceFailed as err:
            raise StartupError(str(err)) from err
        if persona.warmup_done_message:
            log.info(persona.warmup_done_message)
    if faults.never_ready:
        log.info("never_ready fault: no callback, no bind")
        _sleep_forever()
    if faults.slow_start > 0:
        time.sleep(faults.slow_start)
    kind, device, measured = engine_facts(engine)
    if measured is not None:  # the torch engine: what torch really holds on its device
        log.info("Reference engine ready", engine=kind, device=device, vram_bytes=measured)
    # memory_bytes(): the model size on every backend (numpy); torch: what it measured
    send_ready_callback(args, log, size if measured is None else measured)
    return ServerContext(service=service, log=log, worker_id=args.worker_id,
                         model_name=engine.model_name, faults=faults,
                         vram_bytes=persona.vram_bytes(size) if measured is None else measured)


def bind(args: WorkerArgs, persona: Persona, ctx: ServerContext) -> WorkerHTTPServer:
    """Steps 5 and 6."""
    log = ctx.log
    addr = _addr(args.host, args.port)
    log.info("Worker ready, starting HTTP server")
    log.info("HTTP server initialized", addr=addr)
    narration.server_start(log, addr)
    log.info(persona.ready_message(args.port, args.device))
    try:
        server = WorkerHTTPServer(args.host, args.port, ctx)
    except OSError as err:
        text = f"{err.strerror or err} (os error {err.errno})" if err.errno else str(err)
        narration.bind_failed(log, addr, text)
        raise StartupError(f"Failed to bind to {addr}: {text}\n\nCaused by:\n    {text}") from err
    host, port = server.server_address[:2]
    bound = _addr(str(host), int(port))
    # the handler exists before the port is announced: whoever stops the worker as soon as
    # it reads "listening" gets a graceful stop, never a SIGINT that kills (before the bind,
    # Ctrl-C still kills at once)
    if not ctx.faults.ignore_signals:
        signal.signal(signal.SIGINT, lambda _s, _f: ctx.stop.append(True))
    log.info("HTTP server listening", addr=bound)
    narration.server_bind(log, bound)
    return server


def serve(server: WorkerHTTPServer, ctx: ServerContext) -> int:
    """Serve until SIGINT (ctx.stop, set by bind's handler), then shut down gracefully;
    the exit status (0)."""
    stop = ctx.stop
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                               name="http", daemon=True)
    serving.start()
    while not stop:
        time.sleep(0.01)  # short: a graceful stop should cost the harness milliseconds
    with ctx.freeze:  # a running generation finishes first: the process is frozen meanwhile
        ctx.log.info("Received SIGINT/SIGTERM, initiating graceful shutdown")
    server.shutdown()
    ctx.log.warn("HTTP server shutting down gracefully")
    narration.server_shutdown(ctx.log)
    server.begin_close()
    server.server_close()  # joins the in-flight request threads
    ctx.log.info("HTTP server shutdown complete")
    return 0


def run_worker(args: WorkerArgs, persona: Persona, wire: str, faults: Faults,
               log: JsonLogger | None = None) -> int:
    log = log or JsonLogger()
    ctx = prepare(args, persona, wire, faults, log)
    server = bind(args, persona, ctx)
    return serve(server, ctx)
