"""What a performance record was measured on, and which records are comparable.

Why: a figure means something only against runs on the same pool, device, driver, OS,
model files, harness and measuring protocol. Everything but the worker binary goes into
the baseline key: a new worker build is exactly what is being compared; anything else
changing (a driver update, another model revision, a new harness) starts a new history.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 2  # 2: every load answers its warm-up and measured requests
NOT_IN_KEY = ("worker_binary_sha256",)  # what a baseline may differ in


@dataclass(frozen=True)
class Protocol:
    """How a gate run measures: `loads` fresh workers one after the other, each answering
    `warmups` requests (excluded) and then `requests` measured ones, so every figure has
    at least 5 samples, from 5 worker lives (figures.MIN_SAMPLES)."""

    prompt: str = "Hello, how are you?"  # the seed's request
    max_tokens: int = 20  # the seed's request
    requests: int = 2  # per load
    loads: int = 5
    warmups: int = 1  # per load

    def label(self, parallel: int = 1) -> str:
        digest = hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()[:8]
        return (f"perf/{PROTOCOL_VERSION} loads={self.loads} warmups={self.warmups} "
                f"requests={self.requests}/load max_tokens={self.max_tokens} prompt={digest} "
                f"greedy parallel={parallel}")


DEFAULT_PROTOCOL = Protocol()


def fingerprint(*, pool: str, lab: str, model: str, backend: str,
                device: Mapping[str, Any], worker_kind: str, binary_sha256: str | None,
                model_revision: str | None, model_files: Mapping[str, str],
                harness_version: str, protocol: str) -> dict[str, Any]:
    """The record's fingerprint (JSON-able, stable key order)."""
    return {
        "pool": pool, "lab": lab, "model": model, "backend": backend,
        "device": device.get("name"), "gpu": device.get("gpu"),
        "driver": device.get("driver_version"), "os": device.get("os"),
        "worker_kind": worker_kind, "worker_binary_sha256": binary_sha256,
        "model_revision": model_revision, "model_files": dict(sorted(model_files.items())),
        "harness_version": harness_version, "protocol": protocol,
    }


def baseline_key(fp: Mapping[str, Any]) -> str:
    """Records with equal keys are compared: the fingerprint minus the worker binary."""
    kept = {k: v for k, v in fp.items() if k not in NOT_IN_KEY}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Names of the fingerprint fields two records differ in (for people: why no baseline)."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
