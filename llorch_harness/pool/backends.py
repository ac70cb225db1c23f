"""The one backend table, the one binary lookup, and hardware detection.

The real workers are one binary per backend with its own device flag (see the
contract), unlike the CP3 sketch's single `llorch-candled --backend X --gpu N`.
`BACKENDS` is the ONE place that knows backend names, binary names, device flags and
which backends need a GPU; every list of backends in the harness (CLI choices, the pools
file, the gate's markers and its order of preference) derives from it. Replace an entry
(or the whole dict) to adapt the harness to another build.
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

from llorch_harness.choices import UnknownName
from llorch_harness.errors import HarnessError

BIN_DIR_ENV = "LLORCH_BIN_DIR"
_NVIDIA_GPUS_DIR = Path("/proc/driver/nvidia/gpus")
_PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class BackendSpec:
    """One backend: its worker's binary names (preferred first), its device flag (None: no
    device, the CPU), and what the gate prefers when one backend stands for the pool."""

    name: str
    binaries: tuple[str, ...]
    device_flag: str | None
    preference: int  # lower first: a GPU backend speaks for a pool before the CPU does

    @property
    def gpu(self) -> bool:
        """Does the backend run on a GPU (a device index, a pool of its own in CP3)?"""
        return self.device_flag is not None

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
    "cpu": BackendSpec("cpu", ("llorch-cpu-candled", "llorch-candled"), None, 2),
    "cuda": BackendSpec("cuda", ("llorch-cuda-candled",), "--cuda-device", 1),
    "metal": BackendSpec("metal", ("llorch-metal-candled",), "--metal-device", 0),
}
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)  # ("cpu", "cuda", "metal")
GPU_BACKENDS: tuple[str, ...] = tuple(
    sorted((n for n, s in BACKENDS.items() if s.gpu), key=lambda n: BACKENDS[n].preference))
PREFERENCE: tuple[str, ...] = tuple(sorted(BACKENDS, key=lambda n: BACKENDS[n].preference))
CPU = "cpu"  # the backend every machine has (the reference worker runs only there)


def get_backend(name: str) -> BackendSpec:
    spec = BACKENDS.get(name)
    if spec is None:
        raise UnknownName("backend", name, BACKENDS)
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


def locate_binary(backend: str, dirs: Sequence[Path | str]) -> Path | None:
    """The one binary lookup: the first of the backend's names in the first directory that
    has one (directory order wins, the current name before the older one); None if absent."""
    spec = get_backend(backend)
    for d in dirs:
        for name in spec.binaries:
            found = shutil.which(name, path=str(Path(d).expanduser()))
            if found:
                return Path(found).absolute()
    return None


def find_binary(backend: str, bin_dir: Path | str | None = None) -> Path:
    """The backend's binary in --llorch-bin-dir (else $LLORCH_BIN_DIR), then PATH."""
    spec = get_backend(backend)
    explicit = bin_dir if bin_dir not in (None, "") else os.environ.get(BIN_DIR_ENV)
    if explicit and not Path(explicit).expanduser().is_dir():
        raise HarnessError(
            f"llorch bin dir {explicit} is not a directory",
            f"fix --llorch-bin-dir or ${BIN_DIR_ENV}",
            exit_code=2,
        )
    found = locate_binary(backend, search_dirs(bin_dir))
    if found is not None:
        return found
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


def absent_reasons(found: dict[str, str] | None = None) -> dict[str, str | None]:
    """Every backend: None when this machine has it, else why not (a skip reason's words)."""
    found = detect_backends() if found is None else found
    why_not = {
        "cpu": "no CPU backend detected",
        "cuda": ("no NVIDIA GPU visible (nvidia-smi not found)" if shutil.which("nvidia-smi")
                 is None else "no NVIDIA GPU visible (nvidia-smi lists no GPU)"),
        "metal": "not Apple Silicon macOS (Metal needs an arm64 Mac)",
    }
    return {name: None if name in found else why_not.get(name, f"{name}: not detected")
            for name in BACKENDS}


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
