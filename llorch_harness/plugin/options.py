"""The gate's options: one table (command line, environment, ini) and their resolution.

Why apart from the lab decision: the thin plugin hooks register every option of this table
in every pytest run, so this module stays light (no lab, no hardware probes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llorch_harness.checks.referencecfg import DEFAULT_DELTA, DEFAULT_TOP_K, REFERENCE_CHOICES
from llorch_harness.choices import check_name
from llorch_harness.pool import backends

BACKEND_ORDER: tuple[str, ...] = backends.PREFERENCE  # for pool-level items: GPUs first
LAB_CHOICES: tuple[str, ...] = ("auto", "embedded", "real")
REAL_GATE_MODEL = "qwen-0.5b"
EMBEDDED_GATE_MODEL = "tiny-qwen"
DEFAULT_READY_TIMEOUT_S = 120.0
DEFAULT_GOLDEN_MIN_PREFIX = 8


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class OptionSpec:
    """One gate option: command line flag, ini key and environment variable."""

    flag: str
    dest: str
    env: str
    help: str
    kind: str = "str"  # str | list | bool | float | int
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def ini(self) -> str:
        return self.dest


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("--lab", "llorch_lab", "LLORCH_LAB",
               "auto (default): real when a llorch-candled binary for a selected backend is "
               "found, else embedded (local hub + reference worker)", choices=LAB_CHOICES),
    OptionSpec("--llorch-bin-dir", "llorch_bin_dir", "LLORCH_BIN_DIR",
               "directory holding llorch-{cpu,cuda,metal}-candled (searched before PATH)",
               metavar="DIR"),
    OptionSpec("--gate-model", "llorch_gate_model", "LLORCH_GATE_MODEL",
               f"catalog id of the gate model (default {REAL_GATE_MODEL} in the real lab, "
               f"{EMBEDDED_GATE_MODEL} in the embedded lab)", metavar="ID"),
    OptionSpec("--gate-models", "llorch_gate_models", "LLORCH_GATE_MODELS",
               "catalog ids of every model the inference checks and the CP4 items run on, the "
               "first being the CP3 gate model (repeatable or comma list; default: the one gate "
               "model)", kind="list", metavar="ID[,ID...]"),
    OptionSpec("--pool-root", "llorch_pool_root", "LLORCH_POOL_ROOT",
               "pool root holding .test-models/ and .runtime/ (real lab default: cwd; "
               "embedded lab default: a fresh directory under pytest's basetemp)", metavar="DIR"),
    OptionSpec("--backend-available", "llorch_backend_available", "LLORCH_BACKEND_AVAILABLE",
               "treat NAME as present, overriding hardware detection (repeatable; env: comma list)",
               kind="list", metavar="NAME"),
    OptionSpec("--require-backend", "llorch_require_backend", "LLORCH_REQUIRE_BACKEND",
               "a missing NAME (hardware or binary) FAILS its tests instead of skipping them "
               "(repeatable; for CI runners)", kind="list", metavar="NAME"),
    OptionSpec("--update-golden", "llorch_update_golden", "LLORCH_UPDATE_GOLDEN",
               "record golden token streams in tests_hw/golden/ instead of comparing",
               kind="bool"),
    OptionSpec("--ready-timeout", "llorch_ready_timeout", "LLORCH_READY_TIMEOUT",
               f"seconds a worker may take to become ready (default {DEFAULT_READY_TIMEOUT_S:g})",
               kind="float", metavar="S"),
    OptionSpec("--llorch-repo", "llorch_repo", "LLORCH_REPO",
               "llama-orch checkout for the Code Quality items (cargo fmt/clippy, signatures, "
               "docs)",
               metavar="DIR"),
    OptionSpec("--llorch-base", "llorch_base", "LLORCH_BASE",
               "commit the checkpoint's work started from: signatures and guides must be in "
               "what base..HEAD added (default: the merge base of HEAD and its upstream)",
               metavar="REF"),
    OptionSpec("--cargo-offline", "llorch_cargo_offline", "LLORCH_CARGO_OFFLINE",
               "run cargo fmt/clippy offline (dependencies from the cargo cache or a vendored "
               "registry)", kind="bool"),
    OptionSpec("--pool-host", "llorch_pool_hosts", "LLORCH_POOL_HOSTS",
               "pool host (or pools.toml name) for the Remote Operations items (repeatable; "
               "env: comma list)", kind="list", metavar="HOST"),
    OptionSpec("--gate-json", "llorch_gate_json", "LLORCH_GATE_JSON",
               "write the gate results (per item and per test) as JSON to PATH", metavar="PATH"),
    OptionSpec("--golden-min-prefix", "llorch_golden_min_prefix", "LLORCH_GOLDEN_MIN_PREFIX",
               "tokens that must agree across backends before they may diverge "
               f"(default {DEFAULT_GOLDEN_MIN_PREFIX})", kind="int", metavar="N"),
    OptionSpec("--reference", "llorch_reference", "LLORCH_REFERENCE",
               "independent implementation the worker's greedy tokens are judged against: auto "
               "(default: transformers when importable, else numpy), transformers, numpy, or off "
               "(shown in the report header and verdict)", choices=REFERENCE_CHOICES),
    OptionSpec("--reference-delta", "llorch_reference_delta", "LLORCH_REFERENCE_DELTA",
               "largest logit gap below the reference's top-1 a worker token may have "
               f"(default {DEFAULT_DELTA:g}; see docs/gate.md)", kind="float", metavar="D"),
    OptionSpec("--reference-top-k", "llorch_reference_top_k", "LLORCH_REFERENCE_TOP_K",
               f"a worker token must also be among the reference's top K (default {DEFAULT_TOP_K})",
               kind="int", metavar="K"),
    OptionSpec("--lease-dir", "llorch_lease_dir", "LLORCH_LEASE_DIR",
               "host-wide directory of GPU leases shared by every run and pool root on this "
               "host (default /tmp/llorch-harness-leases)", metavar="DIR"),
    OptionSpec("--lease-wait", "llorch_lease_wait", "LLORCH_LEASE_WAIT",
               "seconds to wait for a GPU another run holds before its items fail (default 60)",
               kind="float", metavar="S"),
    OptionSpec("--results-db", "llorch_results_db", "LLORCH_RESULTS_DB",
               "performance results store (SQLite) every gate run appends to and compares "
               "with (default .runtime/gate/results.sqlite in the pool root; the embedded "
               "lab's own temporary pool: the user's data directory)", metavar="PATH"),
    OptionSpec("--no-perf-gate", "llorch_no_perf_gate", "LLORCH_NO_PERF_GATE",
               "skip the \"No performance regression\" item (shown as skipped): no "
               "performance is measured, recorded or compared", kind="bool"),
    OptionSpec("--perf-busy-share", "llorch_perf_busy_share", "LLORCH_PERF_BUSY_SHARE",
               "the host counts as busy for \"No performance regression\" when other processes "
               "use more than this share of the cores or the GPU (default 0.25; 1 turns both "
               "off, a throttled device still counts)", kind="float", metavar="F"),
    OptionSpec("--perf-quiet-wait", "llorch_perf_quiet_wait", "LLORCH_PERF_QUIET_WAIT",
               "seconds a busy host is waited for before the performance item is \"could not "
               "check (host busy)\" (default 30)", kind="float", metavar="S"),
)

BACKEND_NAMES: tuple[str, ...] = backends.BACKEND_NAMES  # the one table: pool/backends.py


class OptionError(ValueError):
    """A gate option holds a value we cannot use; pytest turns it into a usage error."""


def split_list(raw: Iterable[str] | str | None) -> list[str]:
    """Repeated flags and comma lists both work: ['a,b', 'c'] -> ['a', 'b', 'c']."""
    if raw is None:
        return []
    items = [raw] if isinstance(raw, str) else list(raw)
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def _convert(spec: OptionSpec, raw: Any, source: str) -> Any:
    where = f"{spec.flag} (from {source})"
    if spec.kind == "list":
        return split_list(raw)
    if spec.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("", "0", "false", "no", "off"):
            return False
        raise OptionError(f"{where}: expected true/false, got {raw!r}")
    if spec.kind in ("float", "int"):
        try:
            value = float(raw) if spec.kind == "float" else int(str(raw).strip())
        except ValueError:
            raise OptionError(f"{where}: expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise OptionError(f"{where}: expected a finite number, got {raw!r}")
        if value <= 0 and spec.kind == "float" or value < 0:
            raise OptionError(f"{where}: must be positive, got {raw!r}")
        return value
    text = str(raw).strip()
    if spec.choices and text not in spec.choices:
        raise OptionError(f"{where}: choose one of {', '.join(spec.choices)}, got {raw!r}")
    return text


def resolve_option(
    spec: OptionSpec, cli: Any, env: Mapping[str, str], ini: Any,
) -> tuple[Any, str]:
    """Command line wins, then the environment, then the ini file; (value, source)."""
    if cli not in (None, [], False):
        return _convert(spec, cli, "command line"), "command line"
    if env.get(spec.env, "").strip():
        return _convert(spec, env[spec.env], f"${spec.env}"), f"${spec.env}"
    if ini not in (None, "", []):
        return _convert(spec, ini, f"ini {spec.ini}"), f"ini {spec.ini}"
    return ({"list": [], "bool": False}.get(spec.kind)), "default"


@dataclass
class Settings:
    """Resolved gate options (None: not given)."""

    lab: str = "auto"
    bin_dir: str | None = None
    gate_model: str | None = None
    gate_models: list[str] = field(default_factory=list)
    pool_root: str | None = None
    backend_available: list[str] = field(default_factory=list)
    require_backend: list[str] = field(default_factory=list)
    update_golden: bool = False
    ready_timeout: float = DEFAULT_READY_TIMEOUT_S
    llorch_repo: str | None = None
    llorch_base: str | None = None
    cargo_offline: bool = False
    pool_hosts: list[str] = field(default_factory=list)
    gate_json: str | None = None
    golden_min_prefix: int = DEFAULT_GOLDEN_MIN_PREFIX
    reference: str = "auto"
    reference_delta: float = DEFAULT_DELTA
    reference_top_k: int = DEFAULT_TOP_K
    results_db: str | None = None
    no_perf_gate: bool = False
    perf_busy_share: float | None = None
    perf_quiet_wait: float | None = None
    lease_dir: str | None = None
    lease_wait: float | None = None


_SETTING_FOR_DEST = {
    "llorch_lab": "lab", "llorch_bin_dir": "bin_dir", "llorch_gate_model": "gate_model",
    "llorch_gate_models": "gate_models",
    "llorch_pool_root": "pool_root", "llorch_backend_available": "backend_available",
    "llorch_require_backend": "require_backend", "llorch_update_golden": "update_golden",
    "llorch_ready_timeout": "ready_timeout", "llorch_repo": "llorch_repo",
    "llorch_base": "llorch_base", "llorch_cargo_offline": "cargo_offline",
    "llorch_pool_hosts": "pool_hosts", "llorch_gate_json": "gate_json",
    "llorch_golden_min_prefix": "golden_min_prefix", "llorch_reference": "reference",
    "llorch_reference_delta": "reference_delta", "llorch_reference_top_k": "reference_top_k",
    "llorch_results_db": "results_db", "llorch_no_perf_gate": "no_perf_gate",
    "llorch_perf_busy_share": "perf_busy_share", "llorch_perf_quiet_wait": "perf_quiet_wait",
    "llorch_lease_dir": "lease_dir", "llorch_lease_wait": "lease_wait",
}


def resolve_settings(
    cli: Callable[[str], Any], ini: Callable[[str], Any], env: Mapping[str, str],
) -> Settings:
    """Build Settings from getters for command-line and ini values (pytest's config)."""
    settings = Settings()
    for spec in OPTIONS:
        value, source = resolve_option(spec, cli(spec.dest), env, ini(spec.ini))
        if source != "default" and value is not None:
            setattr(settings, _SETTING_FOR_DEST[spec.dest], value)
    for name in (*settings.backend_available, *settings.require_backend):
        check_name("backend", name, BACKEND_NAMES)  # choices.UnknownName: its own exit status
    return settings
