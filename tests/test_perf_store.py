"""The results store against real SQLite files and real processes: migrations, the baseline
query, a writer SIGKILLed mid-transaction, two writer processes at once, bad files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llorch_harness.errors import HarnessError
from llorch_harness.perf.figures import Figure
from llorch_harness.perf.store import (
    SCHEMA_VERSION,
    NewRun,
    ResultsStore,
    migrate,
    schema_version,
)

REPO = Path(__file__).resolve().parents[1]
PROC_TIMEOUT_S = 120  # anti-hang only


def new_run(key: str, value: float = 0.01, *, bkey: str = "k1", status: str = "pass",
            binary: str = "b" * 64, backend: str = "cpu") -> NewRun:
    return NewRun(run_key=key, pool="pool-a", model="tiny-qwen", backend=backend,
                  baseline_key=bkey, binary_sha256=binary, fingerprint={"pool": "pool-a"},
                  status=status, figures={"s_per_token": Figure("s_per_token", value, 0.001, 5),
                                          "ttft_s": Figure("ttft_s", None, None, 0, "at once")})


def test_new_store_has_the_current_schema_and_round_trips_a_record(tmp_path):
    with ResultsStore.open(tmp_path / "r.sqlite") as store:
        rid = store.record(new_run("run-1", 0.0123))
        (run,) = store.runs()
    assert schema_version(sqlite3.connect(tmp_path / "r.sqlite")) == SCHEMA_VERSION
    assert run.id == rid and run.run_key == "run-1" and run.status == "pass"
    assert run.figures["s_per_token"] == Figure("s_per_token", 0.0123, 0.001, 5)
    assert run.figures["ttft_s"].value is None and run.figures["ttft_s"].note == "at once"
    assert run.gate_verdict is None and run.fingerprint == {"pool": "pool-a"}


def test_old_store_is_migrated_in_place_and_keeps_its_records(tmp_path):
    path = tmp_path / "r.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, upto=1) == 1  # a store written by a harness that knew version 1
    conn.execute("INSERT INTO runs (run_key, recorded_at, pool, model, backend, baseline_key, "
                 "fingerprint, status) VALUES ('old', '2026-01-01T00:00:00Z', 'p', 'm', 'cpu', "
                 "'k1', '{}', 'pass')")
    conn.close()
    with ResultsStore.open(path) as store:
        assert [r.run_key for r in store.runs()] == ["old"]
        store.accept(store.runs()[0].id, "intended")  # needs version 2's table
    assert schema_version(sqlite3.connect(path)) == SCHEMA_VERSION == 2


def test_store_from_a_newer_harness_is_refused_in_one_line(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultsStore.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'now')")
    conn.close()
    with pytest.raises(HarnessError, match=r"schema version 99; this harness knows up to 2"):
        ResultsStore.open(path)


@pytest.mark.parametrize("kind", ["garbage", "directory"])
def test_unusable_store_path_is_one_line(tmp_path, kind):
    path = tmp_path / "r.sqlite"
    if kind == "garbage":
        path.write_bytes(b"this is not a database, just text\n" * 100)
    else:
        path.mkdir()
    with pytest.raises(HarnessError) as err:
        ResultsStore.open(path)
    assert str(path) in err.value.one_line() and "--results-db" in err.value.one_line()


def test_reading_history_never_creates_a_store(tmp_path):
    with pytest.raises(HarnessError, match="no results store at"):
        ResultsStore.open(tmp_path / "none.sqlite", create=False)
    assert not (tmp_path / "none.sqlite").exists()


def test_baseline_runs_are_finished_passing_runs_of_the_same_key_newest_first(tmp_path):
    with ResultsStore.open(tmp_path / "r.sqlite") as store:
        for i in range(1, 8):
            store.record(new_run(f"run-{i}", 0.01 + i / 1000))
            store.set_gate_verdict(f"run-{i}", "incomplete" if i % 2 else "pass")
        store.record(new_run("other-key", bkey="k2"))
        store.set_gate_verdict("other-key", "pass")
        store.record(new_run("failed-gate"))
        store.set_gate_verdict("failed-gate", "fail")  # another item failed: not a baseline
        store.record(new_run("own-fail", status="fail"))
        store.set_gate_verdict("own-fail", "fail")
        store.record(new_run("unfinished"))  # killed or still running: no verdict
        got = store.baseline_runs("k1", exclude_run_key="run-7", limit=5)
    assert [r.run_key for r in got] == ["run-6", "run-5", "run-4", "run-3", "run-2"]


def test_accept_starts_a_new_baseline_even_from_a_failed_record(tmp_path):
    with ResultsStore.open(tmp_path / "r.sqlite") as store:
        for i in range(4):
            store.record(new_run(f"old-{i}"))
            store.set_gate_verdict(f"old-{i}", "pass")
        slow = store.record(new_run("slow", 0.05, status="fail"))
        store.set_gate_verdict("slow", "fail")
        accepted = store.accept(slow, "slower but exact")
        store.record(new_run("after", 0.05))
        store.set_gate_verdict("after", "pass")
        got = store.baseline_runs("k1", exclude_run_key="now", limit=5)
        with pytest.raises(HarnessError, match="has no run 999"):
            store.accept(999, "x")
    assert accepted.accepted and [r.run_key for r in got] == ["after", "slow"]


def test_the_same_run_recorded_again_replaces_its_record(tmp_path):
    with ResultsStore.open(tmp_path / "r.sqlite") as store:
        store.record(new_run("run-1", 0.01))
        store.record(new_run("run-1", 0.02))
        runs = store.runs()
    assert len(runs) == 1 and runs[0].figures["s_per_token"].value == 0.02


WRITER = textwrap.dedent("""
    import sys, time
    from llorch_harness.perf.store import ResultsStore, immediate
    from tests.test_perf_store import new_run
    path, mode = sys.argv[1], sys.argv[2]
    store = ResultsStore.open(path)
    if mode == "hang-in-transaction":
        with immediate(store.conn):
            store.conn.execute(
                "INSERT INTO runs (run_key, recorded_at, pool, model, backend, baseline_key, "
                "fingerprint, status) VALUES ('half', 'now', 'p', 'm', 'cpu', 'k1', '{}', 'pass')")
            store.conn.execute("INSERT INTO figures (run_id, name, value) "
                               "VALUES (last_insert_rowid(), 's_per_token', 1.0)")
            print("in transaction", flush=True)
            time.sleep(600)
    else:  # write until N records are in and one of the other writer's was seen meanwhile
        other, start, n = sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
        while time.time() < start:
            time.sleep(0.001)
        i, seen = 0, False
        while (i < n or not seen) and i < 5000:
            store.record(new_run(f"{mode}-{i}", 0.01))
            i += 1
            seen = seen or bool(store.conn.execute(
                "SELECT 1 FROM runs WHERE run_key LIKE ?", (other + "-%",)).fetchone())
        print(i, seen, flush=True)
""")


def _writer(path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def test_store_whose_writer_was_killed_mid_transaction_still_opens(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore.open(path) as store:
        store.record(new_run("before"))
    proc = _writer(path, "hang-in-transaction")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "in transaction", proc.stderr.read() if proc.stderr else ""
        assert Path(str(path) + "-wal").exists()  # the half transaction is on disk
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=PROC_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=PROC_TIMEOUT_S)
    with ResultsStore.open(path) as store:
        assert store.integrity() == "ok"
        assert [r.run_key for r in store.runs()] == ["before"]  # the half record is gone
        store.record(new_run("after"))  # and the lock went with the killed writer
        assert [r.run_key for r in store.runs()] == ["before", "after"]


def test_two_concurrent_writer_processes_both_land(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultsStore.open(path).close()
    start = f"{time.time() + 1.5:.3f}"  # both begin at the same moment
    procs = [_writer(path, name, other, start, "40")
             for name, other in (("left", "right"), ("right", "left"))]
    written = {}
    for name, proc in zip(("left", "right"), procs, strict=True):
        out, err = proc.communicate(timeout=PROC_TIMEOUT_S)
        assert proc.returncode == 0, err[-2000:]
        count, seen = out.split()
        assert seen == "True"  # it saw the other's records while it was still writing
        written[name] = int(count)
    with ResultsStore.open(path) as store:
        keys = [r.run_key for r in store.runs()]
        assert store.integrity() == "ok"
    expected = [f"{n}-{i}" for n, c in written.items() for i in range(c)]
    assert sorted(keys) == sorted(expected) and min(written.values()) >= 40
