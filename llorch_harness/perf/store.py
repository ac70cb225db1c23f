"""The results store: one SQLite file per pool that every gate run appends its figures to.

Why SQLite: several writers at once (two gate runs on one pool, xdist workers of one run)
and a run killed at any moment (SIGKILL, power) must never leave a store that does not
open. SQLite's write-ahead log gives both: every write is one short `BEGIN IMMEDIATE`
transaction (a second writer waits up to `BUSY_TIMEOUT_S`), a killed writer's half
transaction is rolled back when the next connection opens, and readers never block
writers. The schema is versioned (`schema_migrations`); an older store is migrated in
place on open, a newer one is refused with a one-line error.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import refuse_non_regular_target
from llorch_harness.perf import checked
from llorch_harness.perf.figures import Figure

BUSY_TIMEOUT_S = 30.0
DEFAULT_NAME = "results.sqlite"
HINT = "pass --results-db PATH (env LLORCH_RESULTS_DB) for another store"
PASSING = ("pass", "recorded")  # a record's own status that may become a baseline
GOOD_VERDICTS = ("pass", "incomplete")  # gate verdicts of runs that may become a baseline

# Each migration: (version, what it adds, statements). Never edit a released one: add one.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "runs and their figures", (
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_key TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            pool TEXT NOT NULL,
            model TEXT NOT NULL,
            backend TEXT NOT NULL,
            baseline_key TEXT NOT NULL,
            binary_sha256 TEXT,
            fingerprint TEXT NOT NULL,
            status TEXT NOT NULL,
            gate_verdict TEXT,
            check_json TEXT,
            UNIQUE (run_key, pool, model, backend))""",
        "CREATE INDEX runs_by_baseline ON runs (baseline_key, id)",
        "CREATE INDEX runs_by_time ON runs (recorded_at)",
        """CREATE TABLE figures (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            value REAL,
            spread REAL,
            n INTEGER NOT NULL DEFAULT 0,
            unit TEXT NOT NULL DEFAULT '',
            note TEXT,
            PRIMARY KEY (run_id, name))""",
    )),
    (2, "accepted runs start a new baseline", (
        """CREATE TABLE accepts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            baseline_key TEXT NOT NULL,
            accepted_at TEXT NOT NULL,
            reason TEXT NOT NULL)""",
        "CREATE INDEX accepts_by_baseline ON accepts (baseline_key, run_id)",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class StoredRun:
    """One record: what one gate run measured for one model, backend and pool."""

    id: int
    run_key: str
    recorded_at: str
    pool: str
    model: str
    backend: str
    baseline_key: str
    binary_sha256: str | None
    fingerprint: dict[str, Any]
    status: str  # pass | fail | recorded
    gate_verdict: str | None  # the whole run's verdict, set at its end (None: unfinished)
    check: dict[str, Any] | None
    figures: dict[str, Figure] = field(default_factory=dict)
    accepted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "run_key": self.run_key, "recorded_at": self.recorded_at,
            "pool": self.pool, "model": self.model, "backend": self.backend,
            "baseline_key": self.baseline_key, "binary_sha256": self.binary_sha256,
            "fingerprint": self.fingerprint, "status": self.status,
            "gate_verdict": self.gate_verdict, "check": self.check, "accepted": self.accepted,
            "figures": [f.to_json() for f in self.figures.values()],
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "run") -> StoredRun:
        """A record from an export (`llorch-harness history --export`) or a gate JSON's
        `performance`, every field type-checked; checked.BadRecord naming the field (the
        caller names the file)."""
        raw = checked.obj(raw, where)
        figs_raw = raw.get("figures") or []
        if not isinstance(figs_raw, list):
            raise checked.BadRecord(f"{where}.figures must be a list")
        figs = {}
        for i, f in enumerate(figs_raw):
            fig = Figure(**checked.figure(checked.obj(f, f"{where}.figures[{i}]"),
                                          f"{where}.figures[{i}]"))
            figs[fig.name] = fig
        fp = raw.get("fingerprint") or {}
        return cls(**checked.run_fields(raw, where),
                   fingerprint=checked.obj(fp, f"{where}.fingerprint"),
                   check=checked.check(raw.get("check"), f"{where}.check"), figures=figs,
                   accepted=bool(raw.get("accepted")))


@dataclass(frozen=True)
class NewRun:
    """A record to append (see ResultsStore.record)."""

    run_key: str
    pool: str
    model: str
    backend: str
    baseline_key: str
    binary_sha256: str | None
    fingerprint: Mapping[str, Any]
    status: str
    figures: Mapping[str, Figure]
    check: Mapping[str, Any] | None = None
    recorded_at: str | None = None


def check_target(path: Path) -> Path:
    """A store path must be a regular file or absent, in a directory that can hold it."""
    path = Path(path).expanduser()
    refuse_non_regular_target(path, "results store", HINT)
    return path


class ResultsStore:
    """An open store. Use as a context manager; every write is its own transaction."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn

    # ---- opening

    @classmethod
    def open(cls, path: Path | str, *, create: bool = True) -> ResultsStore:
        """Open (and create or migrate) the store; HarnessError for anything unusable."""
        target = check_target(Path(path))
        if not create and not target.exists():
            raise HarnessError(f"no results store at {target}",
                               "a gate run creates it in the pool root; " + HINT, 2)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(target), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise HarnessError(f"cannot open results store {target}: {exc}", HINT, 2) from None
        store = cls(target, conn)
        try:
            with store._errors("open"):
                conn.execute("PRAGMA foreign_keys = ON")
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                migrate(conn, name=f"results store {target}")
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise HarnessError(
                    f"results store {self.path} stayed locked by another writer for "
                    f"{BUSY_TIMEOUT_S:g} s ({doing})", "retry when the other gate run is done; "
                    + HINT) from None
            raise HarnessError(f"results store {self.path}: {doing} failed: {exc}", HINT) \
                from None
        except sqlite3.DatabaseError as exc:
            raise HarnessError(f"results store {self.path} is not a usable SQLite database "
                               f"({exc})", "move the file away or " + HINT, 2) from None

    # ---- writing

    def record(self, run: NewRun) -> int:
        """Append one record and its figures in one transaction; the same run_key, pool,
        model and backend again replaces the earlier record. Returns the record's id."""
        with self._errors("record"), immediate(self.conn):
            self.conn.execute(
                "DELETE FROM runs WHERE run_key = ? AND pool = ? AND model = ? AND backend = ?",
                (run.run_key, run.pool, run.model, run.backend))
            cur = self.conn.execute(
                "INSERT INTO runs (run_key, recorded_at, pool, model, backend, baseline_key, "
                "binary_sha256, fingerprint, status, check_json) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run.run_key, run.recorded_at or now_iso(), run.pool, run.model, run.backend,
                 run.baseline_key, run.binary_sha256, json.dumps(dict(run.fingerprint),
                                                                 sort_keys=True),
                 run.status, _check_json(run)))
            run_id = int(cur.lastrowid or 0)
            self.conn.executemany(
                "INSERT INTO figures (run_id, name, value, spread, n, unit, note) "
                "VALUES (?,?,?,?,?,?,?)",
                [(run_id, f.name, f.value, f.spread, f.n, f.spec.unit, f.note)
                 for f in run.figures.values()])
        return run_id

    def set_gate_verdict(self, run_key: str, verdict: str) -> int:
        """The whole gate run's verdict on its records (at the run's end); rows changed."""
        with self._errors("set the gate verdict"), immediate(self.conn):
            cur = self.conn.execute("UPDATE runs SET gate_verdict = ? WHERE run_key = ?",
                                    (verdict, run_key))
        return cur.rowcount

    def accept(self, run_id: int, reason: str) -> StoredRun:
        """Accept a record as the start of a new baseline (an intended change)."""
        with self._errors("accept"), immediate(self.conn):
            row = self.conn.execute("SELECT baseline_key FROM runs WHERE id = ?",
                                    (run_id,)).fetchone()
            if row is None:
                raise HarnessError(f"results store {self.path} has no run {run_id}",
                                   "see `llorch-harness history` for the run ids", 2)
            self.conn.execute("INSERT INTO accepts (run_id, baseline_key, accepted_at, reason) "
                              "VALUES (?,?,?,?)", (run_id, row[0], now_iso(), reason))
        return self.runs(ids=[run_id])[0]

    # ---- reading

    def runs(self, *, model: str | None = None, backend: str | None = None,
             pool: str | None = None, since: str | None = None,
             baseline_key: str | None = None, run_key: str | None = None,
             ids: Sequence[int] | None = None, last: int | None = None) -> list[StoredRun]:
        """Records matching every given filter, oldest first (`last`: only the newest N)."""
        where: list[str] = []
        args: list[Any] = []
        for col, val in (("model", model), ("backend", backend), ("pool", pool),
                         ("baseline_key", baseline_key), ("run_key", run_key)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if since is not None:
            where.append("recorded_at >= ?")
            args.append(since)
        if ids is not None:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            args.extend(ids)
        sql = _SELECT_RUNS + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id DESC" + (" LIMIT ?" if last else "")
        if last:
            args.append(last)
        with self._errors("read"):
            rows = self.conn.execute(sql, args).fetchall()
            return self._load(list(reversed(rows)))

    def baseline_runs(self, baseline_key: str, exclude_run_key: str | None,
                      limit: int) -> list[StoredRun]:
        """The newest `limit` passing records of a baseline key, newest first: own status
        pass/recorded and a finished gate run that did not fail, or accepted; none older
        than the newest accepted record."""
        sql = (
            f"{_SELECT_RUNS} WHERE baseline_key = :key AND run_key != :exclude "
            "AND id >= COALESCE((SELECT MAX(run_id) FROM accepts WHERE baseline_key = :key), 0) "
            f"AND ((status IN ({_list(PASSING)}) AND gate_verdict IN ({_list(GOOD_VERDICTS)})) "
            "OR id IN (SELECT run_id FROM accepts WHERE baseline_key = :key)) "
            "ORDER BY id DESC LIMIT :limit")
        with self._errors("read the baseline"):
            rows = self.conn.execute(sql, {"key": baseline_key, "exclude": exclude_run_key or "",
                                           "limit": limit}).fetchall()
            return self._load(rows)

    def _load(self, rows: list[tuple[Any, ...]]) -> list[StoredRun]:
        """Rows (RUN_COLUMNS, in order) as records, every value type-checked here: a
        tampered store is one line naming the row and the field (exit 2)."""
        if not rows:
            return []
        try:
            ids = [checked.integer(r[0], "runs.id") for r in rows]
            marks = ",".join("?" * len(ids))
            figs: dict[int, dict[str, Figure]] = {i: {} for i in ids}
            for run_id, name, value, spread, n, _unit, note in self.conn.execute(
                    f"SELECT run_id, name, value, spread, n, unit, note FROM figures "
                    f"WHERE run_id IN ({marks})", ids):
                fig = checked.figure({"name": name, "value": value, "spread": spread, "n": n,
                                      "note": note}, f"figures of run {run_id}")
                figs[run_id][fig["name"]] = Figure(**fig)
            accepted = {r[0] for r in self.conn.execute(
                f"SELECT run_id FROM accepts WHERE run_id IN ({marks})", ids)}
            return [_stored(dict(zip(RUN_COLUMNS, r, strict=True)), figs[r[0]],
                            r[0] in accepted) for r in rows]
        except checked.BadRecord as exc:
            raise HarnessError(f"results store {self.path}: {exc}",
                               "the store was changed by hand or by another program; move "
                               "it away or " + HINT, 2) from None

    def integrity(self) -> str:
        """`PRAGMA integrity_check`: "ok" for a sound file."""
        with self._errors("check integrity"):
            return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])


def _check_json(run: NewRun) -> str | None:
    """The check as stored, with every figure's samples under `samples` (name -> list):
    the regression rule's rank test reads the baseline runs' samples from there."""
    samples = {f.name: list(f.samples) for f in run.figures.values() if f.samples}
    if run.check is None and not samples:
        return None
    check = dict(run.check or {})
    if samples:
        check["samples"] = samples
    return json.dumps(check)


def _list(values: Sequence[str]) -> str:
    return ",".join(f"'{v}'" for v in values)  # constants of this module, never user input


# The columns of `runs` a record is read from, by name (a column added by a migration is
# read only once it is named here; `SELECT *` would shift every field after it).
RUN_COLUMNS = ("id", "run_key", "recorded_at", "pool", "model", "backend", "baseline_key",
               "binary_sha256", "fingerprint", "status", "gate_verdict", "check_json")
_SELECT_RUNS = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"


def _stored(row: Mapping[str, Any], figures: dict[str, Figure], accepted: bool) -> StoredRun:
    where = f"runs row id {row['id']}"
    return StoredRun(
        **checked.run_fields(row, where),
        fingerprint=checked.json_obj(row["fingerprint"], f"{where}.fingerprint",
                                     optional=False) or {},
        check=checked.check(checked.json_obj(row["check_json"], f"{where}.check_json",
                                             optional=True), f"{where}.check_json"),
        figures=figures, accepted=accepted)


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction that takes the write lock at once (no upgrade deadlock)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                       "AND name = 'schema_migrations'").fetchone()
    if row is None:
        return 0
    return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
               .fetchone()[0])


def migrate(conn: sqlite3.Connection, upto: int = SCHEMA_VERSION,
            name: str = "results store") -> int:
    """Bring the schema to `upto`, each step in the same transaction as its bookkeeping;
    returns the version. A store newer than this harness is refused."""
    if schema_version(conn) == upto == SCHEMA_VERSION:
        return upto  # the usual case: no write lock taken
    with immediate(conn):
        have = schema_version(conn)
        if have > SCHEMA_VERSION:
            raise HarnessError(
                f"{name} has schema version {have}; this harness knows up to "
                f"{SCHEMA_VERSION}", "upgrade llorch-harness, or " + HINT, 2)
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                     "version INTEGER PRIMARY KEY, what TEXT NOT NULL, "
                     "applied_at TEXT NOT NULL)")
        for version, what, statements in MIGRATIONS:
            if have < version <= upto:
                for sql in statements:
                    conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                             (version, what, now_iso()))
                have = version
    return have
