"""`llorch-ref-candled`: the reference CPU worker, started like `llorch-cpu-candled`.

Why a hand-made parser instead of argparse's defaults: the harness checks the real binary's
clap behaviour (unknown flag such as `--backend` or `--cuda-device` → exit 2 and a clap-style
usage error), and the reference worker must fail the same way. Start-up order follows the
real worker: load model and tokenizer, ready callback, then bind (so the callback arrives
before the port accepts connections).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from .. import __version__ as _pkg_version
from ..localhttp import local_client
from .faults import ENV_VAR, Faults, FaultSpecError, parse_faults
from .logs import JsonLogger

PROG = "llorch-ref-candled"
TEST_MODE_CALLBACK = "localhost:9999"
CALLBACK_TIMEOUT_S = 30.0

# (flag, value name, required)
_OPTIONS: tuple[tuple[str, str, bool], ...] = (
    ("--worker-id", "WORKER_ID", True),
    ("--model", "MODEL", True),
    ("--port", "PORT", True),
    ("--callback-url", "CALLBACK_URL", True),
    ("--host", "HOST", False),
)
USAGE = (
    f"Usage: {PROG} [OPTIONS] --worker-id <WORKER_ID> --model <MODEL> --port <PORT> "
    "--callback-url <CALLBACK_URL>"
)
HELP = f"""Reference CPU worker speaking the llorch-candled contract (numpy inference)

{USAGE}

Options:
      --worker-id <WORKER_ID>        Worker ID (UUID) assigned by pool-managerd
      --model <MODEL>                Model path (.safetensors file or directory)
      --port <PORT>                  HTTP server port
      --callback-url <CALLBACK_URL>  Pool manager callback URL
      --host <HOST>                  Address to bind [default: 127.0.0.1]
  -h, --help                         Print help
  -V, --version                      Print version

Test-only fault switches: ${ENV_VAR} (see docs/reference-worker.md).
"""


class CliExit(Exception):
    """Parsing ended: print `text` to stdout (code 0) or stderr, exit with `code`."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass(frozen=True)
class WorkerArgs:
    worker_id: str
    model: Path
    port: int
    callback_url: str
    host: str = "127.0.0.1"


def _usage_error(message: str, usage: bool = True) -> CliExit:
    tail = f"\n\n{USAGE}" if usage else ""
    return CliExit(2, f"error: {message}{tail}\n\nFor more information, try '--help'.\n")


def _check_port(raw: str) -> None:
    """clap's u16 value parser: the value is checked as soon as it is read."""
    if not raw.isascii() or not raw.isdigit():
        raise _usage_error(f"invalid value '{raw}' for '--port <PORT>': "
                           "invalid digit found in string", usage=False)
    if int(raw) > 65535:
        raise _usage_error(f"invalid value '{raw}' for '--port <PORT>': "
                           f"{raw} is not in 0..=65535", usage=False)


def parse_args(argv: Sequence[str]) -> WorkerArgs:
    """clap-like parsing: `--flag value` or `--flag=value`, each flag once, unknown → exit 2."""
    specs = {flag: (name, required) for flag, name, required in _OPTIONS}
    values: dict[str, str] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok in ("-h", "--help"):
            raise CliExit(0, HELP)
        if tok in ("-V", "--version"):
            raise CliExit(0, f"{PROG} {_pkg_version}\n")
        flag, eq, inline = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        if flag not in specs:
            raise _usage_error(f"unexpected argument '{flag if tok.startswith('-') else tok}' "
                               "found")
        name, _ = specs[flag]
        if flag in values:
            raise _usage_error(f"the argument '{flag} <{name}>' cannot be used multiple times")
        if eq:
            value = inline
        elif i < len(argv) and not argv[i].startswith("--"):
            value = argv[i]
            i += 1
        else:
            raise _usage_error(f"a value is required for '{flag} <{name}>' but none was supplied",
                               usage=False)
        if flag == "--port":
            _check_port(value)
        values[flag] = value
    missing = [f"  {flag} <{name}>" for flag, name, req in _OPTIONS if req and flag not in values]
    if missing:
        raise _usage_error("the following required arguments were not provided:\n"
                           + "\n".join(missing))
    return WorkerArgs(worker_id=values["--worker-id"], model=Path(values["--model"]),
                      port=int(values["--port"]),
                      callback_url=values["--callback-url"],
                      host=values.get("--host", "127.0.0.1"))


class StartupError(Exception):
    """Start-up failed: printed as `Error: <message>` (anyhow style), exit status 1."""


def send_ready_callback(args: WorkerArgs, log: JsonLogger, vram_bytes: int) -> None:
    if TEST_MODE_CALLBACK in args.callback_url:
        log.info("Test mode: skipping ready callback", callback_url=args.callback_url)
        return
    payload = {"worker_id": args.worker_id, "vram_bytes": vram_bytes,
               "uri": f"http://localhost:{args.port}"}
    try:
        with local_client(CALLBACK_TIMEOUT_S) as client:
            resp = client.post(args.callback_url, json=payload)
    except httpx.HTTPError as err:
        raise StartupError(f"Failed to send ready callback to {args.callback_url}: {err}") from err
    if not resp.is_success:
        raise StartupError(f"Ready callback failed with status {resp.status_code} "
                           f"{resp.reason_phrase}".rstrip())
    log.info("Callback sent", callback_url=args.callback_url, status=resp.status_code)


def _sleep_forever() -> None:
    while True:
        time.sleep(3600)


def run_worker(args: WorkerArgs, faults: Faults, log: JsonLogger) -> int:
    from .engine import Engine  # heavy imports (numpy, tokenizers) after argument checks
    from .server import VRAM_BYTES, InferenceService, ServerContext, WorkerHTTPServer

    log.info("Starting llorch-candled worker", worker_id=args.worker_id, model=str(args.model),
             port=args.port, backend="cpu")
    if faults.active:
        log.warn("Test-only fault switches active", faults=",".join(faults.active), env=ENV_VAR)
    try:
        engine = Engine.load(args.model)
    except Exception as err:
        raise StartupError(f"Failed to load model: {err}") from err
    log.info("Model loaded successfully", model=engine.model_name, vocab_size=engine.vocab_size,
             max_context=engine.max_context)
    service = InferenceService(engine, faults, log)
    if faults.warmup_pollution:
        service.warm_up()
    if faults.never_ready:
        log.info("never_ready fault: no callback, no bind")
        _sleep_forever()
    if faults.slow_start > 0:
        time.sleep(faults.slow_start)
    send_ready_callback(args, log, VRAM_BYTES)

    ctx = ServerContext(service=service, log=log, worker_id=args.worker_id,
                        model_name=engine.model_name, faults=faults)
    try:
        server = WorkerHTTPServer(args.host, args.port, ctx)
    except OSError as err:
        raise StartupError(f"Failed to bind {args.host}:{args.port}: {err}") from err
    stop: list[bool] = []  # a plain flag: a signal handler must not take locks
    if not faults.ignore_signals:
        signal.signal(signal.SIGINT, lambda _s, _f: stop.append(True))
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                               name="http", daemon=True)
    serving.start()
    host, port = server.server_address[:2]
    log.info("Server listening", addr=f"{host}:{port}", worker_id=args.worker_id)
    while not stop:
        time.sleep(0.01)  # short: a graceful stop should cost the harness milliseconds
    log.info("Shutting down", worker_id=args.worker_id)
    server.shutdown()
    server.begin_close()
    server.server_close()  # joins the in-flight request threads
    log.info("Server stopped", worker_id=args.worker_id)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
    except CliExit as done:
        (sys.stdout if done.code == 0 else sys.stderr).write(done.text)
        return done.code
    try:
        faults = parse_faults(os.environ.get(ENV_VAR))
    except FaultSpecError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    if faults.ignore_signals:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        # Until the server listens, Ctrl-C kills the process outright (as the Rust binary).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    log = JsonLogger()
    try:
        return run_worker(args, faults, log)
    except StartupError as err:
        print(f"Error: {err}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
