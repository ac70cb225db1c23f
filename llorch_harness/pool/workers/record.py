"""The worker record `.runtime/workers/<id>.json`: one typed value, the same JSON on disk.

The CP3 fields (`worker_id`, `pid`, `backend`, `model_id`, `port`, `started_at`) are what
the Rust llorch-pool writes and reads; ours add what identifies the process (create time,
marker, binary hash). `WorkerRecord.from_json(obj).to_json() == obj` for every record, ours
or the Rust one's: keys keep their order, unknown keys and values of an unexpected type are
kept verbatim (and not used), and an absent key stays absent (a Rust record has no
`ready_seconds`: it is never "starting"; ours has `"ready_seconds": null` until ready).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import InitVar, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import (
    NotRegularFileError,
    atomic_write_text,
    loads_json_strict,
    read_regular_text,
)
from llorch_harness.pool import procs
from llorch_harness.pool.paths import PoolPaths, validate_worker_id

MOVE_ASIDE = "move the file aside if no worker runs with that id"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # {"pid": true} is not pid 1


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_str(v: object) -> bool:
    return isinstance(v, str)


def _is_words(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(w, str) for w in v)


# Every field we know, in the order we write them; the value's type check. A value of
# another type is kept verbatim on disk but not used (the field reads as None).
FIELD_TYPES: dict[str, Callable[[object], bool]] = {
    "worker_id": _is_str, "pid": _is_int, "backend": _is_str, "model_id": _is_str,
    "port": _is_int, "started_at": _is_str, "create_time": _is_number, "cmdline": _is_words,
    "binary_path": _is_str, "binary_sha256": _is_str, "log_path": _is_str, "uri": _is_str,
    "vram_bytes": _is_int, "gpu": _is_int, "pool_root": _is_str, "harness_version": _is_str,
    "ready_seconds": _is_number, "worker": _is_str, "model_path": _is_str, "session": _is_str,
    "callback_uri": _is_str,
}
FIELDS: tuple[str, ...] = tuple(FIELD_TYPES)


@dataclass
class WorkerRecord:
    """One worker's record. `present` names the known fields the JSON holds (null included);
    `extra` holds unknown keys and unusable values verbatim; `order` is the key order read.
    Mutate through `mark_ready`, so that what is on disk follows."""

    worker_id: str
    pid: int
    backend: str | None = None
    model_id: str | None = None
    port: int | None = None  # as written; `usable_port` is the one a socket may see
    started_at: str | None = None
    create_time: float | None = None
    cmdline: list[str] | None = None
    binary_path: str | None = None
    binary_sha256: str | None = None
    log_path: str | None = None
    uri: str | None = None
    vram_bytes: int | None = None
    gpu: int | None = None
    pool_root: str | None = None
    harness_version: str | None = None
    ready_seconds: float | None = None
    worker: str | None = None
    model_path: str | None = None
    session: str | None = None
    callback_uri: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = ()
    keys: InitVar[set[str] | None] = None  # the known fields on disk; None: the non-None ones
    present: set[str] = field(init=False)

    def __post_init__(self, keys: set[str] | None) -> None:
        self.present = set(keys) if keys is not None else {
            f for f in FIELDS if getattr(self, f) is not None}

    @classmethod
    def new(cls, **fields: Any) -> WorkerRecord:
        """A record we write: every field given is on disk, a None as null."""
        return cls(**fields, keys=set(fields))

    @classmethod
    def from_json(cls, obj: object, default_id: str) -> WorkerRecord:
        """Parse a record; ValueError names what makes it unusable (no valid pid, an id that
        is not a string). A missing worker_id is the file name's (the CP3 layout)."""
        if not isinstance(obj, dict):
            raise ValueError("has no valid pid")
        pid = obj.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            raise ValueError("has no valid pid")
        if not isinstance(obj.get("worker_id", default_id), str):
            raise ValueError("has a non-string worker_id")
        typed: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in obj.items():
            check = FIELD_TYPES.get(key)
            if check is not None and (value is None or check(value)):
                typed[key] = list(value) if key == "cmdline" and value is not None else value
            else:
                extra[key] = value
        present = set(typed)
        typed.setdefault("worker_id", default_id)
        return cls(**typed, keys=present, extra=extra, order=tuple(obj))

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data: keys in the order read, then new fields in FIELDS order."""
        present = self.present
        out: dict[str, Any] = {}
        for key in (*self.order, *FIELDS, *self.extra):
            if key in out:
                continue
            if key in present:
                value = getattr(self, key)
                out[key] = list(value) if isinstance(value, list) else value
            elif key in self.extra:
                out[key] = self.extra[key]
        return out

    def mark_ready(self, ready_seconds: float, vram_bytes: int | None,
                   callback_uri: str | None) -> None:
        """What the ready callback told us; the record is no longer `starting`."""
        self.ready_seconds = ready_seconds
        self.vram_bytes = vram_bytes
        self.callback_uri = callback_uri
        self.present |= {"ready_seconds", "vram_bytes", "callback_uri"}

    @property
    def starting(self) -> bool:
        """Ours, written before the worker got ready (a Rust record has no ready_seconds)."""
        return "ready_seconds" in self.present and self.ready_seconds is None

    @property
    def has_session(self) -> bool:
        return "session" in self.present

    @property
    def usable_port(self) -> int | None:
        """The port if it is one (1..65535); None for anything else (99999, -1, "80"), so
        no socket call ever sees it."""
        port = self.port
        return port if port is not None and 1 <= port <= 65535 else None

    @property
    def endpoint(self) -> str | None:
        """The worker's URL: the record's uri, else built from the port (a Rust record)."""
        if self.uri:
            return self.uri
        port = self.usable_port
        return f"http://127.0.0.1:{port}" if port else None


# --------------------------------------------------------------------------- time


def utc_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: object) -> float | None:
    """RFC 3339 (ours or chrono's, up to nanoseconds) to a Unix time; None if unusable."""
    if not isinstance(value, str):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip()).replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------- files


def record_path(paths: PoolPaths, worker_id: str) -> Path:
    return paths.workers_dir / f"{validate_worker_id(worker_id)}.json"


def log_path_for(paths: PoolPaths, worker_id: str) -> Path:
    return paths.workers_dir / f"{validate_worker_id(worker_id)}.log"


def spawn_lock_path(paths: PoolPaths, worker_id: str) -> Path:
    return paths.workers_dir / f".{validate_worker_id(worker_id)}.lock"


def record_ids(paths: PoolPaths) -> list[str]:
    if not paths.workers_dir.is_dir():
        return []
    return sorted(p.stem for p in paths.workers_dir.glob("*.json") if not p.name.startswith("."))


def read_record(path: Path) -> WorkerRecord:
    """A record; unreadable or not a CP3 record raises HarnessError naming the file. A FIFO,
    device or directory there (or a symlink to one) is refused, never opened: it would
    block `worker list` forever (fsutil.read_regular_text)."""
    try:
        raw = loads_json_strict(read_regular_text(path, "worker record", MOVE_ASIDE))
    except (FileNotFoundError, NotRegularFileError):
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise HarnessError(f"cannot read worker record {path}: {type(exc).__name__}: {exc}",
                           MOVE_ASIDE) from exc
    try:
        return WorkerRecord.from_json(raw, default_id=path.stem)
    except ValueError as exc:
        raise HarnessError(f"worker record {path} {exc}", MOVE_ASIDE) from None


def write_record(path: Path, record: WorkerRecord | Mapping[str, Any]) -> None:
    """Atomically; a mapping is taken as the JSON itself (tests write odd records so)."""
    data = record.to_json() if isinstance(record, WorkerRecord) else dict(record)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def remove_record(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def record_identity(paths: PoolPaths, rec: WorkerRecord) -> tuple[str, psutil.Process | None]:
    """procs.identify for the record's pid: "alive" only with proof it is still ours."""
    return procs.identify(
        rec.pid, create_time=rec.create_time, worker_id=rec.worker_id,
        pool_root=rec.pool_root or procs.pool_key(paths.root),
        started_at=parse_time(rec.started_at),
    )
