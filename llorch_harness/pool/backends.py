"""Backend table and hardware detection.

The real workers are one binary per backend with its own device flag (see the
contract), unlike the CP3 sketch's single `llorch-candled --backend X --gpu N`.
`BACKENDS` is the ONE place that knows binary names and command lines; replace
an entry (or the whole dict) to adapt the harness to another build.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llorch_harness.errors import HarnessError

BIN_DIR_ENV = "LLORCH_BIN_DIR"
_NVIDIA_GPUS_DIR = Path("/proc/driver/nvidia/gpus")
_PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class BackendSpec:
    """How to start the worker of one backend: binary names (preferred first) and device flag."""

    name: str
    binaries: tuple[str, ...]
    device_flag: str | None

    def command(
        self, binary: str | Path, *, worker_id: str, model: str | Path, port: int,
        callback_url: str, gpu: int = 0,
    ) -> list[str]:
        """The contract's argv: the four required flags, then the device flag (not for cpu)."""
        argv = [
            str(binary), "--worker-id", worker_id, "--model", str(model),
            "--port", str(port), "--callback-url", callback_url,
        ]
        if self.device_flag:
            argv += [self.device_flag, str(gpu)]
        return argv


BACKENDS: dict[str, BackendSpec] = {
    "cpu": BackendSpec("cpu", ("llorch-cpu-candled", "llorch-candled"), None),
    "cuda": BackendSpec("cuda", ("llorch-cuda-candled",), "--cuda-device"),
    "metal": BackendSpec("metal", ("llorch-metal-candled",), "--metal-device"),
}


def get_backend(name: str) -> BackendSpec:
    spec = BACKENDS.get(name)
    if spec is None:
        raise HarnessError(
            f"unknown backend {name!r}", f"choose one of: {', '.join(BACKENDS)}", exit_code=2
        )
    return spec


def search_dirs(bin_dir: Path | str | None = None) -> list[Path]:
    """--llorch-bin-dir (else $LLORCH_BIN_DIR) first, then every PATH entry."""
    dirs: list[Path] = []
    first = bin_dir if bin_dir not in (None, "") else os.environ.get(BIN_DIR_ENV)
    if first:
        dirs.append(Path(first).expanduser())
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry:
            dirs.append(Path(entry))
    return dirs


def find_binary(backend: str, bin_dir: Path | str | None = None) -> Path:
    """The backend's binary; directory order wins, the current name before the older one."""
    spec = get_backend(backend)
    explicit = bin_dir if bin_dir not in (None, "") else os.environ.get(BIN_DIR_ENV)
    if explicit and not Path(explicit).expanduser().is_dir():
        raise HarnessError(
            f"llorch bin dir {explicit} is not a directory",
            f"fix --llorch-bin-dir or ${BIN_DIR_ENV}",
            exit_code=2,
        )
    for d in search_dirs(bin_dir):
        for name in spec.binaries:
            found = shutil.which(name, path=str(d))
            if found:
                return Path(found).absolute()
    where = (f"{explicit} and PATH" if explicit
             else f"PATH (no --llorch-bin-dir, ${BIN_DIR_ENV} unset)")
    raise HarnessError(
        f"no {' or '.join(spec.binaries)} binary for backend {backend} in {where}",
        f"build it (cargo build --release --features {backend}) and pass --llorch-bin-dir DIR",
    )


def _run(argv: Sequence[str]) -> str | None:
    """stdout of a probe command, or None when it is missing, fails or hangs."""
    try:
        res = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def _nvidia_gpus() -> list[str]:
    out = _run(["nvidia-smi", "-L"])
    gpus = [ln.strip() for ln in (out or "").splitlines() if ln.strip().startswith("GPU ")]
    if gpus:
        return gpus
    try:
        return sorted(p.name for p in _NVIDIA_GPUS_DIR.iterdir())
    except OSError:
        return []


def _is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def detect_backends() -> dict[str, str]:
    """Backends this machine can run, each with the reason we believe it."""
    found = {"cpu": f"{platform.machine() or 'cpu'}, {os.cpu_count() or '?'} logical cores"}
    gpus = _nvidia_gpus()
    if gpus:
        found["cuda"] = f"{len(gpus)} NVIDIA GPU(s): " + "; ".join(gpus)
    if _is_apple_silicon():
        found["metal"] = f"Apple Silicon macOS {platform.mac_ver()[0] or '?'}"
    return found


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        out = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
        if out and out.strip():
            return out.strip()
    return platform.processor() or platform.machine() or "unknown"


def device_info(backend: str, gpu: int = 0) -> dict[str, str | int | None]:
    """What a result is measured on: device name, driver version where knowable."""
    get_backend(backend)
    info: dict[str, str | int | None] = {
        "backend": backend, "gpu": gpu, "name": None, "driver_version": None,
        "memory_total": None, "os": f"{platform.system()} {platform.release()}",
    }
    if backend == "cpu":
        info["name"] = _cpu_model()
    elif backend == "cuda":
        out = _run([
            "nvidia-smi", f"--id={gpu}", "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader",
        ])
        first = (out or "").strip().splitlines()
        if first:
            parts = [p.strip() for p in first[0].split(",")]
            info["name"] = parts[0] if parts else None
            info["driver_version"] = parts[1] if len(parts) > 1 else None
            info["memory_total"] = parts[2] if len(parts) > 2 else None
    elif backend == "metal":
        info["name"] = _cpu_model() if sys.platform == "darwin" else None
        if sys.platform == "darwin":
            info["driver_version"] = f"macOS {platform.mac_ver()[0]}"
    return info
