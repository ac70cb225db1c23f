"""Gate options and the lab decision: which worker is under test, which backends can run.

Why a plain module: the decision must be identical on every xdist worker and easy to test,
so it is computed once from (options, environment, hardware, PATH) on the controller, turned
into JSON and handed to the workers; the pytest hooks only call into here.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llorch_harness import __version__, redaction
from llorch_harness.checks.referencecfg import DEFAULT_DELTA, DEFAULT_TOP_K, REFERENCE_CHOICES
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
               "with (default .runtime/gate/results.sqlite in the pool root)", metavar="PATH"),
    OptionSpec("--no-perf-gate", "llorch_no_perf_gate", "LLORCH_NO_PERF_GATE",
               "skip the \"No performance regression\" item (shown as skipped): no "
               "performance is measured, recorded or compared", kind="bool"),
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
    lease_dir: str | None = None
    lease_wait: float | None = None


_SETTING_FOR_DEST = {
    "llorch_lab": "lab", "llorch_bin_dir": "bin_dir", "llorch_gate_model": "gate_model",
    "llorch_pool_root": "pool_root", "llorch_backend_available": "backend_available",
    "llorch_require_backend": "require_backend", "llorch_update_golden": "update_golden",
    "llorch_ready_timeout": "ready_timeout", "llorch_repo": "llorch_repo",
    "llorch_base": "llorch_base", "llorch_cargo_offline": "cargo_offline",
    "llorch_pool_hosts": "pool_hosts", "llorch_gate_json": "gate_json",
    "llorch_golden_min_prefix": "golden_min_prefix", "llorch_reference": "reference",
    "llorch_reference_delta": "reference_delta", "llorch_reference_top_k": "reference_top_k",
    "llorch_results_db": "results_db", "llorch_no_perf_gate": "no_perf_gate",
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
        if name not in BACKEND_NAMES:
            raise OptionError(f"unknown backend {name!r}: choose from {', '.join(BACKEND_NAMES)}")
    return settings


# --------------------------------------------------------------------------- hardware


def detect_hardware() -> dict[str, str | None]:
    """backend -> None when present, else why not (the words of the skip reason)."""
    return backends.absent_reasons()


def binary_names(backend: str) -> tuple[str, ...]:
    return backends.BACKENDS[backend].binaries


def find_backend_binary(backend: str, bin_dir: str | None, path_env: str | None) -> Path | None:
    """First of the backend's binary names in bin_dir, then PATH (backends.locate_binary)."""
    dirs = ([bin_dir] if bin_dir else []) + [d for d in (path_env or "").split(os.pathsep) if d]
    return backends.locate_binary(backend, dirs)


def sha256_of(path: Path) -> str | None:
    try:
        from llorch_harness.fsutil import sha256_file

        return sha256_file(path)
    except OSError:
        return None


# --------------------------------------------------------------------------- decision


@dataclass
class BackendState:
    """What the gate knows about one backend on this machine."""

    name: str
    selected: bool
    hardware: bool
    hardware_reason: str | None
    overridden: bool
    required: bool
    binary: str | None = None
    binary_sha256: str | None = None
    worker: str = ""  # "llorch" | "reference" | "" (none)
    reason: str | None = None  # why it cannot run (None: usable)
    engine: str = ""  # the reference worker's engine and device: "numpy on cpu", "torch on mps"

    @property
    def usable(self) -> bool:
        return self.reason is None


@dataclass
class LabDecision:
    """The one decision every process of the run shares (serialisable through xdist)."""

    requested: str
    lab: str  # "real" | "embedded"
    gate_model: str
    pool_root: str | None
    hostname: str
    harness_version: str
    backends: dict[str, BackendState]
    settings: Settings
    notes: list[str] = field(default_factory=list)

    # ---- helpers the hooks and fixtures use

    def state(self, backend: str) -> BackendState:
        return self.backends[backend]

    def usable(self, backend: str) -> bool:
        return self.backends[backend].usable

    @property
    def worker_kind(self) -> str:
        return "reference" if self.lab == "embedded" else "llorch"

    def primary_backend(self, among: Iterable[str]) -> str | None:
        """The backend a pool-level item runs on: the first usable selected one (GPU first)."""
        among = set(among)
        for name in BACKEND_ORDER:
            st = self.backends[name]
            if name in among and st.selected and st.usable:
                return name
        return None

    def banner(self) -> str:
        """The words nobody can miss: which worker is under test, and whether its output is
        compared with an independent reference at all."""
        off = (" | REFERENCE CHECK OFF (--reference off): the worker's output is judged only "
               "against itself" if self.settings.reference == "off" else "")
        if self.lab == "embedded":
            return "EMBEDDED LAB: reference worker, not llorch-candled" + off
        parts = []
        for name in BACKEND_ORDER:
            st = self.backends[name]
            if st.binary and st.selected:
                parts.append(f"{Path(st.binary).name} {st.binary} sha256 {st.binary_sha256}")
        return "REAL LAB: " + ("; ".join(parts) or "no llorch-candled binary found") + off

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LabDecision:
        data = dict(raw)
        data["backends"] = {k: BackendState(**v) for k, v in raw["backends"].items()}
        data["settings"] = Settings(**raw["settings"])
        data["notes"] = list(raw.get("notes", []))
        return cls(**data)


def selected_backends(markexpr: str | None) -> list[str]:
    """Backends a `-m` expression can select; all when it names none of them."""
    if not markexpr or not markexpr.strip():
        return list(BACKEND_NAMES)
    from llorch_harness.plugin import markexpr as mx

    try:
        chosen = [b for b in BACKEND_NAMES if mx.evaluate(markexpr, b.__eq__)]
    except mx.ExpressionError:  # a broken -m is pytest's to report
        return list(BACKEND_NAMES)
    return chosen or list(BACKEND_NAMES)


def decide(
    settings: Settings,
    *,
    markexpr: str | None = None,
    hardware: Mapping[str, str | None] | None = None,
    path_env: str | None = None,
    hostname: str | None = None,
    torch_devices: Mapping[str, str | None] | None = None,
) -> LabDecision:
    """Resolve the lab and every backend's state. Deterministic for the same inputs.
    `torch_devices`: backend -> None when the reference worker's torch engine can run it,
    else why not (default: asked of torch, only for a GPU backend the embedded lab has)."""
    hw = dict(hardware if hardware is not None else detect_hardware())
    selected = selected_backends(markexpr)
    path_env = os.environ.get("PATH", "") if path_env is None else path_env
    bin_dir = settings.bin_dir
    notes: list[str] = []
    if bin_dir and not Path(bin_dir).expanduser().is_dir():
        raise OptionError(f"--llorch-bin-dir {bin_dir}: not a directory")

    states: dict[str, BackendState] = {}
    for name in BACKEND_NAMES:
        overridden = name in settings.backend_available
        hw_reason = hw.get(name, f"{name}: unknown backend")
        binary = find_backend_binary(name, bin_dir, path_env)
        states[name] = BackendState(
            name=name, selected=name in selected, hardware=hw_reason is None or overridden,
            hardware_reason=hw_reason, overridden=overridden,
            required=name in settings.require_backend,
            binary=str(binary) if binary else None,
        )

    real_candidates = [s for s in states.values() if s.selected and s.hardware and s.binary]
    if settings.lab == "auto":
        lab = "real" if real_candidates else "embedded"
    else:
        lab = settings.lab

    for st in states.values():
        searched = (f"--llorch-bin-dir {bin_dir} and PATH" if bin_dir
                    else "PATH (no --llorch-bin-dir given)")
        if not st.hardware:
            st.reason = (f"{st.name}: {st.hardware_reason}; pass --backend-available {st.name} "
                         "to override")
        elif lab == "embedded" and st.name != "cpu" and (
                why := torch_reason(st.name, torch_devices)) is not None:
            st.reason = (f"embedded lab has no {st.name} worker: install "
                         f"{binary_names(st.name)[0]} or pass --llorch-bin-dir")
            notes.append(f"{st.name}: the reference worker's torch engine cannot run it: {why}")
        elif lab == "embedded":
            st.worker = "reference"
            st.engine = "numpy on cpu" if st.name == "cpu" else f"torch on {TORCH_DEVICE[st.name]}"
        elif st.binary:
            st.worker = "llorch"
            st.binary_sha256 = sha256_of(Path(st.binary))
        else:
            st.reason = (f"real lab: no {' or '.join(binary_names(st.name))} in {searched}; "
                         "pass --llorch-bin-dir DIR")

    gate_model = settings.gate_model or (REAL_GATE_MODEL if lab == "real" else EMBEDDED_GATE_MODEL)
    if lab == "embedded" and settings.lab == "auto":
        notes.append("no llorch-candled binary found for a selected backend: embedded lab")
    pool_root = settings.pool_root
    if pool_root:
        pool_root = str(Path(pool_root).expanduser().resolve())
    return LabDecision(
        requested=settings.lab, lab=lab, gate_model=gate_model, pool_root=pool_root,
        hostname=hostname or socket.gethostname(), harness_version=__version__,
        backends=states, settings=settings, notes=notes,
    )


TORCH_DEVICE = {"cuda": "cuda:0", "metal": "mps"}  # the device the gate's workers use


def torch_reason(backend: str, known: Mapping[str, str | None] | None = None) -> str | None:
    """None when torch sees the backend's device here (the embedded lab then runs its items
    with the reference worker's torch engine), else why not."""
    if known is not None:
        return known.get(backend, f"{backend}: not probed")
    from llorch_harness.pool.torchdevice import device_usable  # imports torch: only now

    return device_usable(TORCH_DEVICE[backend])


# --------------------------------------------------------------------------- per item


@dataclass(frozen=True)
class ItemVerdict:
    """What happens to a test before it runs: run on `backend`, skip, or fail."""

    action: str  # "run" | "skip" | "fail"
    backend: str | None
    reason: str | None = None


def item_verdict(decision: LabDecision, marked: Iterable[str]) -> ItemVerdict:
    """Backend gating for a test marked with the given backends.

    One backend marker: that backend must be usable. Several (a pool-level item): the first
    usable selected one runs it. No usable backend: skip with the reasons, or fail when one
    of the concerned backends is required (a CI runner must not pass by skipping).
    """
    marked = [b for b in BACKEND_NAMES if b in set(marked)]
    if not marked:
        return ItemVerdict("run", None)
    if len(marked) == 1:
        st = decision.backends[marked[0]]
        if st.usable:
            return ItemVerdict("run", st.name)
        action = "fail" if st.required else "skip"
        prefix = f"required backend {st.name} missing: " if st.required else ""
        return ItemVerdict(action, st.name, prefix + (st.reason or ""))
    primary = decision.primary_backend(marked)
    if primary is not None:
        return ItemVerdict("run", primary)
    concerned = [decision.backends[b] for b in marked if decision.backends[b].selected]
    concerned = concerned or [decision.backends[b] for b in marked]
    reason = "no usable backend: " + "; ".join(st.reason or st.name for st in concerned)
    required = [st.name for st in concerned if st.required]
    if required:
        return ItemVerdict("fail", required[0],
                           f"required backend {', '.join(required)} missing: {reason}")
    return ItemVerdict("skip", None, reason)


def device_group(backend: str, gpu: int = 0) -> str:
    """xdist_group name: tests on one device stay on one xdist worker."""
    return f"{backend}{gpu}" if backend != "cpu" else "cpu"


def is_secret_name(name: str) -> bool:
    """Kept for callers of labs: the one rule lives in redaction.py."""
    return redaction.is_secret_name(name)


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables named like secrets (see redaction.secret_values)."""
    return redaction.secret_values(env)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Every secret replaced with *** (the one redaction, redaction.redact)."""
    return redaction.redact(text, env)
