"""Can torch run on a backend's device here? The light question both the spawner and the
reference worker's torch engine ask.

Why in the pool layer: `worker spawn --worker reference` on cuda or metal must refuse before
anything starts when torch does not see the device, and the pool may not import the lab.
torch itself is imported only when the question is asked.
"""

from __future__ import annotations

import importlib.util

ORACLE_HINT = "pip install 'llorch-harness[oracle]'"


def torch_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def default_device(backend: str, index: int = 0) -> str:
    """The torch device of a backend: cuda:N for cuda, mps for metal, else cpu."""
    if backend == "cuda":
        return f"cuda:{index}"
    return "mps" if backend == "metal" else "cpu"


def device_usable(device: str) -> str | None:
    """None when torch can run on `device` here, else why not (one line)."""
    if not torch_available():
        return f"torch and transformers are not installed ({ORACLE_HINT})"
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"torch {torch.__version__} sees no CUDA device"
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            return f"torch sees {torch.cuda.device_count()} CUDA device(s), not {device}"
    elif device == "mps" and not torch.backends.mps.is_available():
        return f"torch {torch.__version__} sees no MPS (Metal) device"
    return None
