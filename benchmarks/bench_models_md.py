"""The markdown of bench_models.py (RESULTS_models.md): tables from its medians.

Why apart: the measuring module is also a pytest plugin loaded into every gate run it
times; the report is only needed once, at the end.
"""

from __future__ import annotations

from typing import Any

FOUR = ("tiny-qwen", "tiny-llama", "tiny-phi3", "tiny-mistral")
PRIMARY = FOUR[0]
NON_MODEL, QWEN_GROUP, OUTSIDE = "non-model", "test_qwen_works", "outside tests"
EVENTS = ("hubbuild", "download", "refload", "refcheck", "spawn", "stop", "cli")


def _med(d: dict[str, Any], key: str) -> float:
    return float(d.get(key, {}).get("median", 0.0)) if isinstance(d.get(key), dict) else 0.0


def _s(d: dict[str, Any], key: str, fmt: str = ".2f") -> str:
    v = d.get(key)
    if not isinstance(v, dict):
        return "-"
    return (f"{v['median']:{fmt}} (p95 {v['p95']:{fmt}}, min {v['min']:{fmt}}, "
            f"max {v['max']:{fmt}}, n={v['n']})")


def _header(r: dict[str, Any], command: str, info: dict[str, Any], started: str) -> list[str]:
    return [
        "# The gate over several models (CP4, issue 16 item 6): cost per model",
        "",
        f"- date: {started}",
        f"- command: `{command}`",
        f"- commit: {info['commit']}" + (" (working tree has uncommitted changes)"
                                         if info["dirty"] else ""),
        f"- machine: {info['cpu']}, {info['logical_cores']} logical cores, "
        f"{info['memory_gib']} GiB memory, {info['os']}, Python {info['python']}",
        f"- load average: {r['load_start']} at start, {r['load_end']} at end (the cores are "
        "shared with other jobs; the variants are interleaved, the order flips every repeat)",
        "- each run: `pytest -m cpu tests_hw -p bench_gate -p bench_models` from the checkout, "
        "embedded lab, a fresh `--pool-root` and `--basetemp`, `--gate-json`; one model = no "
        f"`--gate-models` (the default, {PRIMARY}); four = `--gate-models {','.join(FOUR)}`",
        "- seconds: median (p95, min, max, n) over the repeats"
        + ("; one untimed four-model run first (cold caches)" if r.get("warmup") else ""),
        "",
    ]


def _wall_table(r: dict[str, Any]) -> list[str]:
    modes = r["modes"]
    names = {"one": "1 model", "four": "4 models", "four_n2": "4 models, `-n 2`"}
    lines = ["## Wall time", "", "| figure | " + " | ".join(names[m] for m in modes) + " |",
             "| --- |" + " --- |" * len(modes)]
    for key, label in (
        ("wall_s", "**wall time** (s)"),
        ("items_s", "sum of test durations, gate JSON `items[].duration` (s)"),
        ("rest_s", "wall - test durations (start-up, collection, gaps, end) (s)"),
        ("worker_s", "worker time: load + generation, from the worker logs (s)"),
        ("harness_s", "harness time: wall - worker time (s)"),
        ("worker_load_s", "  of which load: Starting -> HTTP server listening (s)"),
        ("loglives:all:n", "worker lives (Starting lines in the logs)"),
    ):
        lines.append(f"| {label} | " + " | ".join(_s(r[m], key) for m in modes) + " |")
    lines.append("| pytest exit status(es) | " + " | ".join(", ".join(r[m]["rc"])
                                                         for m in modes) + " |")
    lines.append("| pytest summary (last run) | " + " | ".join(r[m]["summary"]
                                                             for m in modes) + " |")
    one, four = _med(r["one"], "wall_s"), _med(r["four"], "wall_s")
    lines += ["", f"- **4 models / 1 model**: {_s(r, 'ratio')} (per repeat, paired runs); "
              f"from the medians {four:.1f} / {one:.1f} s = {four / one:.2f}" if one else "",
              f"- **marginal cost per extra model**: {_s(r, 'marginal_s', '.1f')} s "
              "((4-model wall - 1-model wall) / 3, per repeat)"]
    extra = sum(_med(r["four"], f"part:{m}:{k}_s") for m in FOUR[1:] for k in ("items", "cp4"))
    lines.append(f"- the {len(FOUR) - 1} extra models' own tests (inference checks + CP4 items, "
                 f"sum of medians): {extra:.1f} s, {extra / (len(FOUR) - 1):.1f} s per model")
    if "four_n2" in modes:
        n2 = _med(r["four_n2"], "wall_s")
        per = ", ".join(f"{k.split(':')[1]} {v['median']:.1f} s" for k, v in
                        sorted(r["four_n2"].items()) if k.startswith("xdist:"))
        lines.append(f"- 4 models with `-n 2`: {n2:.1f} s, {n2 / four:.2f} of serial "
                     f"(test time per xdist worker: {per})" if four else "")
    lines.append("")
    return lines


def _groups(d: dict[str, Any]) -> list[str]:
    seen = {k.split(":")[1] for k in d if k.startswith(("part:", "ev:", "worker:"))}
    order = [NON_MODEL, QWEN_GROUP, *FOUR, OUTSIDE]
    return [g for g in order if g in seen] + sorted(seen - set(order) - {"all"})


def _parts_table(r: dict[str, Any]) -> list[str]:
    modes = [m for m in r["modes"] if m != "four_n2"]
    rows: list[tuple[str, str]] = [
        (f"part:{NON_MODEL}:items_s", "non-model items (pool-level: downloads, worker "
         "management and spawning, performance, memory growth, code quality...)"),
        (f"part:{QWEN_GROUP}:items_s", "`test_qwen_works[cpu]` (CP3's seed item, `model: null` "
         f"in the gate JSON; first user of {PRIMARY}'s live worker and reference)")]
    for m in FOUR:
        rows += [(f"part:{m}:items_s", f"{m}: inference checks"),
                 (f"part:{m}:cp4_s", f"{m}: CP4 items")]
    rows += [("interp_to_configure_s", "rest: interpreter + imports to pytest_configure"),
             ("configure_to_collected_s", "rest: configure (lab decision) + collection"),
             ("collected_to_first_test_s", "rest: collection to the first test"),
             ("gaps_s", "rest: between tests (reporting hooks)"),
             ("end_s", "rest: last test to exit"),
             ("finish_s", "  of which pytest_sessionfinish (roll-up, gate JSON, report)")]
    lines = ["## Where the time goes (serial runs)", "",
             "Test durations come from the gate JSON; the rest from the trace (bench_gate's "
             "plugin: `pytest_configure`, collection finished, every test phase; this "
             "module: `pytest_sessionfinish`), so the rows add up to the wall time. Session "
             "fixtures are set up inside the first test that needs them, so the hub build, "
             "downloads and reference loads are inside test durations: the next table "
             "attributes them.", "",
             "| part (seconds) | " + " | ".join({"one": "1 model", "four": "4 models"}[m]
                                               for m in modes) + " |",
             "| --- |" + " --- |" * len(modes)]
    for key, label in rows:
        if any(key in r[m] for m in modes):
            lines.append(f"| {label} | " + " | ".join(_s(r[m], key) for m in modes) + " |")
    lines.append("")
    return lines


def _events_table(r: dict[str, Any], mode: str, title: str) -> list[str]:
    d = r[mode]
    heads = ("hub build", "downloads", "reference load", "reference checks",
             "`spawn_worker`", "stops", "`llorch-pool` CLI")
    lines = [f"**{title}**", "", "| run by (seconds, calls) | " + " | ".join(heads) + " |",
             "| --- |" + " ---: |" * len(heads)]
    for g in _groups(d):
        cells = []
        for ev in EVENTS:
            t, n = _med(d, f"ev:{g}:{ev}_s"), _med(d, f"evn:{g}:{ev}")
            cells.append(f"{t:.2f} ({n:.0f})" if n else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _model_table(r: dict[str, Any]) -> list[str]:
    heads = ("inference checks s", "CP4 items s", "worker time s (logs)",
             "harness s (tests - worker)", "live-worker lives (memory)", "tests' own lives",
             "lives in its logs",
             "model_runs: lives, startup s, tok/s")
    lines = ["## Per model (medians)", "",
             "Worker ids: `gate-cpu-0-*` is tiny-qwen's live worker, `gate-<model>-cpu-0-*` "
             "the others', `spawn-*` tests' own fresh workers of the gate model; the other "
             "ids (memory-, perf0-2, list-, stop-, status-, cleanup-, orphan-) are the "
             "pool-level tests' own workers, counted under non-model. Each model's inference "
             "checks must run on 2 lives: the live worker and the restart check's.", "",
             "| model (run) | " + " | ".join(heads) + " |", "| --- |" + " ---: |" * len(heads)]
    for mode, label in (("one", "1 model"), ("four", "4 models")):
        d = r[mode]
        for g in _groups(d):
            if g == OUTSIDE:
                continue
            items = _med(d, f"part:{g}:items_s") + _med(d, f"part:{g}:cp4_s")
            worker = _med(d, f"worker:{g}:s")
            mr = d["model_runs"].get(g) or {}
            runs = (f"{mr.get('worker_lives')}, {mr.get('startup_s')}, "
                    f"{mr.get('tokens_per_sec')}" if mr else "-")
            lines.append(
                f"| {g} ({label}) | {_med(d, f'part:{g}:items_s'):.2f} | "
                f"{_med(d, f'part:{g}:cp4_s'):.2f} | {worker:.2f} | {items - worker:.2f} | "
                f"{_med(d, f'lives:{g}:live'):.0f} | {_med(d, f'lives:{g}:own'):.0f} | "
                f"{_med(d, f'loglives:{g}:n'):.0f} | "
                f"{runs} |")
    lines += ["", "(test_qwen_works runs on tiny-qwen's live worker, whose worker time is "
              "counted in the tiny-qwen row; the non-model row's worker time is its own "
              "workers'.)", ""]
    return lines


def markdown(r: dict[str, Any], command: str, info: dict[str, Any], started: str) -> str:
    lines = [*_header(r, command, info, started), *_wall_table(r), *_parts_table(r),
             "## Hub build, downloads, references, workers: which tests pay them", "",
             "Each call is attributed to the test phase (setup, call, teardown) running "
             "when it started, by time and process.", ""]
    lines += _events_table(r, "one", "1 model")
    lines += _events_table(r, "four", "4 models")
    if "four_n2" in r["modes"]:
        lines += _events_table(r, "four_n2", "4 models, `-n 2` (summed over processes)")
    lines += _model_table(r)
    ids = sorted({i for rs in r["runs"].values() for x in rs for i in x.get("memory_ids", [])})
    lines += [f"Worker ids seen in the gate JSON's `memory` records: {', '.join(ids)}.", ""]
    return "\n".join(lines).rstrip() + "\n"
