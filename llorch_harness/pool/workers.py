"""Worker spawn, list, stop, logs and reap (CP3 WU3.2 + WU3.3).

The records in `.runtime/workers/<id>.json` keep the CP3 fields the Rust
llorch-pool reads, plus what identifies the process (create time, marker,
binary hash), so a reused pid is never mistaken for a worker and never signalled.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import psutil
from filelock import FileLock, Timeout

from llorch_harness import __version__, fsutil
from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import (
    NotRegularFileError,
    atomic_write_text,
    loads_json_strict,
    open_regular,
    read_regular_text,
    sha256_file,
    tail_text,
)
from llorch_harness.pool import procs
from llorch_harness.pool.backends import find_binary, get_backend
from llorch_harness.pool.catalog import read_catalog
from llorch_harness.pool.paths import PoolPaths, validate_model_id, validate_worker_id
from llorch_harness.pool.readiness import (
    NO_ANSWER,
    CallbackServer,
    NotReady,
    ask_health,
    wait_ready,
)
from llorch_harness.redaction import redact

BASE_PORT = 8000
LOG_TAIL_LINES = 40
LIST_HEALTH_DEADLINE_S = 1.0  # `worker list`/`status`: whole /health call, answer or not
FAILED_START_GRACE = 2.0  # SIGINT grace for a worker that never got ready
# SIGINT grace for a running worker: longer than a generation, because llorch-candled is
# single-threaded and handles SIGINT only once the generation in progress has ended.
STOP_GRACE_S = 30.0
WORKER_KINDS = ("llorch", "reference")
REFWORKER_MODULE = "llorch_harness.lab.refworker"


# ---------------------------------------------------------------- errors, results

class WorkerStartError(HarnessError):
    """A worker that exited or never became ready: exit status, log tail and log path."""

    def __init__(
        self, worker_id: str, reason: str, *, exit_status: int | None, log_path: Path,
        log_tail: str, seconds: float = 0.0,
    ) -> None:
        super().__init__(f"worker {worker_id} {reason}", f"log: {log_path}")
        self.worker_id = worker_id
        self.reason = reason
        self.exit_status = exit_status
        self.log_path = log_path
        self.log_tail = redact(log_tail)  # the worker's own output: it may echo a token
        self.seconds = seconds

    def __str__(self) -> str:
        return (f"{self.one_line()}\n--- last {LOG_TAIL_LINES} lines of {self.log_path} ---\n"
                f"{self.log_tail}")


@dataclass
class StopResult:
    worker_id: str
    step: str  # "sigint" | "sigterm" | "sigkill" | "already_dead" | "stale_record"
    seconds: float
    port_free: bool

    def to_json(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "step": self.step,
                "seconds": round(self.seconds, 4), "port_free": self.port_free}


@dataclass
class WorkerStatus:
    """One `worker list` row: the record plus what we see now."""

    worker_id: str
    pid: int | None
    backend: str
    model_id: str
    port: int | None
    status: str  # "running" | "starting" | "dead" | "stale" | "invalid" | "orphan"
    health: str  # "healthy" | "unhealthy" | "unreachable" | "no answer" | "-"
    uptime_s: float | None
    uri: str | None
    log_path: str | None
    started_at: str | None
    record: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "record"}
        out["record"] = self.record
        return out


# ---------------------------------------------------------------- records

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


def record_path(paths: PoolPaths, worker_id: str) -> Path:
    return paths.workers_dir / f"{validate_worker_id(worker_id)}.json"


def log_path_for(paths: PoolPaths, worker_id: str) -> Path:
    return paths.workers_dir / f"{validate_worker_id(worker_id)}.log"


def read_record(path: Path) -> dict[str, Any]:
    """A record as a dict; unreadable or not a CP3 record raises HarnessError naming the file."""
    try:
        # a FIFO or device in place of a record would block `worker list` forever
        raw = loads_json_strict(read_regular_text(
            path, "worker record", "move the file aside if no worker runs with that id"))
    except (FileNotFoundError, NotRegularFileError):
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise HarnessError(f"cannot read worker record {path}: {type(exc).__name__}: {exc}",
                           "move the file aside if no worker runs with that id") from exc
    pid = raw.get("pid") if isinstance(raw, dict) else None
    # bool is an int in Python: {"pid": true} must not become pid 1 (init)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        raise HarnessError(f"worker record {path} has no valid pid",
                           "move the file aside if no worker runs with that id")
    worker_id = raw.setdefault("worker_id", path.stem)  # the file name is the id (CP3 layout)
    if not isinstance(worker_id, str):
        raise HarnessError(f"worker record {path} has a non-string worker_id",
                           "move the file aside if no worker runs with that id")
    return raw


def record_port(rec: Mapping[str, Any]) -> int | None:
    """The record's port if it is one (1..65535); None for anything else (99999, -1, "80"),
    so no socket call ever sees it."""
    port = rec.get("port")
    if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
        return port
    return None


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(dict(record), indent=2) + "\n")


def remove_record(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def record_identity(paths: PoolPaths, rec: Mapping[str, Any]) -> tuple[str, psutil.Process | None]:
    ct = rec.get("create_time")
    return procs.identify(
        int(rec["pid"]),
        create_time=float(ct) if isinstance(ct, int | float) else None,
        worker_id=str(rec.get("worker_id", "")),
        pool_root=str(rec.get("pool_root") or procs.pool_key(paths.root)),
        started_at=parse_time(rec.get("started_at")),
    )


# ---------------------------------------------------------------- logs

def tail_lines(path: Path, n: int = LOG_TAIL_LINES) -> str:
    """The last n lines from a bounded window at the end (fsutil.tail_text): linear however
    large the log and however long its lines (`\r`-redrawn progress has no newline).
    A log that is not a regular file (a FIFO would block) is named, never read."""
    try:
        return tail_text(path, n)
    except NotRegularFileError as exc:
        return f"(log {path} is {exc.kind}: not read)"
    except OSError as exc:
        return f"(log {path} cannot be read: {exc.strerror or exc})"


def rotate_log(log: Path) -> None:
    """Keep the previous run's log as <id>.log.1: never silently lost."""
    if log.exists():
        os.replace(log, log.with_name(log.name + ".1"))


# ---------------------------------------------------------------- spawn

def _resolve_model(paths: PoolPaths, model_id: str, backend: str) -> tuple[Any, Path]:
    validate_model_id(model_id)
    entry = read_catalog(paths).find(model_id)
    if entry is None:
        raise HarnessError(f"model {model_id} is not in the catalog",
                           f"Run: llorch-pool models download {model_id}")
    if not entry.downloaded:
        raise HarnessError(f"model {model_id} is not downloaded",
                           f"Run: llorch-pool models download {model_id}")
    if backend not in entry.backends:
        raise HarnessError(
            f"model {model_id} doesn't support the {backend} backend",
            f"supported: {', '.join(entry.backends) or 'none'}", exit_code=2,
        )
    model_dir = paths.absolute(entry.path)
    if model_dir.is_file() and model_dir.suffix == ".safetensors":
        return entry, model_dir
    if not model_dir.is_dir() or not any(model_dir.glob("*.safetensors")):
        raise HarnessError(
            f"model {model_id} has no *.safetensors in {model_dir}",
            f"Run: llorch-pool models verify {model_id} (or download it again with --force)",
        )
    return entry, model_dir  # the contract takes the directory: config.json sits beside


def _reference_binary() -> Path:
    spec = importlib.util.find_spec(f"{REFWORKER_MODULE}.__main__")
    if spec is None or spec.origin is None:
        raise HarnessError("the reference worker (llorch_harness.lab.refworker) is not installed",
                           "reinstall llorch-harness, or use --worker llorch")
    return Path(spec.origin)


def _pick_port(port: int | None, gpu: int) -> int:
    chosen = BASE_PORT + gpu if port is None else port
    if chosen == 0:
        chosen = procs.free_port()
    if not 1 <= chosen <= 65535:
        raise HarnessError(f"port {chosen} is out of range",
                           "pass --port 1..65535 (0: any free)", 2)
    if not procs.port_is_free(chosen):
        raise HarnessError(
            f"port {chosen} is already in use",
            "stop what listens there, or pass --port N (--port 0 takes a free port)",
        )
    return chosen


def _live_worker(paths: PoolPaths, worker_id: str) -> str | None:
    """Why worker_id counts as live (record with a live process, or marked orphans), else None.
    A stale or dead record is removed here: it must not block a new spawn."""
    rp = record_path(paths, worker_id)
    try:
        rec = read_record(rp)
    except FileNotFoundError:
        rec = None
    if rec is not None:
        state, _ = record_identity(paths, rec)
        if state == "alive":
            return f"pid {rec['pid']}, port {rec.get('port')}"
        remove_record(rp)
    orphans = procs.marked_processes(procs.pool_key(paths.root), worker_id)
    if orphans:
        return f"unrecorded processes {', '.join(str(m.proc.pid) for m in orphans)}"
    return None


def spawn_lock_path(paths: PoolPaths, worker_id: str) -> Path:
    return paths.workers_dir / f".{validate_worker_id(worker_id)}.lock"


def _spawn_lock(paths: PoolPaths, worker_id: str) -> FileLock:
    paths.writable_dir(paths.workers_dir)  # no symlinked .runtime or workers/ under the root
    return FileLock(str(spawn_lock_path(paths, worker_id)), timeout=0)


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)


def spawn_worker(
    paths: PoolPaths, backend: str, model_id: str, *, gpu: int = 0, port: int | None = None,
    worker: str = "llorch", bin_dir: Path | str | None = None, ready_timeout: float = 120.0,
    extra_env: Mapping[str, str] | None = None, worker_id: str | None = None,
    out: TextIO | None = None, die_with_parent: bool = False,
) -> WorkerHandle:
    """Validate, start detached, wait for callback + healthy /health, record. Nothing is
    started until every check passed; a worker that fails to get ready is stopped."""
    spec = get_backend(backend)
    if worker not in WORKER_KINDS:
        raise HarnessError(f"unknown worker kind {worker!r}", "use --worker llorch or reference", 2)
    if gpu < 0:
        raise HarnessError(f"gpu index {gpu} is negative", "pass --gpu 0 or higher", 2)
    if not (isinstance(ready_timeout, int | float) and math.isfinite(ready_timeout)
            and ready_timeout > 0):  # nan compares false to everything: it never expires
        raise HarnessError(f"ready timeout {ready_timeout!r} is not a positive finite number",
                           "pass --ready-timeout SECONDS", 2)
    wid = validate_worker_id(worker_id or f"worker-{backend}-{gpu}")
    entry, model_path = _resolve_model(paths, model_id, backend)
    if worker == "reference":
        if backend != "cpu":
            raise HarnessError("the reference worker runs on cpu only",
                               f"use backend cpu, or --worker llorch for {backend}", 2)
        binary = _reference_binary()
        launcher = [sys.executable, "-m", REFWORKER_MODULE]
    else:
        binary = find_binary(backend, bin_dir)
        launcher = [str(binary)]

    lock = _spawn_lock(paths, wid)
    try:
        lock.acquire()
    except Timeout as exc:
        raise HarnessError(f"another spawn of {wid} is in progress",
                           "wait for it, or pick another --gpu") from exc
    try:
        live = _live_worker(paths, wid)
        if live:
            raise HarnessError(f"worker {wid} is already running ({live})",
                               f"stop it first: llorch-pool worker stop {wid}, or reap orphans")
        chosen_port = _pick_port(port, gpu)
        binary_sha = sha256_file(binary)
        return _start(
            paths, spec_command=spec.command, launcher=launcher, binary=binary,
            binary_sha=binary_sha, wid=wid, backend=backend, model_id=model_id,
            model_name=entry.name, model_path=model_path, gpu=gpu, port=chosen_port,
            worker=worker, ready_timeout=ready_timeout, extra_env=extra_env, out=out,
            die_with_parent=die_with_parent,
        )
    finally:
        lock.release()


def _start(
    paths: PoolPaths, *, spec_command: Callable[..., list[str]], launcher: list[str],
    binary: Path, binary_sha: str, wid: str, backend: str, model_id: str, model_name: str,
    model_path: Path, gpu: int, port: int, worker: str, ready_timeout: float,
    extra_env: Mapping[str, str] | None, out: TextIO | None, die_with_parent: bool,
) -> WorkerHandle:
    pool = procs.pool_key(paths.root)
    log = log_path_for(paths, wid)
    rec_path = record_path(paths, wid)
    _say(out, "🚀 Spawning worker:")
    _say(out, f"   ID: {wid}")
    _say(out, f"   Backend: {backend}")
    _say(out, f"   Model: {model_name} ({model_id})")
    _say(out, f"   GPU: {gpu}")
    _say(out, f"   Port: {port}")

    env = dict(os.environ)
    env.update(extra_env or {})
    env[procs.MARKER_WORKER_ENV] = wid
    env[procs.MARKER_POOL_ENV] = pool
    rotate_log(log)
    callback = CallbackServer(expected_worker_id=wid).start()
    flags = spec_command("worker", worker_id=wid, model=model_path, port=port,
                         callback_url=callback.url, gpu=gpu)[1:]
    argv = launcher + flags
    proc: subprocess.Popen[bytes] | None = None
    record: dict[str, Any] | None = None
    t_start = time.monotonic()
    try:
        with open(log, "ab") as logf:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    cwd=paths.root, env=env, start_new_session=True, close_fds=True,
                    preexec_fn=procs.pdeathsig_preexec() if die_with_parent else None,
                )
            except OSError as exc:
                raise HarnessError(f"cannot start {argv[0]}: {exc.strerror or exc}",
                                   "check that the binary is executable and built for this machine"
                                   ) from exc
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = time.time()
        record: dict[str, Any] = {
            "worker_id": wid, "pid": proc.pid, "backend": backend, "model_id": model_id,
            "port": port, "started_at": utc_now(), "create_time": create_time,
            "cmdline": argv, "binary_path": str(binary), "binary_sha256": binary_sha,
            "log_path": str(log), "uri": f"http://127.0.0.1:{port}", "vram_bytes": None,
            "gpu": gpu, "pool_root": pool, "harness_version": __version__,
            "ready_seconds": None, "worker": worker, "model_path": str(model_path),
            "session": env.get(procs.SESSION_ENV),
        }
        # written at once: a CLI killed while waiting leaves a record to find the worker by
        write_record(rec_path, record)
        try:
            ready_s = wait_ready(proc, port, callback, ready_timeout)
        except NotReady as exc:
            status = exc.exit_status
            _stop_process(paths, rec_path, record, proc,
                          grace=FAILED_START_GRACE if status is None else 0.5)
            if status is None:
                status = proc.poll()
            raise WorkerStartError(
                wid, exc.reason, exit_status=status, log_path=log, log_tail=tail_lines(log),
                seconds=time.monotonic() - t_start,
            ) from None
        cb = callback.received
        record["ready_seconds"] = round(ready_s, 4)
        record["vram_bytes"] = cb.payload.get("vram_bytes") if cb else None
        record["callback_uri"] = cb.payload.get("uri") if cb else None
        write_record(rec_path, record)
    except BaseException:
        if proc is not None and proc.poll() is None:
            minimal = {"worker_id": wid, "pid": proc.pid, "pool_root": pool, "port": None}
            _stop_process(paths, rec_path, record or minimal, proc, grace=FAILED_START_GRACE)
        raise
    finally:
        callback.close()
    _say(out, f"✅ Worker spawned (PID: {proc.pid}), ready in {ready_s:.2f} s")
    _say(out, f"   Endpoint: http://localhost:{port}")
    _say(out, f"   Logs: {paths.relative(log)}")
    return WorkerHandle(paths, record, proc)


def _stop_process(
    paths: PoolPaths, rec_path: Path, record: Mapping[str, Any],
    proc: subprocess.Popen[bytes] | None, grace: float,
) -> StopResult:
    """Stop one recorded worker (we know it is ours) and everything carrying its marker."""
    wid = str(record["worker_id"])
    pool = str(record.get("pool_root") or procs.pool_key(paths.root))
    try:
        root: psutil.Process | None = psutil.Process(int(record["pid"]))
        if procs.is_gone(root):
            root = None
    except psutil.NoSuchProcess:
        root = None

    born = record.get("create_time")
    born = float(born) if isinstance(born, int | float) and not isinstance(born, bool) else None

    def sweep() -> list[psutil.Process]:
        # the worker's own descendants carry its marker (session included) and were born
        # after it; a process that merely claims the marker is not one of them
        return [m.proc for m in procs.marked_processes(pool, wid)
                if (born is None or _born_after(m.proc, born))
                and ("session" not in record or m.session == record.get("session"))]

    res = procs.stop_ladder(root, grace=grace, extra=sweep)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
    if res.survivors:
        raise HarnessError(
            f"worker {wid}: processes {', '.join(str(p.pid) for p in res.survivors)} "
            "survived SIGKILL", f"record {rec_path} kept; check them with ps")
    port = record_port(record)
    port_free = procs.wait_port_free(port) if port is not None else True
    remove_record(rec_path)
    return StopResult(wid, res.step, res.seconds, port_free)


def _born_after(proc: psutil.Process, created: float) -> bool:
    try:
        return proc.create_time() >= created - procs.CREATE_TIME_TOLERANCE_S
    except psutil.Error:
        return False


# ---------------------------------------------------------------- handle

class WorkerHandle:
    """A live worker owned by this process; a context manager that stops it on exit."""

    def __init__(
        self, paths: PoolPaths, record: dict[str, Any], proc: subprocess.Popen[bytes] | None,
    ) -> None:
        self.paths = paths
        self.record = record
        self._proc = proc
        self._stopped: StopResult | None = None
        self.worker_id: str = record["worker_id"]
        self.backend: str = record["backend"]
        self.model_id: str = record["model_id"]
        self.gpu: int = int(record.get("gpu", 0))
        self.pid: int = int(record["pid"])
        self.port: int = int(record["port"])
        self.uri: str = record["uri"]
        self.log_path = Path(record["log_path"])
        self.record_path = record_path(paths, self.worker_id)
        self.ready_seconds: float = float(record.get("ready_seconds") or 0.0)
        self.command: list[str] = list(record["cmdline"])
        self.binary_path = Path(record["binary_path"])
        self.binary_sha256: str = record["binary_sha256"]
        self.vram_bytes: int | None = record.get("vram_bytes")
        self.create_time: float = float(record["create_time"])

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.worker_id} pid={self.pid} {self.uri}>"

    def poll(self) -> int | None:
        """Exit status if the worker has exited, else None."""
        return self._proc.poll() if self._proc is not None else (
            None if procs.process_alive(self.pid) else -1)

    def stop(self, grace: float = STOP_GRACE_S) -> StopResult:
        """Idempotent: the second call returns the first result."""
        if self._stopped is None:
            self._stopped = _stop_recorded(self.paths, self.worker_id, grace, proc=self._proc,
                                           fallback=self.record)
        return self._stopped

    def log_tail(self, n: int = LOG_TAIL_LINES) -> str:
        return tail_lines(self.log_path, n)

    def __enter__(self) -> WorkerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- stop

def _stop_recorded(
    paths: PoolPaths, worker_id: str, grace: float, *, proc: subprocess.Popen[bytes] | None = None,
    fallback: Mapping[str, Any] | None = None,
) -> StopResult:
    rp = record_path(paths, worker_id)
    pool = procs.pool_key(paths.root)
    try:
        rec: Mapping[str, Any] = read_record(rp)
    except FileNotFoundError:
        if fallback is None:
            leftovers = procs.marked_processes(pool, worker_id)
            hint = ("its unrecorded processes remain: run llorch-pool worker reap" if leftovers
                    else "see llorch-pool worker list")
            raise HarnessError(f"no worker {worker_id} in {paths.workers_dir}", hint) from None
        rec = fallback  # someone removed the record; our handle still knows the process
    t0 = time.monotonic()
    state, _ = record_identity(paths, rec)
    if state == "reused":
        # the pid names another process now: remove the record, signal nothing
        # (marked leftovers of this worker, if any, show as orphans for `worker reap`)
        remove_record(rp)
        port = record_port(rec)
        free = procs.port_is_free(port) if port is not None else True
        return StopResult(worker_id, "stale_record", time.monotonic() - t0, free)
    if state == "gone":
        res = _stop_process(paths, rp, rec, proc, grace=min(grace, 2.0))  # leftovers by marker
        return StopResult(worker_id, "already_dead", res.seconds, res.port_free)
    return _stop_process(paths, rp, rec, proc, grace=grace)


def stop_worker(paths: PoolPaths, worker_id: str, grace: float = STOP_GRACE_S) -> StopResult:
    """Stop a recorded worker: SIGINT, grace, SIGTERM, SIGKILL; a stale record is just removed."""
    return _stop_recorded(paths, validate_worker_id(worker_id), grace)


def record_ids(paths: PoolPaths) -> list[str]:
    if not paths.workers_dir.is_dir():
        return []
    return sorted(p.stem for p in paths.workers_dir.glob("*.json") if not p.name.startswith("."))


@dataclass
class StopFailure:
    """A record `stop --all` could not handle: which file, and why (one line)."""

    record: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"record": self.record, "error": self.message}


def stop_every(paths: PoolPaths, grace: float = STOP_GRACE_S) -> tuple[list[StopResult],
                                                               list[StopFailure]]:
    """Try every record, whatever happens to one of them: an unreadable record, an oddly
    named file or a worker that survives SIGKILL is reported, never the end of the loop."""
    results: list[StopResult] = []
    failures: list[StopFailure] = []
    for wid in record_ids(paths):
        name = f"{wid}.json"
        try:
            validate_worker_id(wid)
        except HarnessError as exc:
            failures.append(StopFailure(name, f"{exc.one_line()}; record "
                                        f"{paths.workers_dir / name} left alone"))
            continue
        try:
            results.append(stop_worker(paths, wid, grace))
        except FileNotFoundError:
            continue  # removed meanwhile (another stop, the worker's own CLI)
        except HarnessError as exc:
            if exc.message.startswith(f"no worker {wid} "):
                continue
            failures.append(StopFailure(name, exc.one_line()))
        except (OSError, ValueError, TypeError) as exc:
            failures.append(StopFailure(name, f"{type(exc).__name__}: {exc}"))
    return results, failures


def stop_all(paths: PoolPaths, grace: float = STOP_GRACE_S) -> list[StopResult]:
    """stop_every, then one error naming every record that could not be handled."""
    results, failures = stop_every(paths, grace)
    if failures:
        raise HarnessError(
            f"{len(failures)} worker record(s) not handled: "
            + "; ".join(f"{f.record}: {f.message}" for f in failures),
            f"{len(results)} other worker(s) were stopped; see llorch-pool worker list")
    return results


# ---------------------------------------------------------------- list

def _health(uri: object) -> tuple[str, str]:
    """(health column, note) for a live worker: one /health with a whole-call deadline.

    The real worker answers nothing while it generates, so silence is not a crash."""
    if not uri:
        return "-", ""
    h = ask_health(uri, LIST_HEALTH_DEADLINE_S)
    if h.state == "invalid":
        return "-", f"record {h.detail}; /health not asked"
    if h.state == NO_ANSWER:
        return NO_ANSWER, f"/health: {h.detail}"
    return h.state, ("" if h.healthy else f"/health: {h.detail}")


def list_workers(paths: PoolPaths, *, check_health_now: bool = True) -> list[WorkerStatus]:
    """Every record with its status from process identity (pid + create time + marker)."""
    rows: list[WorkerStatus] = []
    for wid in record_ids(paths):
        rp = paths.workers_dir / f"{wid}.json"
        try:
            rec = read_record(rp)
        except FileNotFoundError:
            continue
        except HarnessError as exc:
            rows.append(WorkerStatus(wid, None, "?", "?", None, "invalid", "-", None, None, None,
                                     None, note=exc.message))
            continue
        state, proc = record_identity(paths, rec)
        started = rec.get("started_at")
        uptime = None
        if state == "alive" and proc is not None:
            with contextlib.suppress(psutil.Error):
                uptime = max(0.0, time.time() - proc.create_time())
        status = {"alive": "running", "gone": "dead", "reused": "stale"}[state]
        if status == "running" and "ready_seconds" in rec and rec.get("ready_seconds") is None:
            status = "starting"
        port = record_port(rec)
        uri = rec.get("uri")  # the CP3 (Rust) record has none: built from the port then
        if not isinstance(uri, str) or not uri:
            uri = f"http://127.0.0.1:{port}" if port else None
        health, health_note = "-", ""
        if status in ("running", "starting") and check_health_now:
            health, health_note = _health(uri)
        note = {"stale": "pid now belongs to another process",
                "dead": "process gone; `worker stop` removes the record"}.get(status, "")
        rows.append(WorkerStatus(
            worker_id=str(rec.get("worker_id", wid)), pid=int(rec["pid"]),
            backend=str(rec.get("backend", "?")), model_id=str(rec.get("model_id", "?")),
            port=port, status=status, health=health, uptime_s=uptime, uri=uri,
            log_path=rec.get("log_path") or str(paths.workers_dir / f"{wid}.log"),
            started_at=started if isinstance(started, str) else None, record=rec,
            note="; ".join(n for n in (note, health_note) if n),
        ))
    return rows


# ---------------------------------------------------------------- orphans

def _spawn_in_progress(paths: PoolPaths, worker_id: str) -> bool:
    """Is the spawn lock of this worker held right now? Creates nothing: a spawner makes its
    lock file before it starts the process, so no lock file means no spawn, and a lock path
    through a symbolic link is not looked at."""
    lock_path = spawn_lock_path(paths, worker_id)
    if fsutil.first_symlink(paths.root, lock_path) is not None:
        return False
    try:
        if not stat.S_ISREG(os.lstat(lock_path).st_mode):
            return False
    except OSError:
        return False
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


def find_orphans(
    paths: PoolPaths | None = None, *, session: str | None = None,
) -> list[psutil.Process]:
    """Marked processes whose worker has no record with a live process (all pools if paths is
    None). A worker being spawned right now (its spawn lock is held) is never an orphan."""
    pool = procs.pool_key(paths.root) if paths is not None else None
    live: dict[tuple[str, str], bool] = {}
    orphans = []
    for m in procs.marked_processes(pool, session=session):
        key = (m.pool_root, m.worker_id)
        if key not in live:
            # marked_processes only hands out markers whose id and pool root passed the
            # checks in procs.parse_marker: no path below is built from unchecked text
            pp = PoolPaths(Path(m.pool_root))
            try:
                rec = read_record(record_path(pp, m.worker_id))
                live[key] = record_identity(pp, rec)[0] == "alive"
            except (FileNotFoundError, HarnessError, OSError):
                live[key] = False
            if not live[key]:
                live[key] = _spawn_in_progress(pp, m.worker_id)
        if not live[key]:
            orphans.append(m.proc)
    return orphans


def reap_orphans(
    paths: PoolPaths | None = None, grace: float = 5.0, *, session: str | None = None,
) -> list[int]:
    """Stop every orphan (identity re-checked by psutil before each signal); returns their pids."""
    found = find_orphans(paths, session=session)
    if not found:
        return []
    pids = [p.pid for p in found]

    def again() -> list[psutil.Process]:
        return find_orphans(paths, session=session)

    res = procs.stop_ladder(None, grace=grace, extra=lambda: found + again())
    if res.survivors:
        raise HarnessError(f"orphans {', '.join(str(p.pid) for p in res.survivors)} survived "
                           "SIGKILL", "check them with ps")
    return pids


# ---------------------------------------------------------------- logs (commands)

def _existing_log(paths: PoolPaths, worker_id: str) -> Path:
    log = log_path_for(paths, worker_id)
    if not log.exists():
        raise HarnessError(f"no log for worker {worker_id} at {log}",
                           "see llorch-pool worker list for worker ids")
    open_regular(log, "worker log").close()  # a FIFO would block: refused with one line
    return log


def worker_logs(paths: PoolPaths, worker_id: str, n: int = LOG_TAIL_LINES) -> str:
    return tail_text(_existing_log(paths, worker_id), n, what="worker log")


def _worker_running(paths: PoolPaths, worker_id: str) -> bool:
    try:
        rec = read_record(record_path(paths, worker_id))
    except (FileNotFoundError, HarnessError):
        return False
    return record_identity(paths, rec)[0] == "alive"


def follow_logs(
    paths: PoolPaths, worker_id: str, n: int = LOG_TAIL_LINES, *, out: TextIO | None = None,
    poll: float = 0.2, until: Callable[[], bool] | None = None,
) -> None:
    """Print the tail, then new lines as they come (a rotated log is reopened). Ends on
    Ctrl-C, when `until()` is true, or once the worker is gone and the log is drained."""
    out = out or sys.stdout
    log = _existing_log(paths, worker_id)
    tail = tail_text(log, n, what="worker log")
    if tail:
        print(tail, file=out, flush=True)
    fh = open_regular(log, "worker log")
    try:
        fh.seek(0, os.SEEK_END)
        ino = os.fstat(fh.fileno()).st_ino
        while True:
            chunk = fh.read()
            if chunk:
                out.write(chunk.decode("utf-8", errors="replace"))
                out.flush()
                continue
            if until is not None and until():
                return
            if not _worker_running(paths, worker_id):
                rest = fh.read()
                if rest:
                    out.write(rest.decode("utf-8", errors="replace"))
                print(f"(worker {worker_id} is not running)", file=out, flush=True)
                return
            try:
                if os.stat(log).st_ino != ino:
                    new = open_regular(log, "worker log")  # opened first: a vanished log
                    fh.close()                              # keeps the old one readable
                    fh = new
                    ino = os.fstat(fh.fileno()).st_ino
                    continue
            except FileNotFoundError:
                pass
            time.sleep(poll)
    finally:
        fh.close()
