"""`llorch-ref-candled`: the reference worker, started like `llorch-{cpu,cuda,metal}-candled`.

Why a hand-made parser instead of argparse's defaults: the harness checks the real binary's
clap behaviour (unknown flag such as `--backend` or, on cpu, `--cuda-device` → exit 2 and a
clap-style usage error), and the reference worker must fail the same way. The persona
(`LLORCH_REF_BACKEND`, persona.py) decides which device flag exists. Start-up itself is in
startup.py. Nothing heavy is imported before `main()` has put SIGINT back to its default
action, so a Ctrl-C during start-up kills the process at once, as it does the Rust binary.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from llorch_harness import __version__ as _pkg_version
from llorch_harness.lab.refworker.faults import ENV_VAR, Faults, FaultSpecError, parse_faults
from llorch_harness.lab.refworker.persona import (
    BACKEND_ENV,
    PERSONAS,
    WIRE_CP3,
    WIRE_ENV,
    Persona,
    SettingError,
    WorkerArgs,
    persona_from_env,
    wire_from_env,
)

PROG = "llorch-ref-candled"
CPU = PERSONAS["cpu"]
__all__ = ["CliExit", "WorkerArgs", "main", "parse_args"]
CP3_ONLY_FAULTS = ("qwen_cache_bug", "cp3_cache", "decode_positions")

# (flag, value name, required)
_OPTIONS: tuple[tuple[str, str, bool], ...] = (
    ("--worker-id", "WORKER_ID", True),
    ("--model", "MODEL", True),
    ("--port", "PORT", True),
    ("--callback-url", "CALLBACK_URL", True),
    ("--host", "HOST", False),
    ("--engine", "ENGINE", False),  # the reference worker's own: numpy (default) | torch
    ("--device", "DEVICE", False),  # torch engine: cpu | cuda[:N] | mps
)
ENGINE_CHOICES = ("numpy", "torch")


def usage(persona: Persona = CPU) -> str:
    return (f"Usage: {persona.prog} [OPTIONS] --worker-id <WORKER_ID> --model <MODEL> "
            "--port <PORT> --callback-url <CALLBACK_URL>")


def help_text(persona: Persona = CPU) -> str:
    device = ""
    if persona.device_flag:
        arg = f"{persona.device_flag} <{persona.device_value}>"
        pad = " " * max(1, 31 - len(arg))
        device = (f"      {arg}{pad}"
                  f"{persona.backend.upper()} device ID [default: 0]\n")
    return f"""Reference worker speaking the llorch-candled wire ({persona.backend} persona)

{usage(persona)}

Options:
      --worker-id <WORKER_ID>        Worker ID (UUID) assigned by pool-managerd
      --model <MODEL>                Model path (.safetensors file or directory)
      --port <PORT>                  HTTP server port
      --callback-url <CALLBACK_URL>  Pool manager callback URL
{device}      --host <HOST>                  Address to bind [default: 127.0.0.1]
      --engine <ENGINE>              Inference engine: numpy (cpu) or torch [default: numpy]
      --device <DEVICE>              torch device: cpu, cuda[:N], mps [default: the backend's]
  -h, --help                         Print help
  -V, --version                      Print version

Test-only environment: ${ENV_VAR} (fault switches), ${BACKEND_ENV} (cpu|cuda|metal),
${WIRE_ENV} (cp3|legacy); see docs/reference-worker.md.
"""


class CliExit(Exception):
    """Parsing ended: print `text` to stdout (code 0) or stderr, exit with `code`."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def _usage_error(message: str, persona: Persona, usage_line: bool = True) -> CliExit:
    tail = f"\n\n{usage(persona)}" if usage_line else ""
    return CliExit(2, f"error: {message}{tail}\n\nFor more information, try '--help'.\n")


def _check_uint(flag: str, name: str, raw: str, limit: int | None, persona: Persona) -> None:
    """clap's u16 / usize value parsers: the value is checked as soon as it is read."""
    if not raw.isascii() or not raw.isdigit():
        raise _usage_error(f"invalid value '{raw}' for '{flag} <{name}>': "
                           "invalid digit found in string", persona, usage_line=False)
    if limit is not None and int(raw) > limit:
        raise _usage_error(f"invalid value '{raw}' for '{flag} <{name}>': "
                           f"{raw} is not in 0..={limit}", persona, usage_line=False)


def _check_engine(flag: str, name: str, raw: str, persona: Persona) -> None:
    """clap's value parsers for --engine (a choice) and --device (torch's spelling)."""
    if flag == "--engine" and raw not in ENGINE_CHOICES:
        raise _usage_error(f"invalid value '{raw}' for '{flag} <{name}>'\n  [possible values: "
                           f"{', '.join(ENGINE_CHOICES)}]", persona, usage_line=False)
    if flag == "--device":
        from llorch_harness.lab.refworker.torch_engine import parse_device

        try:
            parse_device(raw)
        except ValueError as err:
            raise _usage_error(f"invalid value '{raw}' for '{flag} <{name}>': {err}", persona,
                               usage_line=False) from None


def _options(persona: Persona) -> tuple[tuple[str, str, bool], ...]:
    if persona.device_flag and persona.device_value:
        return (*_OPTIONS, (persona.device_flag, persona.device_value, False))
    return _OPTIONS


def _read_values(argv: Sequence[str], persona: Persona) -> dict[str, str]:
    """`--flag value` or `--flag=value`, each flag once; unknown → exit 2."""
    specs = {flag: name for flag, name, _ in _options(persona)}
    values: dict[str, str] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok in ("-h", "--help"):
            raise CliExit(0, help_text(persona))
        if tok in ("-V", "--version"):
            raise CliExit(0, f"{persona.prog} {_pkg_version}\n")
        flag, eq, inline = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        if flag not in specs:
            raise _usage_error(f"unexpected argument '{flag if tok.startswith('-') else tok}' "
                               "found", persona)
        name = specs[flag]
        if flag in values:
            raise _usage_error(f"the argument '{flag} <{name}>' cannot be used multiple times",
                               persona)
        if eq:
            value = inline
        elif i < len(argv) and not argv[i].startswith("--"):
            value = argv[i]
            i += 1
        else:
            raise _usage_error(f"a value is required for '{flag} <{name}>' but none was "
                               "supplied", persona, usage_line=False)
        if flag == "--port":
            _check_uint(flag, name, value, 65535, persona)
        elif flag == persona.device_flag:
            _check_uint(flag, name, value, None, persona)
        elif flag in ("--engine", "--device"):
            _check_engine(flag, name, value, persona)
        values[flag] = value
    return values


def parse_args(argv: Sequence[str], persona: Persona = CPU) -> WorkerArgs:
    """clap-like parsing of the persona's command line."""
    values = _read_values(argv, persona)
    missing = [f"  {flag} <{name}>" for flag, name, req in _options(persona)
               if req and flag not in values]
    if missing:
        raise _usage_error("the following required arguments were not provided:\n"
                           + "\n".join(missing), persona)
    device = int(values[persona.device_flag]) if persona.device_flag in values else 0
    return WorkerArgs(worker_id=values["--worker-id"], model=Path(values["--model"]),
                      port=int(values["--port"]), callback_url=values["--callback-url"],
                      host=values.get("--host", "127.0.0.1"), device=device,
                      engine=values.get("--engine", "numpy"),
                      torch_device=values.get("--device"))


def _settings() -> tuple[Persona, str, Faults]:
    """The test-only environment; a bad value raises SettingError or FaultSpecError."""
    persona = persona_from_env(os.environ)
    wire = wire_from_env(os.environ)
    faults = parse_faults(os.environ.get(ENV_VAR))
    if wire != WIRE_CP3:
        wrong = [name for name in CP3_ONLY_FAULTS if getattr(faults, name)]
        if wrong:
            raise SettingError(f"fault '{wrong[0]}' needs {WIRE_ENV}={WIRE_CP3} (got '{wire}')")
    return persona, wire, faults


def _default_sigint() -> None:
    """Ctrl-C kills at once until the server listens (the Rust binary installs its handler
    only after the bind). An inherited SIG_IGN stays ignored, as it does for Rust."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    _default_sigint()
    try:
        persona, wire, faults = _settings()
    except (SettingError, FaultSpecError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv), persona)
    except CliExit as done:
        (sys.stdout if done.code == 0 else sys.stderr).write(done.text)
        return done.code
    if faults.ignore_signals:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from llorch_harness.lab.refworker.startup import (  # numpy, tokenizers, httpx: after the checks
        StartupError,
        run_worker,
    )

    try:
        return run_worker(args, persona, wire, faults)
    except StartupError as err:
        print(f"Error: {err}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
