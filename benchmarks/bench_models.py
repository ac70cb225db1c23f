"""The gate over several models (CP4, issue 16 item 6): what each extra model costs.

Why: `--gate-models` runs every inference check and CP4's items once per model and
backend; a lab pays that on every pool and build, so the cost per extra model (and where
it goes) decides how many models a nightly gate can afford. Each repeat runs the embedded
gate `pytest -m cpu tests_hw` in a subprocess with a fresh `--pool-root` and `--basetemp`,
for one model (the default, tiny-qwen) and for four (tiny-qwen, tiny-llama, tiny-phi3,
tiny-mistral), interleaved (the order flips every repeat), after one untimed four-model
warm-up (the first gate pays cold caches); `--xdist` adds the four-model run with `-n 2`.
From each run:

- the gate JSON: `items[].duration` summed per `items[].model` (inference checks of
  test_qwen_inference.py, CP4 items of test_multi_model.py; `model: null` is the
  non-model part), `memory` (one record per worker life: lives per model) and
  `model_runs`;
- the worker logs of that pool, per worker id: worker time (load + generation, as
  bench_gate.py counts it, with the reference worker's current log lines) beside the
  harness's;
- a trace (bench_gate's plugin, plus this module as a plugin under $BENCH_GATE_TRACE): the
  start-up, collection, gaps between tests and the end, and, attributed to the test phase
  that was running, the hub build of the tiny models, downloads, reference loading and
  checks, `spawn_worker`, stops and `llorch-pool` CLI subprocesses.

Run:  .venv/bin/python benchmarks/bench_models.py [--repeats 3 | --quick] [--xdist]
      [--json PATH] [--md PATH]
Not a test: nothing is asserted and pytest never collects it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_gate as bg  # noqa: E402
from bench_models_md import (  # noqa: E402
    EVENTS,
    FOUR,
    NON_MODEL,
    OUTSIDE,
    PRIMARY,
    QWEN_GROUP,
    markdown,
)
from benchstats import stats  # noqa: E402

GATE_TIMEOUT_S = 900.0
QWEN_WORKS = "test_qwen_inference.py::test_qwen_works"
_LIVE_ID = re.compile(r"^gate-(?:(?P<model>.+)-)?(?:cpu|cuda|metal)-\d+-")


# --------------------------------------------------------------------------- trace plugin


def _arg(a: tuple[Any, ...], kw: dict[str, Any], i: int, name: str) -> Any:
    return a[i] if len(a) > i else kw.get(name)


def pytest_configure(config: pytest.Config) -> None:
    """Under $BENCH_GATE_TRACE (with `-p bench_gate`): time the model-bound work too."""
    if not bg._trace_path():
        return
    from llorch_harness.checks.agreement import ReferenceRunner
    from llorch_harness.lab import tinymodel
    from llorch_harness.plugin import fixtures

    tinymodel.build_tiny_model = bg._timed(  # build_hub_repos imports it at call time
        tinymodel.build_tiny_model, "hubbuild", lambda a, kw: Path(_arg(a, kw, 0, "out_dir")).name)
    fixtures.fetch_gate_model = bg._timed(  # the fixtures call it by its module name
        fixtures.fetch_gate_model, "download", lambda a, kw: _arg(a, kw, 1, "model_id"))
    fixtures.make_reference = bg._timed(
        fixtures.make_reference, "refload",
        lambda a, kw: getattr(_arg(a, kw, 2, "model"), "model_id", ""))
    ReferenceRunner.compare = bg._timed(  # type: ignore[method-assign]
        ReferenceRunner.compare, "refcheck", lambda a, kw: _arg(a, kw, 2, "label"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Any:
    """The run's end: the gate's roll-up, gate JSON, report and terminal summary."""
    t0 = time.time()
    try:
        return (yield)
    finally:
        bg._emit("finish", start=t0, stop=time.time())


# --------------------------------------------------------------------------- one run


def classify(worker_id: str) -> tuple[str, str]:
    """(model or non-model, 'live' | 'own') for a worker id of the gate."""
    m = _LIVE_ID.match(worker_id)
    if m:
        return (m.group("model") or PRIMARY, "live")
    if worker_id.startswith("spawn-"):
        return (PRIMARY, "own")
    return (NON_MODEL, "own")


def group_of(nodeid: str | None, model_of: dict[str, str | None]) -> str:
    if nodeid is None:
        return OUTSIDE
    if QWEN_WORKS in nodeid:
        return QWEN_GROUP
    return model_of.get(nodeid) or NON_MODEL


def run_gate(work: Path, tag: str, models: tuple[str, ...] | None, n_workers: int
             ) -> dict[str, Any]:
    """One embedded gate in a subprocess (fresh pool root and basetemp); its figures."""
    pool, bt = work / f"pool-{tag}", work / f"bt-{tag}"
    trace, gate_json = work / f"trace-{tag}.jsonl", work / f"gate-{tag}.json"
    argv = [sys.executable, "-m", "pytest", "-m", "cpu", "tests_hw", "-q", "-p",
            "no:cacheprovider", "-p", "bench_gate", "-p", "bench_models", "--pool-root",
            str(pool), "--basetemp", str(bt), "--gate-json", str(gate_json)]
    if models:
        argv += ["--gate-models", ",".join(models)]
    if n_workers > 1:
        argv += ["-n", str(n_workers)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    env[bg.TRACE_ENV] = str(trace)
    log = work / f"pytest-{tag}.log"
    with log.open("wb") as fh:
        t_launch, t0 = time.time(), time.perf_counter()
        try:
            rc: int | None = subprocess.run(argv, cwd=ROOT, env=env, stdout=fh,
                                            stderr=subprocess.STDOUT, timeout=GATE_TIMEOUT_S,
                                            check=False).returncode
        except subprocess.TimeoutExpired:
            rc = None
        wall = time.perf_counter() - t0
    tail = log.read_text(errors="replace").strip().splitlines()
    res: dict[str, Any] = {"tag": tag, "wall_s": wall, "rc": rc,
                           "summary": tail[-1] if tail else ""}
    try:
        res.update(analyse(json.loads(gate_json.read_text()), trace, t_launch, wall,
                           pool / ".runtime" / "workers", work / f"logs-{tag}"))
    except (OSError, ValueError, KeyError) as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
    for path in (pool, bt, work / f"logs-{tag}"):
        shutil.rmtree(path, ignore_errors=True)
    return res


def analyse(doc: dict[str, Any], trace: Path, t_launch: float, wall: float,
            workers_dir: Path, scratch: Path) -> dict[str, Any]:
    """Flat figures of one run: `part:`, `ev:`, `worker:`, `lives:` keys per group."""
    model_of = {it["nodeid"]: it.get("model") for it in doc["items"]}
    fig: dict[str, float] = defaultdict(float)
    for it in doc["items"]:
        g = group_of(it["nodeid"], model_of)
        kind = "cp4" if "test_multi_model.py" in it["nodeid"] else "items"
        fig[f"part:{g}:{kind}_s"] += float(it.get("duration") or 0.0)
        fig["items_s"] += float(it.get("duration") or 0.0)
    for rec in doc.get("memory") or []:
        model, kind = classify(str(rec.get("worker_id", "")))
        fig[f"lives:{model}:{kind}"] += 1
    fig.update(_worker_groups(workers_dir, scratch))
    fig["worker_s"] = fig.get("worker:all:s", 0.0)
    fig["worker_load_s"] = fig.get("wload:all:s", 0.0)
    fig["harness_s"] = wall - fig["worker_s"]
    fig["rest_s"] = wall - fig["items_s"]
    fig.update(_trace_figures(trace, t_launch, wall, model_of))
    runs = {r["model"]: {k: r.get(k) for k in ("status", "startup_s", "tokens_per_sec",
                                                "worker_lives", "size_bytes")}
            for r in doc.get("model_runs") or []}
    return {"fig": dict(fig), "verdict": doc.get("verdict"), "model_runs": runs,
            "memory_ids": sorted({str(r.get("worker_id")) for r in doc.get("memory") or []})}


def worker_times(workers_dir: Path) -> dict[str, float]:
    """Worker load ("Starting llorch-..." -> "... listening") and generation (sum of
    "Inference completed" duration_ms) over the logs there. bench_gate.worker_times knows
    only the older "Starting llorch-candled worker" / "Server listening" lines."""
    load = gen = 0.0
    lives = 0
    for log in sorted(workers_dir.glob("*.log*")):
        started: float | None = None
        for line in log.read_text(errors="replace").splitlines():
            try:
                obj = json.loads(line)
                msg = str(obj["fields"]["message"])
            except (ValueError, KeyError, TypeError):
                continue
            if msg.startswith("Starting llorch-"):
                started, lives = bg._ts(obj["timestamp"]), lives + 1
            elif msg in ("HTTP server listening", "Server listening") and started is not None:
                load += bg._ts(obj["timestamp"]) - started
                started = None
            elif msg == "Inference completed":
                gen += float(obj["fields"].get("duration_ms", 0)) / 1000
    return {"load_s": load, "gen_s": gen, "lives": lives}


def _worker_groups(workers_dir: Path, scratch: Path) -> dict[str, float]:
    """worker_times per model: each model's logs copied to a folder of its own."""
    out: dict[str, float] = {}
    scratch.mkdir(parents=True, exist_ok=True)
    for log in sorted(workers_dir.glob("*.log*")):
        model, _ = classify(log.name.split(".log", 1)[0])
        dest = scratch / model
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(log, dest / log.name)
    for name in ("all", *(p.name for p in scratch.iterdir() if p.is_dir())):
        t = worker_times(workers_dir if name == "all" else scratch / name)
        out[f"worker:{name}:s"] = t["load_s"] + t["gen_s"]
        out[f"wload:{name}:s"] = t["load_s"]
        out[f"loglives:{name}:n"] = t["lives"]
    return out


def _trace_figures(trace: Path, t_launch: float, wall: float,
                   model_of: dict[str, str | None]) -> dict[str, float]:
    """Start-up, gaps and end of the main process, and each timed call by test group."""
    evs = [json.loads(x) for x in trace.read_text().splitlines() if x.strip()]
    br = bg.trace_breakdown(trace, t_launch)
    out = {k: br[k] for k in ("interp_to_configure_s", "configure_to_collected_s",
                              "collected_to_first_test_s") if k in br}
    phases = sorted((e for e in evs if e["ev"] == "phase"), key=lambda e: e["start"])
    main = [p for p in phases if not p["xdist"]]
    if main:  # serial: tests run in this process, one after the other
        out["gaps_s"] = sum(max(0.0, b["start"] - a["stop"]) for a, b in itertools.pairwise(main))
    if phases:
        out["end_s"] = t_launch + wall - max(p["stop"] for p in phases)
    fin = [e for e in evs if e["ev"] == "finish" and not e["xdist"]]
    if fin:
        out["finish_s"] = fin[0]["stop"] - fin[0]["start"]
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in phases:
        by_pid[p["pid"]].append(p)
        key = f"xdist:{p['xdist'] or 'main'}:s"
        out[key] = out.get(key, 0.0) + p["stop"] - p["start"]
    for e in evs:
        if e["ev"] not in EVENTS:
            continue
        hit = next((p for p in by_pid[e["pid"]] if p["start"] <= e["start"] <= p["stop"]), None)
        g = group_of(hit["nodeid"] if hit else None, model_of)
        out[f"ev:{g}:{e['ev']}_s"] = out.get(f"ev:{g}:{e['ev']}_s", 0.0) + e["stop"] - e["start"]
        out[f"evn:{g}:{e['ev']}"] = out.get(f"evn:{g}:{e['ev']}", 0) + 1
    return out


# --------------------------------------------------------------------------- repeats


MODES: dict[str, tuple[tuple[str, ...] | None, int]] = {
    "one": (None, 1), "four": (FOUR, 1), "four_n2": (FOUR, 2)}


def measure(repeats: int, work: Path, xdist: bool, warmup: bool = True) -> dict[str, Any]:
    modes = ("one", "four", "four_n2") if xdist else ("one", "four")
    res: dict[str, Any] = {"load_start": [round(x, 2) for x in os.getloadavg()],
                           "modes": list(modes), "warmup": warmup}
    if warmup:  # the first gate of a session pays cold caches; it would land on one variant
        w = run_gate(work, "warmup", FOUR, 1)
        print(f"  warm-up (4 models, untimed): wall {w['wall_s']:.1f}s, rc {w['rc']}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for i in range(repeats):
        for mode in modes if i % 2 == 0 else modes[::-1]:
            models, n = MODES[mode]
            r = run_gate(work, f"{mode}-{i}", models, n)
            runs[mode].append(r)
            f = r.get("fig", {})
            print(f"  {mode} #{i + 1}: wall {r['wall_s']:.1f}s, items {f.get('items_s', 0):.1f}s,"
                  f" worker {f.get('worker_s', 0):.2f}s, rc {r['rc']}, {r['summary']}"
                  + (f" [{r['error']}]" if "error" in r else ""), flush=True)
    res["load_end"] = [round(x, 2) for x in os.getloadavg()]
    res["runs"] = runs
    for mode, rs in runs.items():
        keys = sorted({k for r in rs for k in r.get("fig", {})} | {"wall_s"})
        res[mode] = {k: stats([float(r.get("fig", {}).get(k, r.get(k, 0.0)) or 0.0)
                               for r in rs]) for k in keys}
        res[mode]["rc"] = sorted({str(r["rc"]) for r in rs})
        res[mode]["summary"] = rs[-1]["summary"]
        res[mode]["model_runs"] = rs[-1].get("model_runs", {})
    one, four = runs["one"], runs["four"]
    ratios = [b["wall_s"] / a["wall_s"] for a, b in zip(one, four, strict=True)]
    res["ratio"] = stats(ratios)
    res["marginal_s"] = stats([(b["wall_s"] - a["wall_s"]) / (len(FOUR) - 1)
                               for a, b in zip(one, four, strict=True)])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs of each variant (default 3)")
    ap.add_argument("--quick", action="store_true", help="one run of each variant")
    ap.add_argument("--xdist", action="store_true", help="also the four models with -n 2")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the untimed four-model warm-up run")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args(argv)
    from run_all import machine

    from llorch_harness.fsutil import atomic_write_text

    command = " ".join(["python", "benchmarks/bench_models.py",
                        *(sys.argv[1:] if argv is None else argv)])
    info = machine()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        res = measure(1 if args.quick else max(1, args.repeats), Path(tmp), args.xdist,
                      warmup=not args.no_warmup)
    text = markdown(res, command, info, started)
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=1, default=str))
    if args.md:
        atomic_write_text(args.md, text)
    print(text)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
