"""The embedded CP3 gate end to end (issue 8 item 5): wall time and the harness's overhead.

Why: a lab waits for the gate; what is not the worker's own loading and decoding is
the harness's cost, paid on every pool and every build. Each repeat runs
`pytest -m cpu tests_hw` in a subprocess with a fresh `--pool-root` and `--basetemp`,
serial and with `-n 2` (interleaved), then:

- worker time = from the worker logs (JSON lines) of that pool root: per worker life
  "Starting" -> "Server listening" (load, callback, bind) plus every "Inference
  completed" `duration_ms`;
- harness overhead = wall - worker time (share of wall);
- a breakdown from a trace plugin (this module, loaded with `-p bench_gate` and only
  active under $BENCH_GATE_TRACE): pytest start-up and collection, per-test phases,
  time in `llorch-pool ...` CLI subprocesses, in `spawn_worker` and in worker stops;
- beside it, the reference worker's unlogged start-up (interpreter + imports, spawn to
  its first log line), measured directly: the real Rust binary does not pay it.

Run:  .venv/bin/python benchmarks/bench_gate.py [--repeats 3] [--json PATH] [--md PATH]
Not a test: nothing is asserted and pytest never collects it (it is a plugin only when
a benchmark run loads it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from benchstats import stats

TRACE_ENV = "BENCH_GATE_TRACE"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GATE_TIMEOUT_S = 900.0
STARTUP_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- trace plugin


def _trace_path() -> str | None:
    return os.environ.get(TRACE_ENV) or None


def _emit(ev: str, **data: Any) -> None:
    path = _trace_path()
    if not path:
        return
    line = json.dumps({"ev": ev, "pid": os.getpid(),
                       "xdist": os.environ.get("PYTEST_XDIST_WORKER"), **data}, default=str)
    with open(path, "a", encoding="utf-8") as fh:  # one short line: O_APPEND keeps it whole
        fh.write(line + "\n")


def _timed(fn: Any, ev: str, describe: Any) -> Any:
    def inner(*a: Any, **kw: Any) -> Any:
        t0 = time.time()
        try:
            return fn(*a, **kw)
        finally:
            _emit(ev, start=t0, stop=time.time(), what=describe(a, kw))
    inner.__wrapped__ = fn  # type: ignore[attr-defined]
    return inner


def _cli_label(a: tuple[Any, ...], kw: dict[str, Any]) -> str | None:
    argv = a[0] if a else kw.get("args")
    if not isinstance(argv, list | tuple):
        return None
    text = [str(x) for x in argv]
    for i, x in enumerate(text):
        if x.startswith("llorch_harness.cli."):
            return " ".join([x.rsplit(".", 1)[-1], *text[i + 1:i + 3]])
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Under $BENCH_GATE_TRACE: note start-up times and wrap the calls we attribute."""
    if not _trace_path():
        return
    import psutil

    _emit("configure", t=time.time(), proc_start=psutil.Process().create_time())
    real_run = subprocess.run

    def run(*a: Any, **kw: Any) -> Any:
        label = _cli_label(a, kw)
        if label is None:
            return real_run(*a, **kw)
        t0 = time.time()
        try:
            return real_run(*a, **kw)
        finally:
            _emit("cli", start=t0, stop=time.time(), what=label)

    subprocess.run = run  # type: ignore[assignment]
    from llorch_harness.pool import workers

    workers.spawn_worker = _timed(workers.spawn_worker, "spawn",
                                  lambda a, kw: kw.get("worker_id") or "")
    workers.WorkerHandle.stop = _timed(workers.WorkerHandle.stop, "stop",  # type: ignore[method-assign]
                                       lambda a, kw: getattr(a[0], "worker_id", ""))


def pytest_collection_finish(session: pytest.Session) -> None:
    _emit("collected", t=time.time(), n=len(session.items))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if _trace_path():
        extra: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            from llorch_harness.plugin.fixtures import RECORD_KEY

            rec = item.stash.get(RECORD_KEY, None) or {}
            worker = rec.get("worker") or {}
            extra = {k: v for k, v in (("ready_seconds", worker.get("ready_seconds")),
                                       ("tokens_per_sec", rec.get("tokens_per_sec")))
                     if v is not None}
        _emit("phase", nodeid=item.nodeid, when=call.when, start=call.start, stop=call.stop,
              outcome=rep.outcome, **extra)
    return rep


def pytest_unconfigure(config: pytest.Config) -> None:
    _emit("unconfigure", t=time.time())


# --------------------------------------------------------------------------- measuring






def _ts(raw: str) -> float:
    return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


def worker_times(workers_dir: Path) -> dict[str, float]:
    """Sum worker-side load and generation time over every log (and rotated log) there."""
    load = gen = 0.0
    lives = requests = tokens = prompt_tokens = 0
    for log in sorted(workers_dir.glob("*.log*")):
        started: float | None = None
        for line in log.read_text(errors="replace").splitlines():
            try:
                obj = json.loads(line)
                msg = obj["fields"]["message"]
            except (ValueError, KeyError, TypeError):
                continue
            if msg == "Starting llorch-candled worker":
                started = _ts(obj["timestamp"])
                lives += 1
            elif msg == "Server listening" and started is not None:
                load += _ts(obj["timestamp"]) - started
                started = None
            elif msg == "Inference completed":
                fields = obj["fields"]
                gen += float(fields.get("duration_ms", 0)) / 1000
                tokens += int(fields.get("tokens", 0))
                prompt_tokens += int(fields.get("prompt_tokens", 0))
                requests += 1
    return {"load_s": load, "gen_s": gen, "lives": lives, "requests": requests,
            "tokens": tokens, "prompt_tokens": prompt_tokens}


def trace_breakdown(trace: Path, t_launch: float) -> dict[str, Any]:
    """Where the wall time went, from the trace plugin's lines."""
    evs = [json.loads(x) for x in trace.read_text().splitlines() if x.strip()]
    out: dict[str, Any] = {}
    conf = [e for e in evs if e["ev"] == "configure" and not e["xdist"]]
    coll = [e for e in evs if e["ev"] == "collected"]
    phases = [e for e in evs if e["ev"] == "phase"]
    if conf:
        out["interp_to_configure_s"] = conf[0]["t"] - t_launch
    if conf and coll:
        out["configure_to_collected_s"] = max(e["t"] for e in coll) - conf[0]["t"]
    if phases and coll:
        out["collected_to_first_test_s"] = min(e["start"] for e in phases) - max(
            e["t"] for e in coll)
    by_when: dict[str, float] = defaultdict(float)
    per_test: dict[str, float] = defaultdict(float)
    for e in phases:
        by_when[e["when"]] += e["stop"] - e["start"]
        per_test[e["nodeid"]] += e["stop"] - e["start"]
    out["phase_s"] = dict(by_when)
    out["top_tests"] = sorted(per_test.items(), key=lambda kv: -kv[1])[:8]
    for ev in ("cli", "spawn", "stop"):
        rows = [e for e in evs if e["ev"] == ev]
        out[f"{ev}_n"] = len(rows)
        out[f"{ev}_s"] = sum(e["stop"] - e["start"] for e in rows)
        if ev == "cli":
            per: dict[str, list[float]] = defaultdict(list)
            for e in rows:
                per[e["what"]].append(e["stop"] - e["start"])
            out["cli_by_command"] = {k: [len(v), sum(v)] for k, v in per.items()}
    calls = [e for e in phases if e["when"] == "call"]
    out["ready_seconds"] = [e["ready_seconds"] for e in calls if "ready_seconds" in e]
    out["tokens_per_sec"] = [e["tokens_per_sec"] for e in calls if "tokens_per_sec" in e]
    return out


def run_gate(work: Path, tag: str, n_workers: int, tree: Path = ROOT) -> dict[str, Any]:
    """One `pytest -m cpu tests_hw` in a subprocess with a fresh pool root; its figures.

    `tree` other than this checkout runs that tree's harness and tests (PYTHONPATH=tree
    wins over the editable install), for measuring a proposed fix in the same run.
    """
    pool, trace = work / f"pool-{tag}", work / f"trace-{tag}.jsonl"
    gate_json = work / f"gate-{tag}.json"
    argv = [sys.executable, "-m", "pytest", "-m", "cpu", "tests_hw", "-q", "-p",
            "no:cacheprovider", "-p", "bench_gate", "--pool-root", str(pool),
            "--basetemp", str(work / f"bt-{tag}"), "--gate-json", str(gate_json)]
    if n_workers > 1:
        argv += ["-n", str(n_workers)]
    env = dict(os.environ)
    extra = [str(HERE)] if tree == ROOT else [str(tree), str(HERE)]
    env["PYTHONPATH"] = os.pathsep.join([*extra, *filter(None, [env.get("PYTHONPATH")])])
    env[TRACE_ENV] = str(trace)
    log = work / f"pytest-{tag}.log"
    with log.open("wb") as fh:
        t_launch = time.time()
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=tree, env=env, stdout=fh, stderr=subprocess.STDOUT,
                              timeout=GATE_TIMEOUT_S, check=False)
        wall = time.perf_counter() - t0
    tail = log.read_text(errors="replace").strip().splitlines()
    res: dict[str, Any] = {"tag": tag, "n": n_workers, "wall_s": wall, "rc": proc.returncode,
                           "summary": tail[-1] if tail else ""}
    res.update(worker_times(pool / ".runtime" / "workers"))
    res["worker_s"] = res["load_s"] + res["gen_s"]
    res["overhead_s"] = wall - res["worker_s"]
    res["overhead_share"] = res["overhead_s"] / wall
    with contextlib.suppress(OSError, ValueError):
        res["trace"] = trace_breakdown(trace, t_launch)
    with contextlib.suppress(OSError, ValueError):
        res["verdict"] = json.loads(gate_json.read_text()).get("verdict")
    shutil.rmtree(pool, ignore_errors=True)
    shutil.rmtree(work / f"bt-{tag}", ignore_errors=True)
    return res


def ref_startup(work: Path, repeats: int) -> dict[str, Any]:
    """Reference worker: spawn -> first log line (unlogged) and -> "Server listening"."""
    from llorch_harness.lab.tinymodel import build_tiny_model
    from llorch_harness.pool.procs import free_port

    model = work / "tiny-qwen"
    build_tiny_model(model)
    first, listening = [], []
    for i in range(repeats):
        argv = [sys.executable, "-m", "llorch_harness.lab.refworker", "--worker-id", f"bench-{i}",
                "--model", str(model), "--port", str(free_port()),
                "--callback-url", "http://localhost:9999/ready"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            got = _wait_lines(proc, t0, ("Starting llorch-candled worker", "Server listening"))
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if len(got) == 2:
            first.append(got[0])
            listening.append(got[1])
    return {"first_log_s": stats(first), "listening_s": stats(listening)} if first else {}


def _wait_lines(proc: subprocess.Popen[bytes], t0: float, wanted: tuple[str, ...]) -> list[float]:
    """Seconds from t0 until each wanted message appears on stdout (bounded)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    found: list[float] = []
    buf = b""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while len(found) < len(wanted) and time.monotonic() < deadline:
        if not sel.select(timeout=0.5):
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        now = time.perf_counter()
        buf += chunk
        while b"\n" in buf and len(found) < len(wanted):
            line, buf = buf.split(b"\n", 1)
            if wanted[len(found)].encode() in line:
                found.append(now - t0)
    sel.close()
    return found


def measure(repeats: int, work: Path, variant: Path | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {"load_start": [round(x, 2) for x in os.getloadavg()]}
    runs: dict[str, list[dict[str, Any]]] = {"serial": [], "n2": []}
    modes: tuple[str, ...] = ("serial", "n2")
    if variant is not None:
        runs["variant"] = []
        modes = ("serial", "variant", "n2")
        res["variant_tree"] = str(variant)
    for i in range(repeats):
        for mode in modes if i % 2 == 0 else modes[::-1]:
            r = run_gate(work, f"{mode}-{i}", 2 if mode == "n2" else 1,
                         variant if mode == "variant" and variant else ROOT)
            runs[mode].append(r)
            print(f"  {mode} #{i + 1}: wall {r['wall_s']:.2f}s, worker {r['worker_s']:.2f}s "
                  f"(load {r['load_s']:.2f}, gen {r['gen_s']:.2f}; {r['lives']} lives, "
                  f"{r['requests']} requests), overhead {r['overhead_share']:.1%}, rc {r['rc']}",
                  flush=True)
    res["runs"] = runs
    res["ref_startup"] = ref_startup(work, 5)
    res["load_end"] = [round(x, 2) for x in os.getloadavg()]
    for mode, rs in runs.items():
        res[mode] = {k: stats([r[k] for r in rs]) for k in (
            "wall_s", "worker_s", "load_s", "gen_s", "overhead_s", "overhead_share")}
        for key in ("cli_s", "spawn_s", "stop_s"):
            vals = [r["trace"][key] for r in rs if key in r.get("trace", {})]
            if vals:
                res[mode][f"trace_{key}"] = stats(vals)
        for key in ("lives", "requests", "tokens", "prompt_tokens"):
            res[mode][key] = rs[0][key]
        res[mode]["rc"] = sorted({r["rc"] for r in rs})
        res[mode]["summary"] = rs[-1]["summary"]
    startup = res["ref_startup"].get("first_log_s", {}).get("median")
    if startup is not None:
        for mode, rs in runs.items():
            res[mode]["overhead_share_with_ref_startup"] = stats([
                (r["overhead_s"] - r["lives"] * startup) / r["wall_s"] for r in rs])
    return res


# --------------------------------------------------------------------------- report


def markdown(r: dict[str, Any], command: str) -> str:
    def s(d: dict[str, float], fmt: str = ".2f", unit: str = " s") -> str:
        return (f"median {d['median']:{fmt}}{unit}, p95 {d['p95']:{fmt}}{unit} "
                f"(min {d['min']:{fmt}}, max {d['max']:{fmt}}, n={d['n']})")

    lines = [
        "## 5. The embedded CP3 gate end to end (`pytest -m cpu tests_hw`)",
        "",
        f"- command: `{command}`; each repeat: a fresh `--pool-root` and `--basetemp`, serial "
        "and `-n 2` interleaved; load average "
        f"{r['load_start']} at start, {r['load_end']} at end",
        "- worker time = from the worker logs: per worker life \"Starting\" -> \"Server "
        "listening\" plus the `duration_ms` of every \"Inference completed\"; overhead = "
        "wall - worker time",
        "",
        "| figure | serial | `-n 2` |" + (" serial, proposed fixes |" if "variant" in r else ""),
        "| --- | --- | --- |" + (" --- |" if "variant" in r else ""),
    ]
    ser, par, var = r["serial"], r["n2"], r.get("variant")
    for key, label, fmt, unit in (
        ("wall_s", "wall time", ".2f", " s"),
        ("worker_s", "worker time (load + generation, from logs)", ".2f", " s"),
        ("load_s", "  of which load (Starting -> Server listening)", ".3f", " s"),
        ("gen_s", "  of which generation (sum of duration_ms)", ".3f", " s"),
        ("overhead_s", "harness overhead (wall - worker time)", ".2f", " s"),
        ("overhead_share", "**overhead share** (target <= 10%)", ".1%", ""),
        ("overhead_share_with_ref_startup",
         "overhead share, reference worker's interpreter start-up counted as worker time",
         ".1%", ""),
        ("trace_cli_s", "time in `llorch-pool ...` CLI subprocesses (per xdist process, "
         "summed)", ".2f", " s"),
        ("trace_spawn_s", "time in `spawn_worker` (summed)", ".2f", " s"),
        ("trace_stop_s", "time in `WorkerHandle.stop` (summed)", ".2f", " s"),
    ):
        if key in ser and key in par:
            row = f"| {label} | {s(ser[key], fmt, unit)} | {s(par[key], fmt, unit)} |"
            if var is not None and key in var:
                row += f" {s(var[key], fmt, unit)} |"
            lines.append(row)
    cols = [ser, par, *([var] if var is not None else [])]
    lines.append("| worker lives / requests per run | "
                 + " | ".join(f"{c['lives']} / {c['requests']}" for c in cols) + " |")
    lines.append("| pytest exit status(es) | " + " | ".join(str(c["rc"]) for c in cols) + " |")
    lines.append("| pytest summary (last run) | " + " | ".join(c["summary"] for c in cols) + " |")
    st = r.get("ref_startup") or {}
    if st:
        lines += ["", "Reference worker start-up measured directly (5 spawns): spawn -> first "
                  f"log line (interpreter + numpy/tokenizers import, not in the logs) "
                  f"{s(st['first_log_s'])}; spawn -> \"Server listening\" {s(st['listening_s'])}."]
    tr = r["runs"]["serial"][0].get("trace")
    if tr:
        lines += ["", "Where the serial gate's wall time goes (first serial run, trace plugin):",
                  "", "| part | seconds |", "| --- | ---: |"]
        for key, label in (("interp_to_configure_s", "interpreter + imports to pytest_configure"),
                           ("configure_to_collected_s", "configure + collection"),
                           ("collected_to_first_test_s", "collection to first test")):
            if key in tr:
                lines.append(f"| {label} | {tr[key]:.2f} |")
        for when, secs in sorted(tr["phase_s"].items()):
            lines.append(f"| all tests, {when} phase | {secs:.2f} |")
        lines.append(f"| `llorch-pool ...` CLI subprocesses ({tr['cli_n']} runs, inside tests) "
                     f"| {tr['cli_s']:.2f} |")
        lines.append(f"| `spawn_worker` in-process ({tr['spawn_n']} spawns) "
                     f"| {tr['spawn_s']:.2f} |")
        lines.append(f"| `WorkerHandle.stop` ({tr['stop_n']} stops) | {tr['stop_s']:.2f} |")
        lines += ["", "CLI subprocesses by command (runs, seconds): " + "; ".join(
            f"`{k}` {n}, {t:.2f}" for k, (n, t) in sorted(
                tr["cli_by_command"].items(), key=lambda kv: -kv[1][1]))]
        lines += ["", "Slowest tests (setup + call + teardown): " + "; ".join(
            f"`{k.split('::')[-1]}` {v:.2f} s" for k, v in tr["top_tests"])]
        if tr["ready_seconds"] or tr["tokens_per_sec"]:
            lines += ["", "What the gate itself recorded (per test that used a worker; the "
                      f"live worker is shared): ready_seconds {tr['ready_seconds']}, "
                      f"tokens_per_sec {tr['tokens_per_sec']}."]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--variant", type=Path, default=None, metavar="TREE",
                    help="also run the serial gate from TREE (a patched copy of this checkout), "
                    "interleaved, to measure a proposed fix in the same run")
    args = ap.parse_args(argv)
    command = " ".join(["python", "benchmarks/bench_gate.py",
                        *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        res = measure(max(1, args.repeats), Path(tmp),
                      args.variant.resolve() if args.variant else None)
    text = markdown(res, command)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    if args.md:
        args.md.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
