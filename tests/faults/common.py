"""Counts, paths and process bookkeeping shared by the fault tests.

`LLORCH_FAULT_SCALE=full` gives the issue's counts (run by tests/faults/run_full.py);
anything else gives the reduced CI counts. Every test records its figures through
`figure()` so run_full.py can put them in RESULTS.md.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

SCALE_ENV = "LLORCH_FAULT_SCALE"
FIGURES_ENV = "LLORCH_FAULT_FIGURES"  # a JSONL file run_full.py reads back
FULL = os.environ.get(SCALE_ENV, "reduced").strip().lower() == "full"

# name: (reduced, full)
_COUNTS: dict[str, tuple[int, int]] = {
    "catalog_procs": (4, 8),
    "catalog_updates": (10, 50),
    "catalog_kills": (6, 40),
    "stale_records": (10, 110),
    "hub_corruptions": (2, 20),
    "disk_corruptions": (8, 80),
    "download_kills": (2, 6),
    "orphan_cycles": (1, 20),
    "hang_requests": (1, 5),
    "forgers_per_kind": (1, 4),  # issue 20 #3: forged-marker processes per forgery kind
    "redaction_fuzz": (300, 5000),  # issue 20 #1: random secrets per carrier form
    "deadline_rounds": (1, 3),
}

PYTHON = sys.executable
BIN = Path(sys.executable).parent
LLORCH_POOL = BIN / "llorch-pool"
LLORCH = BIN / "llorch"
REPO_ROOT = Path(__file__).resolve().parents[2]
ANTI_HANG_S = 120.0  # generous: guards against hangs, never a performance assertion


def count(name: str) -> int:
    reduced, full = _COUNTS[name]
    return full if FULL else reduced


def figure(test: str, **values: Any) -> None:
    """Append one line of figures for RESULTS.md (no-op unless run_full.py asked for them)."""
    target = os.environ.get(FIGURES_ENV)
    if not target:
        return
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"test": test, "time": time.time(), **values}) + "\n")


def clean_env(**extra: str) -> dict[str, str]:
    """A child environment without hub logins, pool roots or harness markers."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING", "LLORCH_POOL_ROOT", "LLORCH_HARNESS_"))}
    env.update({
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_COLOR": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.update(extra)
    return env


def marked_under(prefix: Path) -> list[psutil.Process]:
    """Live processes whose harness pool marker lies under `prefix`."""
    root = str(prefix.resolve())
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.Error, OSError):
            continue
        pool = env.get("LLORCH_HARNESS_POOL", "")
        if pool.startswith(root) and proc.pid != os.getpid():
            found.append(proc)
    return found


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(procs, timeout=5)


def descendants() -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process().children(recursive=True)
                if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return []


def wait_for(pred: Any, timeout: float, what: str, poll: float = 0.02) -> None:
    """Poll `pred` until true; AssertionError naming `what` after `timeout` (anti-hang)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
