"""Who holds a device lease: the holder records beside the lease locks (leases.py).

Why apart from the locks: a record only informs (the lock is what protects), and it is the
part people read: host, pid, start time, user, pool root, CI job, worker. One file per user
(`<key>@<uid>.json`), because in a sticky shared directory a user may not replace another
user's file; the newest record of a held device names its holder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pwd
import secrets
import socket
import time
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import atomic_write_bytes, loads_json_strict, open_regular
from llorch_harness.redaction import redact
from llorch_harness.safetext import term_text

_CI_VARS = ("GITHUB_RUN_ID", "CI_JOB_ID", "BUILDKITE_JOB_ID", "BUILD_TAG", "CIRCLE_WORKFLOW_JOB_ID")


def ci_job(env: Mapping[str, str] | None = None) -> str | None:
    """Which CI job this is, for the holder record (GitHub, GitLab, Buildkite, Jenkins...)."""
    env = os.environ if env is None else env
    if env.get("GITHUB_RUN_ID"):
        parts = [env.get("GITHUB_REPOSITORY", ""), f"run {env['GITHUB_RUN_ID']}",
                 f"job {env.get('GITHUB_JOB', '?')}", env.get("RUNNER_NAME", "")]
        return redact(" ".join(p for p in parts if p))
    for name in _CI_VARS[1:]:
        if env.get(name):
            return redact(f"{name}={env[name]}")
    return None


RUN_ENV = "LLORCH_LEASE_RUN"


def start_run(env: MutableMapping[str, str] | None = None) -> str:
    """Make this process and its children one run for the leases (a gate session: its own
    workers and the `llorch-pool worker spawn` its tests run share the devices it holds).
    The token is a secret in the environment; records carry only its digest."""
    target: MutableMapping[str, str] = os.environ if env is None else env
    if not target.get(RUN_ENV):
        target[RUN_ENV] = secrets.token_hex(16)
    return target[RUN_ENV]


def run_digest(env: Mapping[str, str] | None = None) -> str | None:
    """The digest of this process's run token, or None outside a run."""
    token = (os.environ if env is None else env).get(RUN_ENV)
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def holder_record(key: Any, pool_root: str | None, worker_id: str | None) -> dict[str, Any]:
    """The record of this process taking `key` (a leases.DeviceKey)."""
    me = psutil.Process()
    return {"run": run_digest(),
        "device": key.label, "backend": key.backend, "index": key.index, "uuid": key.uuid,
        "host": socket.gethostname(), "pid": os.getpid(), "start_time": me.create_time(),
        "user": _user(), "pool_root": pool_root, "ci_job": ci_job(),
        "acquired_at": time.time(), "acquired": datetime.now(UTC).isoformat(timespec="seconds"),
        "worker_id": worker_id, "worker_pid": None,
    }


def _user() -> str:
    try:
        return psutil.Process().username()
    except (psutil.Error, KeyError):
        return str(os.getuid())


def record_path(lease_dir: Path, key: str) -> Path:
    return lease_dir / f"{key}@{os.getuid()}.json"


MAX_RECORD_BYTES = 16 * 1024  # a holder record is a dozen short fields
FUTURE_SKEW_S = 300.0  # an `acquired_at` later than now by more is a planted or broken record
_TEXT_FIELDS = ("run", "device", "backend", "uuid", "host", "user", "pool_root", "ci_job",
                "acquired", "worker_id")
_INT_FIELDS = ("index", "pid", "worker_pid")


def read_holder(lease_dir: Path, key: str, now: float | None = None) -> dict[str, Any] | None:
    """The newest holder record of a device (None when there is none that counts).

    Why so strict: the directory is shared by every user of the host. A record counts only
    if it is a regular file of at most MAX_RECORD_BYTES, holds a JSON object of the right
    types, is owned by the user it names (and whose uid its name carries), and says it was
    acquired at a finite time not in the future; anything else is skipped like a malformed
    record, so a planted file can neither exhaust memory nor claim to be the newest."""
    now = time.time() if now is None else now
    newest: dict[str, Any] | None = None
    for path in lease_dir.glob(f"{key}@*.json"):
        rec = _read_record(path, now)
        if rec is not None and (newest is None or rec["acquired_at"] > newest["acquired_at"]):
            newest = rec
    return newest


def _read_record(path: Path, now: float) -> dict[str, Any] | None:
    try:
        with open_regular(path, "lease record") as fh:
            owner = os.fstat(fh.fileno()).st_uid
            data = fh.read(MAX_RECORD_BYTES + 1)
        if len(data) > MAX_RECORD_BYTES:
            return None
        rec = loads_json_strict(data.decode("utf-8"))
    except (OSError, ValueError, RecursionError, HarnessError):
        return None  # UnicodeDecodeError and JSONDecodeError are ValueErrors
    if not isinstance(rec, dict) or not _typed(rec):
        return None
    at = rec["acquired_at"]
    if not (math.isfinite(at) and 0 < at <= now + FUTURE_SKEW_S):
        return None
    if path.stem.rpartition("@")[2] != str(owner) or not _names_owner(rec.get("user"), owner):
        return None
    return rec


def _typed(rec: Mapping[str, Any]) -> bool:
    """The fields people read have the types the harness writes."""
    at = rec.get("acquired_at")
    if isinstance(at, bool) or not isinstance(at, int | float):
        return False
    if any(rec.get(k) is not None and not isinstance(rec[k], str) for k in _TEXT_FIELDS):
        return False
    return not any(rec.get(k) is not None and (isinstance(rec[k], bool)
                                                or not isinstance(rec[k], int))
                   for k in _INT_FIELDS)


def _names_owner(user: Any, uid: int) -> bool:
    """Does the record's `user` name the file's owner (by name, or by uid where the
    holder had no name: see _user)?"""
    if not isinstance(user, str):
        return False
    if user == str(uid):
        return True
    try:
        return pwd.getpwuid(uid).pw_name == user
    except KeyError:
        return False


def describe_holder(rec: Mapping[str, Any] | None) -> str:
    """One line naming who holds a device, safe for a terminal: every value from the record
    has its control characters shown escaped (safetext.term_text)."""
    if not rec:
        return "held by an unknown process (no holder record)"
    bits = [f"pid {rec.get('pid')} on {rec.get('host')}"]
    if rec.get("worker_id"):
        wpid = rec.get("worker_pid")
        bits.append(f"worker {rec['worker_id']}" + (f" (pid {wpid})" if wpid else ""))
    if rec.get("user"):
        bits.append(f"user {rec['user']}")
    bits.append(f"pool {rec.get('pool_root') or '?'}")
    if rec.get("ci_job"):
        bits.append(f"CI {rec['ci_job']}")
    bits.append(f"since {rec.get('acquired', '?')}")
    return term_text("held by " + ", ".join(bits))


def write_record(lease_dir: Path, key: str, record: Mapping[str, Any]) -> None:
    data = json.dumps(record, indent=2, sort_keys=True).encode("utf-8")
    with contextlib.suppress(OSError):  # the record informs; the lock is what protects
        atomic_write_bytes(record_path(lease_dir, key), data, mode=0o644)
