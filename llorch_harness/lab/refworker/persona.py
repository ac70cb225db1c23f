"""Which real binary the reference worker plays, and which wire format it speaks.

Why: the harness's tests install the reference worker under the names
`llorch-cuda-candled` / `llorch-metal-candled` (a CPU machine has neither), so it must take
that binary's device flag, log that binary's start-up lines, run its GPU warm-up pass and
report its `vram_bytes`. Test-only environment variables (never set them for a gate run):

- `LLORCH_REF_BACKEND` = `cpu` (default) | `cuda` | `metal`: the persona.
- `LLORCH_REF_WIRE` = `cp3` (default: exactly what llorch-candled at CP3 sends) |
  `legacy` (the reference worker's older format: one token event per sampled token,
  lower-case stop reasons, a `metrics` event, stop strings and EOS from config honoured),
  kept so that tests written for other worker builds still have a stand-in.

Start-up texts are those of `src/bin/{cpu,cuda,metal}.rs` and `src/device.rs` at CP3.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llorch_harness.lab.refworker import narration
from llorch_harness.lab.refworker.logs import JsonLogger

BACKEND_ENV = "LLORCH_REF_BACKEND"
WIRE_ENV = "LLORCH_REF_WIRE"
WIRE_CP3 = "cp3"
WIRE_LEGACY = "legacy"
WIRES = (WIRE_CP3, WIRE_LEGACY)


@dataclass(frozen=True)
class WorkerArgs:
    """The parsed command line (__main__.py's `parse_args`)."""

    worker_id: str
    model: Path
    port: int
    callback_url: str
    host: str = "127.0.0.1"
    device: int = 0  # --cuda-device / --metal-device (0 on cpu)
    engine: str = "numpy"  # --engine numpy | torch (torch_engine.py)
    torch_device: str | None = None  # --device cpu | cuda[:N] | mps; None: the persona's


class SettingError(ValueError):
    """A test-only environment variable holds an unknown value (exit status 2)."""


@dataclass(frozen=True)
class Persona:
    """One real binary: its name, device flag and start-up log texts."""

    backend: str  # cpu | cuda | metal
    device_flag: str | None  # "--cuda-device" / "--metal-device"; None for cpu
    device_value: str | None  # clap's value name, e.g. "CUDA_DEVICE"
    load_message: str
    loaded_message: str
    warmup_done_message: str | None  # None: no warm-up pass

    @property
    def binary(self) -> str:
        return f"llorch-{self.backend}-candled"

    @property
    def prog(self) -> str:
        """The name clap prints in usage errors (cpu keeps the console script's name)."""
        return "llorch-ref-candled" if self.backend == "cpu" else self.binary

    @property
    def has_warmup(self) -> bool:
        return self.warmup_done_message is not None

    def vram_bytes(self, model_size_bytes: int) -> int:
        """`vram_usage()` (`/health`): the model size when built with cuda, else 0."""
        return model_size_bytes if self.backend == "cuda" else 0

    def log_start(self, log: JsonLogger, worker_id: str, model: str, port: int,
                  device: int) -> None:
        fields: dict[str, Any] = {"worker_id": worker_id, "model": model, "port": port}
        if self.backend == "cuda":
            fields["cuda_device"] = device
        elif self.backend == "metal":
            fields["metal_device"] = device
        fields["backend"] = self.backend
        if self.backend == "metal":
            fields["status"] = "pre-release"
        log.info(f"Starting {self.binary}", **fields)

    def log_device(self, log: JsonLogger, device: int) -> None:
        """STEP 1 of the binary: init and verify the device (device.rs logs twice)."""
        if self.backend == "cpu":
            log.info("Initializing CPU device")
            log.info("Initializing CPU device")
            narration.device_init(log, "cpu", device)
            log.info("Device verification passed: Cpu")
            log.info("CPU device initialized and verified")
        elif self.backend == "cuda":
            log.info("Initializing CUDA device", cuda_device=device)
            log.info(f"Initializing CUDA device {device}")
            narration.device_init(log, "cuda", device)
            log.info("Device verification passed: Cuda(CudaDevice(DeviceId(1)))")
            log.info(f"CUDA device {device} initialized and verified")
        else:
            log.info("Initializing Apple Metal device (GPU)", metal_device=device)
            log.info(f"Initializing Apple Metal device (GPU) {device}")
            narration.device_init(log, "metal", device)
            log.info("Device verification passed: Metal(MetalDevice(DeviceId(1)))")
            log.info(f"Metal device {device} initialized and verified")

    def ready_message(self, port: int, device: int) -> str:
        if self.backend == "cuda":
            return f"{self.binary} ready on port {port} (GPU {device})"
        if self.backend == "metal":
            return f"{self.binary} ready on port {port} (Metal GPU {device})"
        return f"{self.binary} ready on port {port}"


PERSONAS: dict[str, Persona] = {
    "cpu": Persona("cpu", None, None, "Loading model...", "Model loaded successfully", None),
    "cuda": Persona("cuda", "--cuda-device", "CUDA_DEVICE", "Loading model to GPU...",
                    "Model loaded successfully on GPU",
                    "GPU warmup complete - ready for inference"),
    "metal": Persona("metal", "--metal-device", "METAL_DEVICE", "Loading model to Metal GPU...",
                     "Model loaded successfully on Metal GPU",
                     "Metal GPU warmup complete - ready for inference"),
}


def persona_from_env(env: Mapping[str, str]) -> Persona:
    """`LLORCH_REF_BACKEND`; unset or empty means cpu."""
    name = env.get(BACKEND_ENV, "").strip() or "cpu"
    if name not in PERSONAS:
        raise SettingError(f"unknown {BACKEND_ENV} value '{name}' (known: cpu, cuda, metal)")
    return PERSONAS[name]


def wire_from_env(env: Mapping[str, str]) -> str:
    """`LLORCH_REF_WIRE`; unset or empty means cp3."""
    name = env.get(WIRE_ENV, "").strip() or WIRE_CP3
    if name not in WIRES:
        raise SettingError(f"unknown {WIRE_ENV} value '{name}' (known: cp3, legacy)")
    return name
