"""Cost of performance history (issue 17): recording, the regression check, the run's end,
the report section and the history command, against the embedded gate's wall time.

Why: the gate runs on every pool for every build; what the store and the check add must
stay small (target: under 2% of the embedded gate). The measurement itself (three worker
loads, a warm-up and five requests) is the item's work, not overhead: it is reported
beside, from the same gate run.

- recording + check = `perf.session.record_and_check` (open the store, read the baseline,
  compare, append the record in one transaction) on stores already holding N records
  (N = 10, 1000, 10000: a pool's first weeks, years of nightly runs, a stress case);
- run's end = set the gate verdict on the run's records and read them with their trends
  (`perf.render.panels_for_run`), plus the report's HTML section (`section_html`);
- `llorch-harness history` on the 1000-record store (a subprocess, as users run it);
- the embedded gate `pytest -m cpu tests_hw` once (fresh `--pool-root`), its wall time
  and the performance item's own duration from its gate JSON (or `--gate-seconds S`);
- with `--noise N`: N healthy measurements of the reference worker with the gate's
  protocol, and how far each judged figure strays from its median (the band's basis).

Run:  .venv/bin/python benchmarks/bench_perf.py [--repeats 20] [--gate-seconds S] [--noise N]
      [--md PATH]
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from benchstats import stats  # noqa: E402

from llorch_harness.perf.figures import Figure  # noqa: E402
from llorch_harness.perf.render import panels_for_run, section_html  # noqa: E402
from llorch_harness.perf.session import record_and_check  # noqa: E402
from llorch_harness.perf.store import NewRun, ResultsStore  # noqa: E402

GATE_TIMEOUT_S = 1800.0
SIZES = (10, 1000, 10000)


def _figs(i: int) -> dict[str, Figure]:
    jitter = 1.0 + ((i * 7919) % 100) / 1000.0
    return {
        "load_s": Figure("load_s", 1.2 * jitter, 0.05, 3),
        "ttft_s": Figure("ttft_s", None, None, 0, "sent at once"),
        "itl_p50_s": Figure("itl_p50_s", None, None, 0, "sent at once"),
        "itl_p95_s": Figure("itl_p95_s", None, None, 0, "sent at once"),
        "s_per_token": Figure("s_per_token", 0.012 * jitter, 0.0004, 5),
        "tokens_per_sec": Figure("tokens_per_sec", 80 / jitter, 2.0, 5),
        "worker_tokens_per_sec": Figure("worker_tokens_per_sec", 90 / jitter, 2.0, 5),
        "memory_ready": Figure("memory_ready", 1.3e8 * jitter, 1e5, 3, "RSS"),
        "memory_peak": Figure("memory_peak", 1.4e8 * jitter, None, 1, "RSS"),
        "requests": Figure("requests", 5.0, None, 5),
        "harness_overhead_s": Figure("harness_overhead_s", 0.1, None, 1),
    }


FP = {"pool": "bench", "lab": "embedded", "model": "tiny-qwen", "backend": "cpu",
      "device": "cpu", "worker_binary_sha256": "b" * 64, "protocol": "perf/1"}


def fill(db: Path, n: int) -> None:
    """n passing records of one fingerprint, in one transaction per 1000."""
    from llorch_harness.perf.fingerprint import baseline_key
    from llorch_harness.perf.store import immediate

    key = baseline_key(FP)
    with ResultsStore.open(db) as store:
        done = 0
        while done < n:
            with immediate(store.conn):
                for i in range(done, min(n, done + 1000)):
                    _insert(store, NewRun(f"fill-{i}", "bench", "tiny-qwen", "cpu", key,
                                          "b" * 64, FP, "pass", _figs(i)))
            done = min(n, done + 1000)
        store.conn.execute("UPDATE runs SET gate_verdict = 'pass'")


def _insert(store: ResultsStore, run: NewRun) -> None:
    cur = store.conn.execute(
        "INSERT INTO runs (run_key, recorded_at, pool, model, backend, baseline_key, "
        "binary_sha256, fingerprint, status) VALUES (?,?,?,?,?,?,?,?,?)",
        (run.run_key, "2026-01-01T00:00:00Z", run.pool, run.model, run.backend,
         run.baseline_key, run.binary_sha256, json.dumps(dict(run.fingerprint)), run.status))
    store.conn.executemany("INSERT INTO figures (run_id, name, value, spread, n, unit, note) "
                           "VALUES (?,?,?,?,?,?,?)",
                           [(cur.lastrowid, f.name, f.value, f.spread, f.n, f.spec.unit, f.note)
                            for f in run.figures.values()])


def bench_store(tmp: Path, n: int, repeats: int) -> dict[str, Any]:
    db = tmp / f"store-{n}.sqlite"
    fill(db, n)
    record, finish, render = [], [], []
    for r in range(repeats):
        key = f"bench-{r}"
        t0 = time.perf_counter()
        record_and_check(db, key, FP, _figs(r))
        t1 = time.perf_counter()
        with ResultsStore.open(db) as store:
            store.set_gate_verdict(key, "pass")
            panels = panels_for_run(store, key)
        t2 = time.perf_counter()
        section_html(panels)
        t3 = time.perf_counter()
        record.append(t1 - t0)
        finish.append(t2 - t1)
        render.append(t3 - t2)
    return {"records": n, "record_and_check": stats(record), "run_end": stats(finish),
            "report_section": stats(render), "db_bytes": db.stat().st_size}


def bench_history_cli(tmp: Path, repeats: int) -> dict[str, float]:
    db = tmp / "store-1000.sqlite"
    times = []
    for _ in range(max(3, repeats // 4)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "llorch_harness.cli.harness_main", "history",
                        "--results-db", str(db), "--html", str(tmp / "h.html")],
                       capture_output=True, check=True, timeout=600, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return stats(times)


def bench_gate(tmp: Path) -> dict[str, Any]:
    """One embedded gate run: wall time and the performance item's own duration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "PYTEST_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    (tmp / "pool").mkdir()
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "tests_hw"), "-m", "cpu",
                          "-p", "no:cacheprovider", "-q", "--pool-root", str(tmp / "pool"),
                          "--basetemp", str(tmp / "bt"), "--gate-json", str(tmp / "g.json")],
                         capture_output=True, text=True, env=env, cwd=tmp,
                         timeout=GATE_TIMEOUT_S, check=False)
    wall = time.perf_counter() - t0
    doc = json.loads((tmp / "g.json").read_text()) if (tmp / "g.json").exists() else {}
    item = sum(i["duration"] for i in doc.get("items", [])
               if "test_no_performance_regression" in (i.get("nodeid") or ""))
    tail = (res.stdout.strip().splitlines() or [""])[-1]
    return {"wall_s": wall, "perf_item_s": item, "exit": res.returncode, "summary": tail}


def bench_noise(tmp: Path, runs: int) -> dict[str, Any]:
    """`runs` healthy measurements of the reference worker (the gate's protocol): how far
    each judged figure strays from its median, the basis of the band's defaults."""
    from llorch_harness.lab.tinymodel import build_tiny_model
    from llorch_harness.perf.figures import SPECS, median_mad
    from llorch_harness.perf.measure import measure
    from llorch_harness.pool import workers
    from llorch_harness.pool.catalog import ModelEntry, update_catalog
    from llorch_harness.pool.paths import PoolPaths

    paths = PoolPaths.at(tmp / "noise-pool")
    build_tiny_model(paths.models_dir / "tiny-qwen")
    update_catalog(paths, lambda c: c.upsert(ModelEntry(
        id="tiny-qwen", name="Tiny Qwen2", path=".test-models/tiny-qwen", downloaded=True,
        backends=["cpu"], architecture="qwen")))

    def spawn(i: int) -> Any:
        return workers.spawn_worker(paths, "cpu", "tiny-qwen", worker="reference", port=0,
                                    worker_id=f"noise{i}", die_with_parent=True)

    values: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for _ in range(runs):
        for name, fig in measure(spawn, lambda h: h.stop(), "cpu").figures().items():
            if fig.value is not None and SPECS[name].checked:
                values.setdefault(name, []).append(fig.value)
    out = {}
    for name, vals in values.items():
        med, mad = median_mad(vals)
        out[name] = {"median": med, "mad_rel": mad / med, "max_dev_rel":
                     max(abs(v - med) for v in vals) / med, "n": len(vals)}
    return {"figures": out, "seconds_per_measurement": (time.perf_counter() - t0) / runs}


def _fmt(s: dict[str, float], scale: float = 1000.0, unit: str = "ms") -> str:
    return (f"median {s['median'] * scale:.2f} {unit}, p95 {s['p95'] * scale:.2f} {unit} "
            f"(min {s['min'] * scale:.2f}, max {s['max'] * scale:.2f}, n={s['n']})")


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    gate = results["gate"]
    lines = [
        "# Performance history: cost of recording and checking (issue 17)", "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs (shared with other jobs)",
        f"- load average at start {results['load_start']}, at end {os.getloadavg()}",
        f"- command: `python benchmarks/bench_perf.py {' '.join(sys.argv[1:])}`".rstrip(), "",
        "| records in the store | recording + check | run's end (verdict + read) "
        "| report section | store size |", "| ---: | --- | --- | --- | ---: |"]
    for r in results["stores"]:
        lines.append(f"| {r['records']} | {_fmt(r['record_and_check'])} | {_fmt(r['run_end'])} "
                     f"| {_fmt(r['report_section'])} | {r['db_bytes'] / 1024:.0f} KiB |")
    cost = results["stores"][1]
    per_run = (cost["record_and_check"]["median"] + cost["run_end"]["median"]
               + cost["report_section"]["median"])
    share = per_run / gate["wall_s"] if gate["wall_s"] else float("nan")
    lines += [
        "", f"- `llorch-harness history --html` on 1000 records (subprocess): "
        f"{_fmt(results['history_cli'], 1.0, 's')}",
        f"- embedded gate `pytest -m cpu tests_hw` (one run{', given' if args.gate_seconds else ''}"
        f"): wall {gate['wall_s']:.1f} s, exit {gate.get('exit')}, {gate.get('summary', '')}",
        f"- the performance item's own measurement (3 loads, warm-up, 5 requests) in that run: "
        f"{gate.get('perf_item_s', 0):.1f} s",
        f"- **recording + check + run's end + report section per backend, 1000-record store: "
        f"{per_run * 1000:.1f} ms = {share:.3%} of the embedded gate** (target < 2%: "
        f"{'met' if share < 0.02 else 'missed'})", ""]
    noise = results.get("noise")
    if noise:
        lines += [f"Healthy noise: {next(iter(noise['figures'].values()))['n']} "
                  "measurements of the reference worker (the gate's protocol, "
                  f"{noise['seconds_per_measurement']:.1f} s each):", "",
                  "| figure | median | MAD / median | largest deviation / median |",
                  "| --- | --- | ---: | ---: |"]
        from llorch_harness.perf.figures import format_value

        for name, f in noise["figures"].items():
            lines.append(f"| {name} | {format_value(name, f['median'])} | {f['mad_rel']:.1%} "
                         f"| {f['max_dev_rel']:.1%} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--gate-seconds", type=float, help="use this embedded gate wall time")
    ap.add_argument("--md", help="write the markdown here too")
    ap.add_argument("--noise", type=int, default=0, metavar="N",
                    help="also measure N healthy runs of the reference worker (spread)")
    args = ap.parse_args()
    results: dict[str, Any] = {"load_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as d:
        tmp = Path(d)
        results["stores"] = [bench_store(tmp, n, args.repeats) for n in SIZES]
        results["history_cli"] = bench_history_cli(tmp, args.repeats)
        if args.noise:
            results["noise"] = bench_noise(tmp, args.noise)
        if args.gate_seconds:
            results["gate"] = {"wall_s": args.gate_seconds}
        else:
            gate_tmp = tmp / "gate"
            gate_tmp.mkdir()
            results["gate"] = bench_gate(gate_tmp)
    text = markdown(results, args)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
