"""Test-only fault switches (env `LLORCH_REF_FAULTS`) that make the reference worker misbehave
the way real llorch-candled builds have misbehaved.

Why: the harness's own tests must prove that its gate checks *fail* on a broken worker
(broadcasting errors, silent drift, panics, hangs, signal-deaf processes), including the
two bugs the real llorch-candled has at CP3 (`qwen_cache_bug`, `decode_positions`). All switches are
off unless the variable is set; never set it for a real gate run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

ENV_VAR = "LLORCH_REF_FAULTS"

FLAG_NAMES: tuple[str, ...] = (
    "broadcast",
    "drift",
    "panic_after_first",
    "never_ready",
    "ignore_signals",
    "warmup_pollution",
    "nan",
    "stall",
    "qwen_cache_bug",
    "cp3_cache",
    "decode_positions",
    "wrong_rope_base",
    "swapped_layers",
    "concurrent_drift",
    "dirty_after_reject",
    "dirty_after_failure",
    "context_edge",
)
# `context_edge`: prompts of this many tokens or more fail (buffers sized for fewer positions)
CONTEXT_EDGE_TOKENS = 1024


def context_edge(context: int) -> int:
    """Where `context_edge` starts failing: 1024 positions, or 3/4 of a smaller context."""
    return min(CONTEXT_EDGE_TOKENS, context * 3 // 4)
# `token_delay=SECONDS`: every generated token costs that much more (slept once per request,
# after the generation), so request time per generated token as a client times it rises by
# exactly SECONDS: a build "F times slower" by that figure, whatever the HTTP layer costs.
VALUE_NAMES: tuple[str, ...] = ("slow_start", "slow_execute", "token_delay")
# `slow_decode=F`: every decode step takes F times as long (the prompt's pass keeps its
# speed), a build that "decodes slower" by a known factor for the performance check.
# `slow=F`: every request's handling (prompt, decoding, events, logs) takes F times as long,
# a build whose requests are F times slower as a client times them (the HTTP layer aside).
FACTOR_NAMES: tuple[str, ...] = ("slow_decode", "slow")


class FaultSpecError(ValueError):
    """`LLORCH_REF_FAULTS` names a switch that does not exist or has a bad value."""


@dataclass(frozen=True)
class Faults:
    """Which faults are on. Every field defaults to off."""

    broadcast: bool = False
    drift: bool = False
    panic_after_first: bool = False
    never_ready: bool = False
    ignore_signals: bool = False
    warmup_pollution: bool = False
    nan: bool = False
    stall: bool = False
    # The two CP3 bugs of llorch-candled's Qwen path (docs/reference-worker.md):
    # the KV cache is never reset (prompts of 2+ tokens fail on a non-empty cache), and
    # decode steps run at positions 1, 2, ... (the loop index) instead of prompt_len, ...
    qwen_cache_bug: bool = False
    # CP3's cache resets per architecture, as the real worker has them: Llama resets, Qwen and
    # Mistral never (qwen_cache_bug's behaviour for those two only), Phi keeps its own.
    cp3_cache: bool = False
    decode_positions: bool = False
    # Deterministic but wrong models (the reference check must catch them): RoPE computed
    # with a base 100 times too small; the weights of layers 0 and 1 loaded into each other.
    wrong_rope_base: bool = False
    swapped_layers: bool = False
    # Determinism axes (issue 26): output that depends on requests overlapping, state left by
    # a rejected (400/422) or a failed request, and prompts near the limit the worker accepts.
    concurrent_drift: bool = False  # a request that waited for another runs on its cache
    dirty_after_reject: bool = False  # the request after a 400/422 runs on a stale cache
    dirty_after_failure: bool = False  # the request after an error event does too
    context_edge: bool = False  # prompts of CONTEXT_EDGE_TOKENS tokens or more fail
    slow_start: float = 0.0
    slow_execute: float = 0.0
    token_delay: float = 0.0  # seconds per generated token
    slow_decode: float = 0.0  # a factor >= 1; 0 means off
    slow: float = 0.0  # a factor >= 1 on each request's handling; 0 means off

    @property
    def active(self) -> list[str]:
        """Names of the switches that are on, in a stable order (for the start-up WARN line)."""
        names = [n for n in FLAG_NAMES if getattr(self, n)]
        names += [f"{n}={getattr(self, n):g}" for n in (*VALUE_NAMES, *FACTOR_NAMES)
                  if getattr(self, n) > 0]
        return names

    @property
    def reuses_cache(self) -> bool:
        """True when requests may run on a KV cache left over from an earlier pass."""
        return self.broadcast or self.drift or self.warmup_pollution


def parse_faults(spec: str | None) -> Faults:
    """Parse `name,name,slow_start=SECONDS`; empty or None means no faults."""
    flags: dict[str, bool | float] = {}
    for raw in (spec or "").split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if name in FLAG_NAMES:
            if sep:
                raise FaultSpecError(f"fault '{name}' takes no value (got '{item}')")
            flags[name] = True
        elif name in VALUE_NAMES:
            try:
                seconds = float(value)
            except ValueError:
                seconds = math.nan
            if not sep or not math.isfinite(seconds) or seconds < 0:
                raise FaultSpecError(
                    f"fault '{name}' needs a number of seconds >= 0, e.g. {name}=2 (got '{item}')"
                )
            flags[name] = seconds
        elif name in FACTOR_NAMES:
            flags[name] = _factor(name, value if sep else "", item)
        else:
            known = ", ".join((*FLAG_NAMES, *(f"{v}=SECONDS" for v in VALUE_NAMES),
                               *(f"{v}=FACTOR" for v in FACTOR_NAMES)))
            raise FaultSpecError(f"unknown fault '{name}' in {ENV_VAR} (known: {known})")
    return Faults(**flags)  # type: ignore[arg-type]


def _factor(name: str, value: str, item: str) -> float:
    try:
        factor = float(value)
    except ValueError:
        factor = math.nan
    if not math.isfinite(factor) or factor < 1:
        raise FaultSpecError(f"fault '{name}' needs a factor >= 1, e.g. {name}=3 (got '{item}')")
    return factor


def faults_from_env(env: Mapping[str, str]) -> Faults:
    return parse_faults(env.get(ENV_VAR))


def apply_model_faults(model: Any, faults: Faults) -> None:
    """Make a loaded numpy Qwen2 model wrong the ways `wrong_rope_base` and `swapped_layers`
    say; the output stays deterministic, so only an independent reference can tell."""
    if faults.wrong_rope_base:
        theta = float(model.config.rope_theta)
        exponents = -np.log(model._inv_freq) / np.log(theta)  # inv_freq = theta ** -exponent
        model._inv_freq = np.power(np.float32(theta / 100.0), -exponents).astype(np.float32)
    if faults.swapped_layers and len(model.layers) >= 2:
        model.layers[0], model.layers[1] = model.layers[1], model.layers[0]
    if faults.slow_decode > 1:
        _slow_decode(model, faults.slow_decode)


def _slow_decode(model: Any, factor: float) -> None:
    """Each one-token forward pass (a decode step) waits (factor - 1) times its own time."""
    forward = model.forward

    def slowed(token_ids: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = forward(token_ids, *args, **kwargs)
        if len(token_ids) == 1:
            time.sleep((factor - 1.0) * (time.perf_counter() - t0))
        return out

    model.forward = slowed
