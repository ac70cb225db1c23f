"""`worker spawn`: validate everything, start the worker detached, wait until it is ready.

Nothing starts until every check passed (backend, model, binary, no live worker with the
id, a free port). The worker runs in its own session with stdin from /dev/null and its
output in `.runtime/workers/<id>.log`, carrying the harness marker in its environment.
Its record is written at once (a CLI killed while waiting leaves a way to find it) and
again when ready; a worker that fails to get ready is stopped with the full ladder.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import psutil
from filelock import FileLock, Timeout

from llorch_harness import __version__
from llorch_harness.choices import UnknownName
from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import sha256_file
from llorch_harness.pool import leases, procs, torchdevice
from llorch_harness.pool.backends import CPU, find_binary, get_backend
from llorch_harness.pool.catalog import ModelEntry, known_ids, known_models, read_catalog
from llorch_harness.pool.paths import (
    PoolPaths,
    resolve_pool_root,
    validate_model_id,
    validate_worker_id,
)
from llorch_harness.pool.readiness import CallbackServer, NotReady, wait_ready
from llorch_harness.pool.workers.defaults import (
    BASE_PORT,
    FAILED_START_GRACE,
    LOG_TAIL_LINES,
    READY_TIMEOUT_S,
    WORKER_KINDS,
)
from llorch_harness.pool.workers.handle import WorkerHandle
from llorch_harness.pool.workers.logs import rotate_log, tail_lines
from llorch_harness.pool.workers.record import (
    WorkerRecord,
    log_path_for,
    read_record,
    record_identity,
    record_path,
    remove_record,
    spawn_lock_path,
    utc_now,
    write_record,
)
from llorch_harness.pool.workers.stop import stop_process
from llorch_harness.redaction import redact

REFWORKER_MODULE = "llorch_harness.lab.refworker"
REF_BACKEND_ENV = "LLORCH_REF_BACKEND"  # the reference worker's persona (refworker/persona.py)


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


@dataclass(frozen=True)
class SpawnPlan:
    """Everything checked before anything starts: what runs, for which worker, where."""

    wid: str
    backend: str
    gpu: int
    port: int
    worker: str  # "llorch" | "reference"
    model_id: str
    model_name: str
    model_path: Path
    binary: Path
    binary_sha: str
    launcher: tuple[str, ...]
    flags: Callable[..., list[str]]  # the backend's command line (backends.BackendSpec)

    def argv(self, callback_url: str) -> list[str]:
        flags = self.flags("worker", worker_id=self.wid, model=self.model_path, port=self.port,
                           callback_url=callback_url, gpu=self.gpu)[1:]
        return [*self.launcher, *flags]


# --------------------------------------------------------------------------- checks


def _resolve_model(paths: PoolPaths, model_id: str, backend: str) -> tuple[ModelEntry, Path]:
    validate_model_id(model_id)
    catalog = read_catalog(paths)
    entry = catalog.find(model_id)
    if entry is None and model_id not in known_models():  # a download would refuse it too
        raise UnknownName("model id", model_id, known_ids(catalog))
    # the hint's command must act on this pool, wherever it is typed
    here = "" if paths.root == resolve_pool_root(None) else \
        f" --pool-root {shlex.quote(str(paths.root))}"
    if entry is None:
        raise HarnessError(f"model {model_id} is not in the catalog of {paths.root}",
                           f"Run: llorch-pool models download {model_id}{here}")
    if not entry.downloaded:
        raise HarnessError(f"model {model_id} is not downloaded",
                           f"Run: llorch-pool models download {model_id}{here}")
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
        rec: WorkerRecord | None = read_record(rp)
    except FileNotFoundError:
        rec = None
    if rec is not None:
        state, _ = record_identity(paths, rec)
        if state == "alive":
            return f"pid {rec.pid}, port {rec.port}"
        remove_record(rp)
    orphans = procs.marked_processes(procs.pool_key(paths.root), worker_id)
    if orphans:
        return f"unrecorded processes {', '.join(str(m.proc.pid) for m in orphans)}"
    return None


def _check_arguments(backend: str, worker: str, gpu: int, ready_timeout: float) -> None:
    get_backend(backend)
    if worker not in WORKER_KINDS:
        raise HarnessError(f"unknown worker kind {worker!r}", "use --worker llorch or reference", 2)
    if gpu < 0:
        raise HarnessError(f"gpu index {gpu} is negative", "pass --gpu 0 or higher", 2)
    if not (isinstance(ready_timeout, int | float) and math.isfinite(ready_timeout)
            and ready_timeout > 0):  # nan compares false to everything: it never expires
        raise HarnessError(f"ready timeout {ready_timeout!r} is not a positive finite number",
                           "pass --ready-timeout SECONDS", 2)


# --------------------------------------------------------------------------- spawn


def spawn_worker(
    paths: PoolPaths, backend: str, model_id: str, *, gpu: int = 0, port: int | None = None,
    worker: str = "llorch", bin_dir: Path | str | None = None,
    ready_timeout: float = READY_TIMEOUT_S, extra_env: Mapping[str, str] | None = None,
    worker_id: str | None = None, out: TextIO | None = None, die_with_parent: bool = False,
    lease_dir: Path | str | None = None, lease_wait: float | None = None,
    lease_out: TextIO | None = None,
) -> WorkerHandle:
    """Validate, start detached, wait for callback + healthy /health, record. Nothing is
    started until every check passed; a worker that fails to get ready is stopped. A GPU
    worker first takes its device's lease (leases.py; waits up to `lease_wait` seconds,
    saying so on `lease_out`, else `out`) and hands the lock to the worker, so the device
    stays leased while the worker lives."""
    _check_arguments(backend, worker, gpu, ready_timeout)
    wid = validate_worker_id(worker_id or f"worker-{backend}-{gpu}")
    entry, model_path = _resolve_model(paths, model_id, backend)
    if worker == "reference":
        binary = _reference_binary()
        launcher: tuple[str, ...] = (sys.executable, "-m", REFWORKER_MODULE,
                                     *_reference_engine(backend, gpu))
        if backend != CPU:  # the reference worker plays llorch-<backend>-candled, on torch
            extra_env = {**(extra_env or {}), REF_BACKEND_ENV: backend}
    else:
        try:
            binary = find_binary(backend, bin_dir)
        except HarnessError as err:
            if err.hint and "--worker reference" not in err.hint:
                err.hint += ("; or --worker reference: the harness's reference worker "
                             "(no binary needed)")
            raise
        launcher = (str(binary),)
    paths.writable_dir(paths.workers_dir)  # no symlinked .runtime or workers/ under the root
    lock = FileLock(str(spawn_lock_path(paths, wid)), timeout=0)
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
        plan = SpawnPlan(wid, backend, gpu, _pick_port(port, gpu), worker, model_id, entry.name,
                         model_path, binary, sha256_file(binary), launcher,
                         get_backend(backend).command)
        lease = leases.lease_for_spawn(backend, gpu, {**os.environ, **(extra_env or {})},
                                       lease_dir, lease_wait, procs.pool_key(paths.root), wid,
                                       out if lease_out is None else lease_out)
        try:
            handle = _start(paths, plan, ready_timeout=ready_timeout, extra_env=extra_env,
                            out=out, die_with_parent=die_with_parent, lease=lease)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        handle.lease = lease
        return handle
    finally:
        lock.release()


def _reference_engine(backend: str, gpu: int) -> tuple[str, ...]:
    """The reference worker's engine: numpy on cpu; on a GPU backend, torch on that device,
    refused before anything starts when torch does not see it."""
    if backend == CPU:
        return ()
    device = torchdevice.default_device(backend, gpu)
    why = torchdevice.device_usable(device)
    if why is not None:
        raise HarnessError(f"the reference worker on {backend} needs torch to see {device}: "
                           f"{why}", f"use backend cpu, or --worker llorch for {backend}", 2)
    return ("--engine", "torch")


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)


def _start(
    paths: PoolPaths, plan: SpawnPlan, *, ready_timeout: float,
    extra_env: Mapping[str, str] | None, out: TextIO | None, die_with_parent: bool,
    lease: leases.Lease | None = None,
) -> WorkerHandle:
    log = log_path_for(paths, plan.wid)
    rec_path = record_path(paths, plan.wid)
    for line in ("🚀 Spawning worker:", f"   ID: {plan.wid}", f"   Backend: {plan.backend}",
                 f"   Model: {plan.model_name} ({plan.model_id})", f"   GPU: {plan.gpu}",
                 f"   Port: {plan.port}"):
        _say(out, line)
    env = {**os.environ, **(extra_env or {}), procs.MARKER_WORKER_ENV: plan.wid,
           procs.MARKER_POOL_ENV: procs.pool_key(paths.root)}
    rotate_log(log)
    callback = CallbackServer(expected_worker_id=plan.wid).start()
    argv = plan.argv(callback.url)
    proc: subprocess.Popen[bytes] | None = None
    record: WorkerRecord | None = None
    try:
        proc = _launch(argv, log, paths.root, env, die_with_parent,
                       () if lease is None else (lease.fileno(),))
        record = _new_record(paths, plan, proc, argv, log, env.get(procs.SESSION_ENV))
        # written at once: a CLI killed while waiting leaves a record to find the worker by
        write_record(rec_path, record)
        ready_s = _await_ready(paths, plan, record, proc, callback, ready_timeout, log)
        write_record(rec_path, record)
        if lease is not None:
            lease.note_worker(plan.wid, proc.pid)
    except BaseException:
        if proc is not None and proc.poll() is None:
            known = record or WorkerRecord(plan.wid, proc.pid,
                                           pool_root=procs.pool_key(paths.root))
            stop_process(paths, rec_path, known, proc, grace=FAILED_START_GRACE)
        raise
    finally:
        callback.close()
    _say(out, f"✅ Worker spawned (PID: {proc.pid}), ready in {ready_s:.2f} s")
    _say(out, f"   Endpoint: http://localhost:{plan.port}")
    _say(out, f"   Logs: {paths.relative(log)}")
    return WorkerHandle(paths, record, proc)


def _launch(argv: list[str], log: Path, cwd: Path, env: dict[str, str],
            die_with_parent: bool, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """The worker, detached: own session, stdin /dev/null, stdout+stderr into its log;
    `pass_fds`: its device lease, which it then holds for as long as it lives."""
    with open(log, "ab") as logf:
        try:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                cwd=cwd, env=env, start_new_session=True, close_fds=True, pass_fds=pass_fds,
                preexec_fn=procs.pdeathsig_preexec() if die_with_parent else None,
            )
        except OSError as exc:
            raise HarnessError(f"cannot start {argv[0]}: {exc.strerror or exc}",
                               "check that the binary is executable and built for this machine"
                               ) from exc


def _new_record(paths: PoolPaths, plan: SpawnPlan, proc: subprocess.Popen[bytes],
                argv: list[str], log: Path, session: str | None) -> WorkerRecord:
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        create_time = time.time()
    fields: dict[str, Any] = {
        "worker_id": plan.wid, "pid": proc.pid, "backend": plan.backend,
        "model_id": plan.model_id, "port": plan.port, "started_at": utc_now(),
        "create_time": create_time, "cmdline": argv, "binary_path": str(plan.binary),
        "binary_sha256": plan.binary_sha, "log_path": str(log),
        "uri": f"http://127.0.0.1:{plan.port}", "vram_bytes": None, "gpu": plan.gpu,
        "pool_root": procs.pool_key(paths.root), "harness_version": __version__,
        "ready_seconds": None, "worker": plan.worker, "model_path": str(plan.model_path),
        "session": session,
    }
    return WorkerRecord.new(**fields)


def _await_ready(paths: PoolPaths, plan: SpawnPlan, record: WorkerRecord,
                 proc: subprocess.Popen[bytes], callback: CallbackServer,
                 ready_timeout: float, log: Path) -> float:
    """Seconds to ready (the record is marked ready); a worker that is not is stopped and
    reported with its exit status and log tail."""
    t_start = time.monotonic()
    try:
        ready_s = wait_ready(proc, plan.port, callback, ready_timeout)
    except NotReady as exc:
        status = exc.exit_status
        stop_process(paths, record_path(paths, plan.wid), record, proc,
                     grace=FAILED_START_GRACE if status is None else 0.5)
        if status is None:
            status = proc.poll()
        raise WorkerStartError(
            plan.wid, exc.reason, exit_status=status, log_path=log, log_tail=tail_lines(log),
            seconds=time.monotonic() - t_start,
        ) from None
    cb = callback.received
    record.mark_ready(round(ready_s, 4), cb.payload.get("vram_bytes") if cb else None,
                      cb.payload.get("uri") if cb else None)
    return ready_s
