"""Moving performance records between machines: JSON exports, and reading either form back.

Why: the merged CP3 report is built on one machine from every pool's results. A pool's
gate JSON carries this run's records with their trends (`performance`); for more history
a pool's store itself (the SQLite file) or an export of it (`llorch-harness history
--export FILE`) can be handed to `gate merge --perf`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import (
    NotRegularFileError,
    loads_json_strict,
    open_regular,
    read_regular_bytes,
)
from llorch_harness.perf.checked import BadRecord
from llorch_harness.perf.figures import Figure
from llorch_harness.perf.render import Panel, latest_panels
from llorch_harness.perf.store import ResultsStore, StoredRun, now_iso

EXPORT_SCHEMA = "llorch-perf-export/1"
SQLITE_MAGIC = b"SQLite format 3\x00"
_MAX_EXPORT_BYTES = 256 * 1024 * 1024
_HINT = "pass a results store (results.sqlite) or a `llorch-harness history --export` file"


def export_doc(runs: Sequence[StoredRun], source: str) -> dict[str, Any]:
    return {"schema": EXPORT_SCHEMA, "exported_at": now_iso(), "source": source,
            "runs": [r.to_json() for r in runs]}


def _runs_from(raw: Any, where: str) -> list[StoredRun]:
    if not isinstance(raw, list):
        raise HarnessError(f"{where}: `runs` is not a list", _HINT, 2)
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(StoredRun.from_json(item, f"runs[{i}]"))
        except BadRecord as exc:  # typed where loaded: the field named (perf.checked)
            raise HarnessError(f"{where}: {exc}", _HINT, 2) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HarnessError(f"{where}: run {i} is malformed ({type(exc).__name__}: {exc})",
                               _HINT, 2) from None
    return out


def load_runs(path: Path | str) -> list[StoredRun]:
    """Every record of a store or an export; one HarnessError line for anything else."""
    p = Path(path).expanduser()
    try:
        with open_regular(p, "performance records", _HINT) as fh:
            is_sqlite = fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
        if is_sqlite:
            with ResultsStore.open(p, create=False) as store:
                return store.runs()
        data = read_regular_bytes(p, "performance records", _HINT, limit=_MAX_EXPORT_BYTES + 1)
    except FileNotFoundError:
        raise HarnessError(f"performance records {p}: no such file", _HINT, 2) from None
    except NotRegularFileError as exc:
        raise HarnessError(exc.message, exc.hint, 2) from None
    except OSError as exc:
        raise HarnessError(f"performance records {p}: {exc.strerror or exc}", _HINT, 2) from None
    if len(data) > _MAX_EXPORT_BYTES:
        raise HarnessError(f"performance records {p}: larger than "
                           f"{_MAX_EXPORT_BYTES >> 20} MiB", _HINT, 2)
    try:
        doc = loads_json_strict(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise HarnessError(f"performance records {p}: neither SQLite nor JSON ({exc})",
                           _HINT, 2) from None
    if not isinstance(doc, dict) or doc.get("schema") != EXPORT_SCHEMA:
        raise HarnessError(f"performance records {p}: not a {EXPORT_SCHEMA} document", _HINT, 2)
    return _runs_from(doc.get("runs"), str(p))


def panels_from_sources(paths: Iterable[Path | str]) -> list[Panel]:
    """The latest record per pool, model, backend and fingerprint of every source."""
    out: list[Panel] = []
    for path in paths:
        out += latest_panels(load_runs(path), source=str(path))
    return out


def panels_from_section(section: Any, source: str) -> list[Panel]:
    """The `performance` section of a pool's gate JSON (this run's records and trends)."""
    if not isinstance(section, list):
        return []
    panels = []
    for i, raw in enumerate(section):
        (run,) = _runs_from([raw], f"{source} performance[{i}]")
        trend = [_trend_run(run, t) for t in raw.get("trend") or [] if isinstance(t, dict)]
        panels.append(Panel(run, trend or [run], source))
    return panels


def merged_panels(pools: Sequence[Any], sources: Sequence[Path | str] = ()) -> list[Panel]:
    """For `gate merge`: every pool's records from its gate JSON (`PoolResult.performance`),
    then the latest records of the given stores or exports; a source's panel replaces a
    gate JSON's panel of the same pool, model, backend and fingerprint (more history)."""
    found: dict[tuple[str, str, str, str], Panel] = {}
    for pool in pools:
        for panel in panels_from_section(getattr(pool, "performance", None),
                                         str(getattr(pool, "source", pool))):
            found[_key(panel)] = panel
    for panel in panels_from_sources(sources):
        found[_key(panel)] = panel
    return [found[k] for k in sorted(found)]


def _key(panel: Panel) -> tuple[str, str, str, str]:
    r = panel.current
    return (r.pool, r.model, r.backend, r.baseline_key)


def _trend_run(run: StoredRun, raw: Mapping[str, Any]) -> StoredRun:
    figs = {}
    for name, value in (raw.get("figures") or {}).items():
        fig = Figure.from_json({"name": name, "value": value})
        figs[fig.name] = fig
    return StoredRun(int(raw.get("id") or 0), "", str(raw.get("recorded_at") or ""), run.pool,
                     run.model, run.backend, run.baseline_key, None, {},
                     str(raw.get("status") or ""), None, None, figs)


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=1) + "\n"
