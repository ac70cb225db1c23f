"""The reference check's margins and cost; writes benchmarks/RESULTS_reference.md.

Why: `--reference-delta` and `--reference-top-k` must let a correct worker that computes
in reduced precision pass (GPUs run bf16/f16) and still fail a wrong one. So the defaults
are measured: the same reference (transformers) runs the gate prompts in float32,
float16 and bfloat16; for every generated position we take the logit gap between each
run's top-1 and the other run's greedy token (teacher-forced on the same prefix), and the
rank. The cost: one reference greedy run (cached per model/prompt) plus one alignment
pass per stream, on 2 cores, for the tiny model and a model of Qwen2.5-0.5B's shape
(random bf16 weights, no download).

Run: ``.venv/bin/python benchmarks/bench_reference.py [--skip-large] [--out PATH]``
Needs the oracle extra (torch, transformers). Not run by the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_refworker import build_qwen05_shape  # noqa: E402

from llorch_harness.checks.agreement import ReferenceRunner  # noqa: E402
from llorch_harness.checks.inference_checks import GATE_MAX_TOKENS, GATE_PROMPTS  # noqa: E402
from llorch_harness.checks.reference import NumpyReference, TransformersReference  # noqa: E402
from llorch_harness.checks.tokenalign import judge  # noqa: E402
from llorch_harness.checks.workerclient import StreamResult  # noqa: E402
from llorch_harness.checks.workerlog import GenerationFacts  # noqa: E402
from llorch_harness.lab.tinymodel import build_tiny_model  # noqa: E402

LONG = ("Write a short story about a lighthouse keeper who finds a message in a bottle. "
        "The keeper lives alone on a rocky island, far from the mainland, and the bottle "
        "arrives on a stormy night in late autumn.")
PROMPTS = {**GATE_PROMPTS, "story": LONG}


def write_index(model_dir: Path) -> None:
    """transformers finds shards through model.safetensors.index.json (as hub repos ship)."""
    from safetensors import safe_open

    weight_map = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), "np") as fh:
            weight_map.update({name: shard.name for name in fh.keys()})
    (model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))


def greedy(ref: TransformersReference, prompt: str, n: int) -> list[int]:
    ids = ref.encode(prompt)
    out: list[int] = []
    for _ in range(n):
        out.append(int(ref.logits(ids + out)[-1].argmax()))
    return out


def spread(refs: dict[str, TransformersReference], n: int,
           prompts: dict[str, str] = PROMPTS) -> list[dict]:
    """Per prompt and pair of dtypes: the largest gap and rank of one run's greedy tokens
    under the other run's logits."""
    rows = []
    for name, prompt in prompts.items():
        tokens = {dt_: greedy(r, prompt, n) for dt_, r in refs.items()}
        prompt_ids = refs["float32"].encode(prompt)
        for judge_dt, r in refs.items():
            for tok_dt, toks in tokens.items():
                if judge_dt == tok_dt:
                    continue
                logits = r.logits(prompt_ids + toks)
                gaps, ranks = [], []
                for i, t in enumerate(toks):
                    step = judge(logits[len(prompt_ids) - 1 + i], t)
                    gaps.append(step.sigma_gap)
                    ranks.append(step.rank)
                rows.append({"prompt": name, "tokens_of": tok_dt, "judged_by": judge_dt,
                             "max_gap": max(gaps), "max_rank": max(ranks),
                             "differing": sum(1 for g in gaps if g > 0)})
    return rows


def _stream(prompt: str, text: str, n: int) -> StreamResult:
    ev = [{"type": "started", "job_id": "j", "model": "model", "started_at": "0"},
          {"type": "token", "t": text, "i": 0},
          {"type": "end", "tokens_out": 1, "decode_time_ms": 1, "stop_reason": "MAX_TOKENS"}]
    res = StreamResult(200, ev, [], None, 0.1, 0.1, None,
                       request_json={"job_id": "j", "prompt": prompt, "max_tokens": n,
                                     "temperature": 0})
    res.log = GenerationFacts("j", tokens_generated=n, line_nos=[1])
    return res


def cost(model_dir: Path, label: str, n: int) -> list[dict]:
    rows = []
    for impl in ("numpy", "transformers"):
        t0 = time.perf_counter()
        ref = NumpyReference(model_dir) if impl == "numpy" else TransformersReference(model_dir)
        runner = ReferenceRunner(ref)
        load = time.perf_counter() - t0
        for name, prompt in PROMPTS.items():
            t1 = time.perf_counter()
            g = runner.greedy(prompt, n)
            t2 = time.perf_counter()
            verdict = runner.compare(_stream(prompt, g["text"], len(g["ids"])), name)
            t3 = time.perf_counter()
            rows.append({"model": label, "impl": impl, "prompt": name, "load_s": load,
                         "greedy_s": t2 - t1, "compare_s": t3 - t2, "ok": verdict.ok,
                         "passes": verdict.details["forward_passes"]})
            load = 0.0
    return rows


def render(spreads: dict[str, list[dict]], costs: list[dict], started: str) -> str:
    lines = ["# Reference check: margins and cost", "",
             f"Written by `benchmarks/bench_reference.py` on {started}; "
             f"{platform.machine()}, {platform.python_version()}, 2 shared cores.", "",
             "## Precision spread (defaults for --reference-delta and --reference-top-k)", "",
             "Largest logit gap, in standard deviations of the judging run's logits (sigma), "
             "and 1-based rank of one dtype's greedy tokens under another dtype's logits, "
             "teacher-forced, over the gate prompts, "
             f"{GATE_MAX_TOKENS} tokens each (tiny models only: half precision on a CPU is "
             "too slow for the 0.5B shape).", "",
             "| model | tokens of | judged by | max gap | max rank | positions off top-1 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for model, rows in spreads.items():
        agg: dict[tuple[str, str], list[dict]] = {}
        for r in rows:
            agg.setdefault((r["tokens_of"], r["judged_by"]), []).append(r)
        for (tok_dt, judge_dt), rs in sorted(agg.items()):
            lines.append(f"| {model} | {tok_dt} | {judge_dt} | "
                         f"{max(r['max_gap'] for r in rs):.4f} | "
                         f"{max(r['max_rank'] for r in rs) + 1} | "
                         f"{sum(r['differing'] for r in rs)} |")
    lines += ["", "## Cost per stream", "",
              "| model | reference | prompt | load s | reference greedy s (cached after) | "
              "compare s | forward passes | agrees |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in costs:
        lines.append(f"| {r['model']} | {r['impl']} | {r['prompt']} | {r['load_s']:.2f} | "
                     f"{r['greedy_s']:.3f} | {r['compare_s']:.3f} | {r['passes']} | {r['ok']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-large", action="store_true", help="tiny model only")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS_reference.md")
    args = ap.parse_args(argv)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with tempfile.TemporaryDirectory(prefix="bench-ref-") as tmp:
        models: dict[str, Path] = {}
        for vocab in ("corpus", "qwen2.5"):
            models[f"tiny-qwen ({vocab} vocab)"] = Path(tmp) / f"tiny-{vocab}"
            build_tiny_model(models[f"tiny-qwen ({vocab} vocab)"], vocab=vocab)
        spreads = {}
        for label, path in models.items():  # half precision on a CPU is too slow for 0.5B
            refs = {d: TransformersReference(path, d) for d in ("float32", "float16", "bfloat16")}
            spreads[label] = spread(refs, GATE_MAX_TOKENS)
        if not args.skip_large:
            big = Path(tmp) / "qwen05-shape"
            build_qwen05_shape(big, models["tiny-qwen (corpus vocab)"])
            write_index(big)
            models["0.5B-shaped (random bf16)"] = big
        costs = [row for label, path in models.items()
                 for row in cost(path, label, GATE_MAX_TOKENS)]
    text = render(spreads, costs, started)
    args.out.write_text(text)
    print(text)
    np.set_printoptions()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
