"""The typed worker record keeps the on-disk JSON exactly (issue 13), and a record that is
not a regular file is refused with one line, never opened.

The Rust llorch-pool reads and writes these files too (docs/workers.md): whatever it wrote
must come back byte for byte, unknown keys included, and an absent key must stay absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import NotRegularFileError
from llorch_harness.pool.paths import PoolPaths
from llorch_harness.pool.workers.record import (
    FIELDS,
    WorkerRecord,
    read_record,
    record_path,
    write_record,
)

LLORCH_POOL = Path(sys.executable).parent / "llorch-pool"
GUARD_S = 60  # anti-hang only: a FIFO opened for reading would block forever

RUST_RECORD: dict[str, Any] = {  # what llorch-pool (Rust, serde + chrono) writes
    "worker_id": "worker-metal-0", "pid": 41234, "backend": "metal", "model_id": "qwen-0.5b",
    "gpu": 0, "port": 8000, "started_at": "2025-10-09T12:00:01.123456789Z",
}


def roundtrip(obj: dict[str, Any]) -> dict[str, Any]:
    return WorkerRecord.from_json(obj, default_id="x").to_json()


def test_rust_record_round_trips_and_is_never_starting() -> None:
    rec = WorkerRecord.from_json(RUST_RECORD, default_id="ignored")
    assert rec.to_json() == RUST_RECORD
    assert list(rec.to_json()) == list(RUST_RECORD)  # key order kept
    assert (rec.worker_id, rec.pid, rec.backend, rec.port) == ("worker-metal-0", 41234,
                                                               "metal", 8000)
    assert not rec.starting and not rec.has_session
    assert rec.endpoint == "http://127.0.0.1:8000"  # no uri in a Rust record


def test_unknown_keys_and_unusable_values_are_kept_but_not_used() -> None:
    obj = {"pid": 77, "port": "8000", "uri": 12, "cmdline": "not a list", "gpu": True,
           "future_field": {"nested": [1, 2]}, "create_time": None, "backend": "cpu"}
    rec = WorkerRecord.from_json(obj, default_id="from-file-name")
    assert roundtrip(obj) == obj and list(rec.to_json()) == list(obj)
    assert rec.worker_id == "from-file-name" and "worker_id" not in rec.to_json()
    assert (rec.port, rec.uri, rec.cmdline, rec.gpu) == (None, None, None, None)
    assert rec.usable_port is None and rec.endpoint is None and rec.create_time is None
    assert rec.extra["future_field"] == {"nested": [1, 2]}


@pytest.mark.parametrize("port", [0, -1, 99999])
def test_a_port_out_of_range_is_kept_but_never_usable(port: int) -> None:
    rec = WorkerRecord.from_json({**RUST_RECORD, "port": port}, default_id="x")
    assert rec.port == port and rec.usable_port is None and rec.endpoint is None
    assert rec.to_json()["port"] == port


def test_our_record_null_until_ready_then_marked() -> None:
    rec = WorkerRecord.new(**{f: None for f in FIELDS if f != "callback_uri"}
                           | {"worker_id": "w", "pid": 99})
    assert rec.starting and rec.has_session and rec.session is None
    before = rec.to_json()
    assert list(before) == [f for f in FIELDS if f != "callback_uri"]
    assert before["ready_seconds"] is None and "callback_uri" not in before
    rec.mark_ready(1.25, 123, "http://127.0.0.1:9")
    after = rec.to_json()
    assert not rec.starting
    assert (after["ready_seconds"], after["vram_bytes"], after["callback_uri"]) == (
        1.25, 123, "http://127.0.0.1:9")
    assert list(after) == list(before) + ["callback_uri"]  # appended, as before the types
    assert roundtrip(after) == after


@pytest.mark.parametrize(("obj", "why"), [
    ({}, "has no valid pid"), ({"pid": True}, "has no valid pid"),
    ({"pid": 1}, "has no valid pid"), ({"pid": "123"}, "has no valid pid"),
    ([1, 2], "has no valid pid"), ({"pid": 123, "worker_id": 5}, "has a non-string worker_id"),
])
def test_unusable_records_are_one_line_naming_the_file(tmp_path: Path, obj: object,
                                                        why: str) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(HarnessError) as info:
        read_record(path)
    assert info.value.one_line() == (f"worker record {path} {why} (move the file aside if no "
                                     "worker runs with that id)")


def test_write_then_read_is_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    text = json.dumps(RUST_RECORD, indent=2) + "\n"
    path.write_text(text)
    write_record(path, read_record(path))
    assert path.read_text() == text


def _read_in_thread(path: Path) -> BaseException | WorkerRecord | None:
    """read_record with an anti-hang guard: None means it blocked."""
    box: list[BaseException | WorkerRecord] = []

    def run() -> None:
        try:
            box.append(read_record(path))
        except BaseException as exc:
            box.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(GUARD_S)
    return box[0] if box else None


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-fifo", "symlink-to-dev-zero", "dir"])
def test_a_record_that_is_not_a_regular_file_is_refused_unopened(tmp_path: Path,
                                                                 kind: str) -> None:
    paths = PoolPaths.at(tmp_path / "pool")
    paths.workers_dir.mkdir(parents=True)
    rec = record_path(paths, "worker-cpu-0")
    if kind == "fifo":
        os.mkfifo(rec)
    elif kind == "symlink-to-fifo":
        os.mkfifo(tmp_path / "pipe")
        rec.symlink_to(tmp_path / "pipe")
    elif kind == "symlink-to-dev-zero":
        rec.symlink_to("/dev/zero")
    else:
        rec.mkdir()
    got = _read_in_thread(rec)
    assert got is not None, "read_record blocked: the special file was opened"
    assert isinstance(got, NotRegularFileError), got
    assert got.one_line().startswith(f"worker record {rec} is ")
    if kind in ("fifo", "symlink-to-fifo"):  # nobody holds it open for reading
        with pytest.raises(OSError):
            os.close(os.open(rec, os.O_WRONLY | os.O_NONBLOCK))
    for argv in (["worker", "list"], ["worker", "stop", "--all"]):
        res = subprocess.run([str(LLORCH_POOL), *argv, "--pool-root", str(paths.root)],
                             capture_output=True, text=True, timeout=GUARD_S,
                             stdin=subprocess.DEVNULL, check=False)
        assert "Traceback" not in res.stderr, res.stderr
        shown = res.stdout + res.stderr
        assert "not a regular file" in shown, (argv, shown)
