"""The embedded tiny model (issue 19): build time, size and load time per vocabulary.

Why: the embedded gate builds its model on every run; switching it from the small corpus
tokenizer to Qwen2.5's real vocabulary costs build time (151,387 merges recovered from
the ranks, cached after the first build), disk (151,936 embedding rows, a 7 MB
tokenizer.json) and worker load time. Each figure is a median over --repeats runs, each
build in a fresh directory; "cold" builds use an empty cache directory
($LLORCH_HARNESS_CACHE), "warm" ones the cache the cold build left.

Run:  .venv/bin/python benchmarks/bench_tinymodel.py [--repeats 3] [--md PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchstats import stats

from llorch_harness.lab.refworker.engine import Engine
from llorch_harness.lab.tinymodel import build_tiny_model


def _timed(fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _fmt(values: list[float]) -> str:
    s = stats(values)
    return f"median {s['median']:.2f} s (min {s['min']:.2f}, max {s['max']:.2f}, n={s['n']})"


def run(repeats: int) -> str:
    lines = [
        "### Tiny model per vocabulary (bench_tinymodel.py)",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical "
        f"cores, Python {platform.python_version()}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- command: `python benchmarks/bench_tinymodel.py --repeats {repeats}`",
        "",
        "| vocab | build | size on disk | Engine.load |",
        "| --- | --- | ---: | --- |",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-tiny-") as tmp:
        root = Path(tmp)
        for vocab in ("corpus", "qwen2.5"):
            cold: list[float] = []
            warm: list[float] = []
            loads: list[float] = []
            size = 0
            for r in range(repeats):
                if vocab == "qwen2.5":
                    os.environ["LLORCH_HARNESS_CACHE"] = str(root / f"cache{r}")
                    secs, _ = _timed(lambda r=r, vocab=vocab: build_tiny_model(
                        root / f"{vocab}-cold{r}", vocab=vocab))
                    cold.append(secs)
                out = root / f"{vocab}-{r}"
                secs, files = _timed(
                    lambda out=out, vocab=vocab: build_tiny_model(out, vocab=vocab))
                warm.append(secs)
                size = sum(f.stat().st_size for f in files)  # type: ignore[attr-defined]
                secs, _ = _timed(lambda out=out: Engine.load(out))
                loads.append(secs)
            build = (f"cold cache {_fmt(cold)}; warm {_fmt(warm)}" if cold
                     else _fmt(warm))
            lines.append(f"| {vocab} | {build} | {size:,} B | {_fmt(loads)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    text = run(max(1, args.repeats))
    if args.md:
        args.md.write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
