"""Gate options and the lab decision: which worker is under test, which backends can run.

Why a plain module: the decision must be identical on every xdist worker and easy to test,
so it is computed once from (options, environment, hardware, PATH) on the controller, turned
into JSON and handed to the workers; the pytest hooks only call into here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llorch_harness import __version__, redaction

# the option table lives in options.py; these names stay importable from here
from llorch_harness.plugin.options import (
    BACKEND_NAMES as BACKEND_NAMES,
)
from llorch_harness.plugin.options import (
    BACKEND_ORDER as BACKEND_ORDER,
)
from llorch_harness.plugin.options import (
    DEFAULT_GOLDEN_MIN_PREFIX as DEFAULT_GOLDEN_MIN_PREFIX,
)
from llorch_harness.plugin.options import (
    DEFAULT_READY_TIMEOUT_S as DEFAULT_READY_TIMEOUT_S,
)
from llorch_harness.plugin.options import (
    EMBEDDED_GATE_MODEL as EMBEDDED_GATE_MODEL,
)
from llorch_harness.plugin.options import (
    LAB_CHOICES as LAB_CHOICES,
)
from llorch_harness.plugin.options import (
    OPTIONS as OPTIONS,
)
from llorch_harness.plugin.options import (
    REAL_GATE_MODEL as REAL_GATE_MODEL,
)
from llorch_harness.plugin.options import (
    OptionError as OptionError,
)
from llorch_harness.plugin.options import (
    OptionSpec as OptionSpec,
)
from llorch_harness.plugin.options import (
    Settings as Settings,
)
from llorch_harness.plugin.options import (
    resolve_option as resolve_option,
)
from llorch_harness.plugin.options import (
    resolve_settings as resolve_settings,
)
from llorch_harness.plugin.options import (
    split_list as split_list,
)
from llorch_harness.pool import backends

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
    # every model the inference checks and the CP4 items run on; the first is `gate_model`
    gate_models: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.gate_models:
            self.gate_models = [self.gate_model]

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


def _backend_states(settings: Settings, hw: Mapping[str, str | None], selected: list[str],
                    path_env: str) -> dict[str, BackendState]:
    """Every backend's hardware, binary and selection, before the lab is chosen."""
    states: dict[str, BackendState] = {}
    for name in BACKEND_NAMES:
        overridden = name in settings.backend_available
        hw_reason = hw.get(name, f"{name}: unknown backend")
        binary = find_backend_binary(name, settings.bin_dir, path_env)
        states[name] = BackendState(
            name=name, selected=name in selected, hardware=hw_reason is None or overridden,
            hardware_reason=hw_reason, overridden=overridden,
            required=name in settings.require_backend,
            binary=str(binary) if binary else None,
        )
    return states


def _assign_worker(st: BackendState, lab: str, bin_dir: str | None,
                   torch_devices: Mapping[str, str | None] | None, notes: list[str]) -> None:
    """Which worker serves this backend in this lab, or why none can."""
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
    path_env = os.environ.get("PATH", "") if path_env is None else path_env
    bin_dir = settings.bin_dir
    notes: list[str] = []
    if bin_dir and not Path(bin_dir).expanduser().is_dir():
        raise OptionError(f"--llorch-bin-dir {bin_dir}: not a directory")
    states = _backend_states(settings, hw, selected_backends(markexpr), path_env)
    real_candidates = [s for s in states.values() if s.selected and s.hardware and s.binary]
    if settings.lab == "auto":
        lab = "real" if real_candidates else "embedded"
    else:
        lab = settings.lab
    for st in states.values():
        _assign_worker(st, lab, bin_dir, torch_devices, notes)

    gate_models = resolve_gate_models(settings, lab)
    if lab == "embedded" and settings.lab == "auto":
        notes.append("no llorch-candled binary found for a selected backend: embedded lab")
    pool_root = settings.pool_root
    if pool_root:
        pool_root = str(Path(pool_root).expanduser().resolve())
    return LabDecision(
        requested=settings.lab, lab=lab, gate_model=gate_models[0], pool_root=pool_root,
        hostname=hostname or socket.gethostname(), harness_version=__version__,
        backends=states, settings=settings, notes=notes, gate_models=gate_models,
    )


def resolve_gate_models(settings: Settings, lab: str) -> list[str]:
    """`--gate-models` (the first is the CP3 gate model), else `--gate-model`, else the lab's
    default. Both given and disagreeing about the first: an error, not a silent choice."""
    default = REAL_GATE_MODEL if lab == "real" else EMBEDDED_GATE_MODEL
    models = list(settings.gate_models)
    if not models:
        return [settings.gate_model or default]
    if settings.gate_model and settings.gate_model != models[0]:
        raise OptionError(
            f"--gate-model {settings.gate_model} and --gate-models {','.join(models)} disagree: "
            "the first of --gate-models is the CP3 gate model (give one of the two, or put "
            f"{settings.gate_model} first)")
    return models


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
