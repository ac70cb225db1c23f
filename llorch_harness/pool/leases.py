"""Device leases: no two runs on one host ever use the same GPU at the same time.

Why a host-wide directory and a kernel lock: two CI runners on one machine (or a person and
CI) use different pool roots, so nothing under a pool root can keep them apart. Each physical
device has a lock file in one lease directory (--lease-dir, $LLORCH_LEASE_DIR, else
DEFAULT_LEASE_DIR); the holder keeps an exclusive `flock` on it. The kernel drops that lock
when the last descriptor closes, however the holder dies (SIGKILL included), so a dead
holder never blocks a device. A worker inherits the descriptor (`Lease.fileno()`, passed
with `pass_fds`): the lease then lasts as long as the worker *or anything it left behind*,
also after the `llorch-pool worker spawn` that took it has exited.

Beside each lock, holder records `<key>@<uid>.json` (one per user, because in a sticky
shared directory a user may not replace another user's file) say who holds it: host, pid,
start time, pool root, CI job, worker. A record alone proves nothing: a device is held only
while its lock is; the newest record then names the holder.

Within one run a device is shared: in one process by a reference count, and across the
processes of one gate session (its xdist workers, the `llorch-pool worker spawn` its tests
run) through a run token in the environment (leaseholders.start_run) whose digest the holder
record carries. The gate's live worker and a test's second worker on the same device belong
to the same run; another run, with another token, waits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shlex
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from llorch_harness.errors import HarnessError, LabFailure
from llorch_harness.pool.leaseholders import (
    ci_job,
    describe_holder,
    holder_record,
    read_holder,
    run_digest,
    write_record,
)

LEASE_DIR_ENV = "LLORCH_LEASE_DIR"
LEASE_WAIT_ENV = "LLORCH_LEASE_WAIT"
# /tmp, not $TMPDIR: on macOS $TMPDIR is per user, and the lease must be host-wide.
DEFAULT_LEASE_DIR = "/tmp/llorch-harness-leases"
DEFAULT_LEASE_WAIT_S = 60.0
__all__ = ["DEFAULT_LEASE_DIR", "DEFAULT_LEASE_WAIT_S", "DeviceKey", "Lease", "LeaseState",
           "acquire", "check_lease_dir", "ci_job", "describe_holder", "device_key",
           "ensure_lease_dir", "is_held",
           "lease_for_spawn", "list_leases", "needs_lease", "read_holder", "resolve_lease_dir",
           "resolve_lease_wait"]
LEASED_BACKENDS = ("cuda", "metal")  # the CPU is shared by design; GPUs are not
_POLL_S = 0.1
_RECORD_GRACE_S = 1.0  # how long a waiter waits for a new holder's record before saying so
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


# ---------------------------------------------------------------- device identity

@dataclass(frozen=True)
class DeviceKey:
    """One physical device of this host: its UUID where the driver gives one."""

    backend: str
    index: int  # the worker's device index (--cuda-device / --metal-device)
    uuid: str | None = None

    @property
    def key(self) -> str:
        """The lock file's stem: the UUID, else backend and physical index."""
        raw = self.uuid or f"{self.backend}-{self.index}"
        return "".join(c if c in _SAFE else "_" for c in raw)[:120]

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.index}" + (f" ({self.uuid})" if self.uuid else "")


def needs_lease(backend: str) -> bool:
    return backend in LEASED_BACKENDS


def _cuda_uuid(index: int) -> str | None:
    from llorch_harness.pool.devicehealth import gpu_uuids  # lazy: NVML / nvidia-smi

    return gpu_uuids().get(index)


def device_key(backend: str, index: int, env: Mapping[str, str] | None = None,
               uuid_of: Callable[[int], str | None] = _cuda_uuid) -> DeviceKey:
    """The physical device a worker started with `index` uses. `CUDA_VISIBLE_DEVICES` (in
    the worker's environment) renumbers CUDA devices: index N is its N-th entry."""
    if backend != "cuda":
        return DeviceKey(backend, index)
    visible = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    physical = index
    if visible is not None and visible.strip():
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if index >= len(entries):
            return DeviceKey(backend, index, f"cuda-visible-{visible}-{index}")
        entry = entries[index]
        if not entry.isdigit():
            return DeviceKey(backend, index, entry)  # GPU-... or MIG-... names itself
        physical = int(entry)
    return DeviceKey(backend, index, uuid_of(physical) or f"cuda-{physical}")


# ---------------------------------------------------------------- the directory

def resolve_lease_dir(arg: str | os.PathLike[str] | None = None,
                      env: Mapping[str, str] | None = None) -> Path:
    """--lease-dir wins, then $LLORCH_LEASE_DIR, then DEFAULT_LEASE_DIR."""
    env = os.environ if env is None else env
    raw = arg if arg not in (None, "") else env.get(LEASE_DIR_ENV, "").strip() or DEFAULT_LEASE_DIR
    return Path(raw).expanduser().absolute()


def resolve_lease_wait(arg: float | str | None = None,
                       env: Mapping[str, str] | None = None) -> float:
    """--lease-wait wins, then $LLORCH_LEASE_WAIT, then DEFAULT_LEASE_WAIT_S; 0 means no wait."""
    env = os.environ if env is None else env
    raw: Any = arg if arg not in (None, "") else env.get(LEASE_WAIT_ENV, "").strip() or None
    if raw is None:
        return DEFAULT_LEASE_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value != float("inf")):
        raise HarnessError(f"lease wait {raw!r} is not a finite number of seconds >= 0",
                           f"pass --lease-wait S or set ${LEASE_WAIT_ENV}", exit_code=2)
    return value


def ensure_lease_dir(lease_dir: Path) -> Path:
    """Create the directory shared by every user of the host (sticky, world-writable like
    /tmp); refuse a symbolic link or a non-directory in its place."""
    try:
        os.mkdir(lease_dir, 0o700)
        os.chmod(lease_dir, 0o1777)
    except FileExistsError:
        pass
    except OSError as exc:
        raise HarnessError(f"cannot create lease directory {lease_dir}: {exc.strerror or exc}",
                           f"pass --lease-dir DIR (or set ${LEASE_DIR_ENV})") from exc
    check_lease_dir(lease_dir)
    return lease_dir


def check_lease_dir(lease_dir: Path) -> None:
    """Refuse a lease directory the locks cannot be trusted in: a symbolic link or not a
    directory, one others may write without the sticky bit (any of them could unlink a
    held lock, and two runs would then share a GPU; a private one of yours is fine), or one
    owned by another user than root or this one (its owner can do the same). One line with
    the fix, exit 2."""
    st = os.lstat(lease_dir)
    other = f"or pass --lease-dir DIR (${LEASE_DIR_ENV})"
    if not stat.S_ISDIR(st.st_mode):
        raise HarnessError(f"lease directory {lease_dir} is not a directory",
                           f"remove it {other}", exit_code=2)
    if st.st_uid not in (0, os.getuid()):
        raise HarnessError(
            f"lease directory {lease_dir} is owned by uid {st.st_uid}, neither root nor you: "
            "its owner could remove a held lease", f"have root recreate it with "
            f"`install -d -m 1777 {shlex.quote(str(lease_dir))}`, {other}", exit_code=2)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        fix = (f"`chmod 1777 {shlex.quote(str(lease_dir))}`" if st.st_uid == os.getuid()
               else f"have root run `chmod 1777 {shlex.quote(str(lease_dir))}`")
        raise HarnessError(
            f"lease directory {lease_dir} is not sticky (mode {stat.S_IMODE(st.st_mode):o}): "
            "any user who can write it could remove a held lease", f"{fix}, {other}",
            exit_code=2)


def _open_lock(path: Path) -> int:
    """A descriptor on the lock file; flock needs no write access, so read-only will do for
    a file another user created."""
    flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise HarnessError(f"cannot open lease file {path}: {exc.strerror or exc}",
                           "check its owner and mode, or pass --lease-dir DIR") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise HarnessError(f"lease file {path} is not a regular file", "remove it")
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)  # only the creator may; others find it so already
    return fd


def _try_lock(fd: int, how: int = fcntl.LOCK_EX) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


# ---------------------------------------------------------------- leases

@dataclass
class _Shared:
    fd: int
    record: dict[str, Any]
    count: int = 1
    borrowed: bool = False  # another process of this run holds the lock


_HELD: dict[tuple[str, str], _Shared] = {}
_HELD_LOCK = threading.Lock()


class Lease:
    """A held device; release() (or the context manager) lets it go."""

    def __init__(self, lease_dir: Path, key: DeviceKey, shared: _Shared) -> None:
        self.lease_dir = lease_dir
        self.device = key
        self._shared = shared
        self._released = False

    def fileno(self) -> int:
        """The lock's descriptor: pass it to a worker (pass_fds) so the lease lives as long
        as the worker and whatever it leaves behind."""
        return self._shared.fd

    @property
    def record(self) -> dict[str, Any]:
        return dict(self._shared.record)

    def note_worker(self, worker_id: str, pid: int) -> None:
        """Name the worker that uses the device in the holder record."""
        if self._shared.borrowed:
            return  # the record is the run's holder's
        self._shared.record.update(worker_id=worker_id, worker_pid=pid)
        write_record(self.lease_dir, self.device.key, self._shared.record)

    def release(self) -> None:
        """Idempotent. The lock itself stays held while a worker still has the descriptor."""
        if self._released:
            return
        self._released = True
        if self._shared.borrowed:
            with contextlib.suppress(OSError):
                os.close(self._shared.fd)
            return
        with _HELD_LOCK:
            self._shared.count -= 1
            if self._shared.count > 0:
                return
            _HELD.pop((str(self.lease_dir), self.device.key), None)
        with contextlib.suppress(OSError):
            os.close(self._shared.fd)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _shared_in_process(lease_dir: Path, key: DeviceKey) -> Lease | None:
    with _HELD_LOCK:
        shared = _HELD.get((str(lease_dir), key.key))
        if shared is None:
            return None
        shared.count += 1
        return Lease(lease_dir, key, shared)


def acquire(key: DeviceKey, lease_dir: Path, *, wait: float = DEFAULT_LEASE_WAIT_S,
            pool_root: str | None = None, worker_id: str | None = None,
            out: TextIO | None = None) -> Lease:
    """Take the device, waiting up to `wait` seconds (one line on `out` says who holds it
    meanwhile); a device still held then is a HarnessError naming the holder."""
    ensure_lease_dir(lease_dir)
    mine = _shared_in_process(lease_dir, key)
    if mine is not None:
        return mine
    fd = _open_lock(lease_dir / f"{key.key}.lock")
    borrowed = _borrow_from_my_run(fd, lease_dir, key)
    if borrowed is not None:
        return borrowed
    try:
        _wait_for_lock(fd, key, lease_dir, wait, out)
    except BaseException:
        os.close(fd)
        raise
    record = holder_record(key, pool_root, worker_id)
    write_record(lease_dir, key.key, record)
    shared = _Shared(fd, record)
    with _HELD_LOCK:
        _HELD[(str(lease_dir), key.key)] = shared
    return Lease(lease_dir, key, shared)


def _borrow_from_my_run(fd: int, lease_dir: Path, key: DeviceKey) -> Lease | None:
    """The device is held by another process of this same run: use it under that lease.
    The descriptor stays unlocked; the run's holder keeps the lock until it stops."""
    mine = run_digest()
    if mine is None or _try_lock(fd):
        if mine is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    holder = read_holder(lease_dir, key.key)
    if not holder or holder.get("run") != mine:
        return None
    return Lease(lease_dir, key, _Shared(fd, dict(holder), borrowed=True))


def _wait_for_lock(fd: int, key: DeviceKey, lease_dir: Path, wait: float,
                   out: TextIO | None) -> None:
    started = time.monotonic()
    deadline = started + wait
    said = False
    while not _try_lock(fd):
        record = read_holder(lease_dir, key.key)
        holder = describe_holder(record)
        if time.monotonic() >= deadline:
            raise LabFailure(  # another run holds the device: the lab's, not the worker's
                "device lease not obtained", f"device {key.label} is in use: {holder}",
                "wait for that run to end (see llorch-pool leases), or raise --lease-wait")
        # a holder writes its record just after it locks: give it a moment to appear
        fresh = record is not None or time.monotonic() - started >= _RECORD_GRACE_S
        if not said and fresh and out is not None:
            print(f"⏳ waiting up to {wait:g} s for device {key.label}: {holder}",
                  file=out, flush=True)
            said = True
        time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))


# ---------------------------------------------------------------- listing

@dataclass(frozen=True)
class LeaseState:
    key: str
    held: bool
    holder: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "held": self.held, "holder": self.holder}


def is_held(lease_dir: Path, key: str) -> bool:
    """Is the device's lock held by anyone (this process included)?"""
    try:
        fd = _open_lock(lease_dir / f"{key}.lock")
    except HarnessError:
        return False
    try:
        if (str(lease_dir), key) in _HELD:
            return True
        if _try_lock(fd, fcntl.LOCK_SH):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)


def list_leases(lease_dir: Path, *, include_free: bool = False) -> list[LeaseState]:
    """Every device with a lock file: held or not, and its newest holder record."""
    if not lease_dir.is_dir():
        return []
    check_lease_dir(lease_dir)
    out: list[LeaseState] = []
    for lock in sorted(lease_dir.glob("*.lock")):
        key = lock.stem
        held = is_held(lease_dir, key)
        if held or include_free:
            out.append(LeaseState(key, held, read_holder(lease_dir, key)))
    return out


# ---------------------------------------------------------------- spawn

def lease_for_spawn(backend: str, gpu: int, env: Mapping[str, str],
                    lease_dir: str | os.PathLike[str] | None, wait: float | None,
                    pool_root: str, worker_id: str, out: TextIO | None) -> Lease | None:
    """The lease a worker on (backend, gpu) needs before it starts (None for cpu). `env` is
    the worker's environment (its CUDA_VISIBLE_DEVICES names the physical device)."""
    if not needs_lease(backend):
        return None
    key = device_key(backend, gpu, env)
    return acquire(key, ensure_lease_dir(resolve_lease_dir(lease_dir)),
                   wait=resolve_lease_wait(wait), pool_root=pool_root, worker_id=worker_id,
                   out=out)
