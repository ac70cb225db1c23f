"""Does the reference check pass every correct reduced-precision worker and fail every wrong
one? A study over many models, seeds, prompts, precisions and matmul paths (issue 25).

Why: the margin (`--reference-delta`, `--reference-top-k`) and the alignment decide whether a
healthy GPU worker passes. One machine's bfloat16 run proves nothing about another CPU's
kernels or a GPU's accumulation order, so the rule is measured over:

- models: every tiny architecture (Qwen2 with the small vocabulary and with Qwen2.5's real
  151,936-token one, Llama, Phi-3, Mistral), several seeds each (random weights differ);
- prompts: the gate's own and more, each generated greedily to `--max-tokens`;
- correct workers, each a separate process with its own matmul path: torch in bfloat16 and
  float16 with oneDNN's default ISA and all threads; with `ONEDNN_MAX_CPU_ISA=AVX2` and one
  thread (other kernels, other accumulation order); with torch's deterministic algorithms;
  and float32 with its logits perturbed at the scale bfloat16 arithmetic gives (measured per
  model: the spread of bfloat16-minus-float32 logits over the prompt's rows, in units of the
  row's spread; x1 and x2), an emulated GPU rounding. Each worker decodes as the real one does:
  the prompt in one pass, then one token at a time through the KV cache;
- wrong workers (the numpy decoder with the real CP3 faults and others): garbage tokens,
  decode positions shifted by one, CP3's decode positions 1, 2, ..., swapped layers, a RoPE
  base 100 times too small, and a KV cache that is never cleared between requests.

Every stream is judged exactly as the gate judges it (`ReferenceRunner.compare` on the text
and the token count, float32 transformers on this CPU). Besides the verdict, each correct
stream's true ids are teacher-forced through the reference to measure where a correct token
sits (gap in sigma, rank): the distribution the margin must cover.

Run: ``.venv/bin/python benchmarks/study_reference.py [--seeds 3] [--quick] [--work DIR]``
(needs the oracle extra; with `--work`, an interrupted study resumes where it stopped).
Writes benchmarks/RESULTS_reference_study.md and the raw records beside it
(reference_study.json). `--quick` is the small grid the test suite runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from llorch_harness.checks.agreement import ReferenceRunner  # noqa: E402
from llorch_harness.checks.inference_checks import GATE_PROMPTS  # noqa: E402
from llorch_harness.checks.reference import worker_eos_id  # noqa: E402
from llorch_harness.checks.tokenalign import judge  # noqa: E402
from llorch_harness.checks.workerclient import StreamResult  # noqa: E402
from llorch_harness.checks.workerlog import GenerationFacts  # noqa: E402

MODELS = (  # label, architecture, vocabulary
    ("qwen2 (corpus vocab)", "qwen2", "corpus"),
    ("qwen2 (qwen2.5 vocab)", "qwen2", "qwen2.5"),
    ("llama", "llama", "corpus"),
    ("phi3", "phi3", "corpus"),
    ("mistral", "mistral", "corpus"),
)
EXTRA_PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time",
    "1, 2, 3, 4,",
    "def fibonacci(n):",
    "Translate to French: good morning",
    "Q: What is the capital of France?\nA:",
    "Ünïcödé and émojis: ",
)
# name: (dtype, environment, deterministic, noise multiple of the model's bf16 spread)
VARIANTS: dict[str, tuple[str, dict[str, str], bool, float]] = {
    "bf16, default ISA, all threads": ("bfloat16", {}, False, 0.0),
    "fp16, default ISA, all threads": ("float16", {}, False, 0.0),
    "bf16, AVX2, 1 thread": ("bfloat16", {"ONEDNN_MAX_CPU_ISA": "AVX2", "THREADS": "1"},
                             False, 0.0),
    "fp16, AVX2, 1 thread": ("float16", {"ONEDNN_MAX_CPU_ISA": "AVX2", "THREADS": "1"},
                             False, 0.0),
    "bf16, deterministic": ("bfloat16", {}, True, 0.0),
    "fp32 + bf16-scale noise x1": ("float32", {}, False, 1.0),
    "fp32 + bf16-scale noise x2": ("float32", {}, False, 2.0),
}
FAULTS = ("garbage", "positions +1", "CP3 positions 1, 2, ...", "swapped layers",
          "RoPE base / 100", "cache never cleared")


# -- the workers: one process per model and variant ------------------------------------

def _collect(args: argparse.Namespace) -> None:
    """Worker process: greedy streams of one model in one precision, as JSON lines."""
    import torch
    import transformers

    dtype, env, deterministic, noise = VARIANTS[args.variant]
    if env.get("THREADS"):
        torch.set_num_threads(int(env["THREADS"]))
    if deterministic:
        torch.use_deterministic_algorithms(True)
    from tokenizers import Tokenizer

    model_dir = Path(args.model)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype), local_files_only=True).eval()
    vocab = int(model.config.vocab_size)
    eos = worker_eos_id(tokenizer, vocab)
    global _CACHE_ARG
    if "cache" in inspect.signature(model.forward).parameters:
        _CACHE_ARG = "cache"
    scale = _bf16_spread(model_dir, tokenizer) * noise if noise else 0.0
    rng = np.random.default_rng(args.seed)
    with open(args.out, "w", encoding="utf-8") as fh:
        for prompt in json.loads(args.prompts):
            ids = list(tokenizer.encode(prompt, add_special_tokens=True).ids)
            out = _decode(torch, model, ids, args.max_tokens, eos, scale, rng)
            fh.write(json.dumps({"prompt": prompt, "ids": out, "noise_scale": scale}) + "\n")


# transformers 5.x renames `past_key_values` to `cache` (the old name warns, then goes)
_CACHE_ARG = "past_key_values"


def _decode(torch: Any, model: Any, ids: list[int], n: int, eos: int | None, scale: float,
            rng: np.random.Generator) -> list[int]:
    """Prefill in one pass, then one token at a time through the KV cache (the worker's way);
    `scale`: Gaussian noise on the logits in units of the row's spread."""
    out: list[int] = []
    with torch.no_grad():
        res = model(input_ids=torch.tensor([ids]), use_cache=True)
        while len(out) < n:
            row = res.logits[0, -1].float().numpy().astype(np.float64)
            if scale:
                row = row + rng.normal(0.0, scale * float(np.std(row)), row.shape)
            nxt = int(np.argmax(row))
            if nxt == eos:
                break
            out.append(nxt)
            res = model(input_ids=torch.tensor([[nxt]]), use_cache=True,
                        **{_CACHE_ARG: getattr(res, _CACHE_ARG, None) or res.past_key_values})
    return out


def _bf16_spread(model_dir: Path, tokenizer: Any) -> float:
    """Median over the prompt rows of std(bf16 logits - fp32 logits) / std(fp32 logits)."""
    from llorch_harness.checks.reference import TransformersReference

    f32 = TransformersReference(model_dir)
    b16 = TransformersReference(model_dir, "bfloat16")
    ratios: list[float] = []
    for prompt in (*GATE_PROMPTS.values(), *EXTRA_PROMPTS):
        ids = list(tokenizer.encode(prompt, add_special_tokens=True).ids)
        a, b = f32.logits(ids), b16.logits(ids)
        ratios += [float(np.std(b[i] - a[i]) / np.std(a[i])) for i in range(len(ids))]
    return float(np.median(ratios))


def run_variant(model_dir: Path, variant: str, prompts: list[str], max_tokens: int,
                seed: int, work: Path) -> list[dict[str, Any]]:
    """Start one worker process for the variant; its streams."""
    out = work / f"{model_dir.name}-{hashlib.sha256(variant.encode()).hexdigest()[:10]}.jsonl"
    if out.is_file():  # a resumed study: this worker's streams are already collected
        done = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        if len(done) == len(prompts):
            return done
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA",)}
    env.update({k: v for k, v in VARIANTS[variant][1].items() if k != "THREADS"})
    cmd = [sys.executable, str(Path(__file__).resolve()), "collect", "--model", str(model_dir),
           "--variant", variant, "--prompts", json.dumps(prompts), "--max-tokens",
           str(max_tokens), "--seed", str(seed), "--out", str(out)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


# -- the wrong workers: the numpy decoder with faults ------------------------------------

def wrong_stream(model_dir: Path, fault: str, prompt: str, first_prompt: str, n: int,
                 seed: int) -> list[int]:
    """The greedy ids a worker with `fault` generates for `prompt` (its first request, except
    for the stale cache, whose first request ran `first_prompt`)."""
    from llorch_harness.lab.refworker.engine import Engine
    from llorch_harness.lab.refworker.faults import Faults, apply_model_faults

    engine = Engine.load(model_dir)
    model = engine.model
    eos = worker_eos_id(engine.tokenizer, engine.vocab_size)
    if fault == "garbage":
        rng = np.random.default_rng(seed + len(prompt))
        return [int(t) for t in rng.integers(3, engine.vocab_size, n) if t != eos][:n]
    if fault == "swapped layers":
        apply_model_faults(model, Faults(swapped_layers=True))
    if fault == "RoPE base / 100":
        apply_model_faults(model, Faults(wrong_rope_base=True))
    cache = model.new_cache(256)
    if fault == "cache never cleared":
        _greedy_numpy(model, cache, engine.encode(first_prompt), n, eos, None)
    return _greedy_numpy(model, cache, engine.encode(prompt), n, eos, fault)


def _greedy_numpy(model: Any, cache: Any, ids: list[int], n: int, eos: int | None,
                  fault: str | None) -> list[int]:
    start = cache.length  # 0, or where a stale cache left off (positions continue)
    logits = model.forward(ids, cache, position=start)[-1]
    pos = start + len(ids)  # the cache appends at each layer's end whatever the position
    out: list[int] = []
    while len(out) < n:
        nxt = int(np.argmax(logits))
        if nxt == eos:
            break
        out.append(nxt)
        at = pos
        if fault == "positions +1":
            at = pos + 1
        elif fault == "CP3 positions 1, 2, ...":
            at = len(out)  # the loop index, as llorch-candled's CP3 Qwen path
        logits = model.forward([nxt], cache, position=at)[-1]
        pos += 1
    return out


# -- judging -----------------------------------------------------------------------------

def as_stream(prompt: str, text: str, max_tokens: int, n: int) -> StreamResult:
    """The stream a worker sends for `text` (one piece: the alignment reads the bytes, and
    pieces do not change them) with the log's count of generated tokens."""
    events = [{"type": "started", "job_id": "s", "model": "model", "started_at": "0"},
              {"type": "token", "t": text, "i": 0},
              {"type": "end", "tokens_out": n, "decode_time_ms": 1, "stop_reason": "MAX_TOKENS"}]
    res = StreamResult(200, events, [], None, 0.1, 0.1, None, content_type="text/event-stream",
                       request_json={"job_id": "s", "prompt": prompt, "max_tokens": max_tokens,
                                     "temperature": 0.0})
    res.log = GenerationFacts("s", tokens_generated=n, pieces=1, line_nos=[1])
    return res


def judge_stream(runner: ReferenceRunner, prompt: str, ids: list[int], max_tokens: int
                 ) -> dict[str, Any]:
    """The gate's verdict on the stream, and where each true token sat (teacher-forced)."""
    text = runner.text_of(ids)
    t0 = time.perf_counter()
    verdict = runner.compare(as_stream(prompt, text, max_tokens, len(ids)), "study")
    seconds = time.perf_counter() - t0
    prompt_ids = runner.ref.encode(prompt)
    gaps, ranks = [0.0], [0]
    if ids:
        rows = runner.ref.logits(prompt_ids + ids)
        for j, tok in enumerate(ids):
            step = judge(rows[len(prompt_ids) - 1 + j], tok)
            gaps.append(step.sigma_gap)
            ranks.append(step.rank)
    reference_ids = runner.greedy(prompt, max_tokens)["ids"]
    parted = next((j for j, (a, b) in enumerate(zip(ids, reference_ids, strict=False))
                   if a != b), None)
    return {"ok": verdict.ok, "message": verdict.message if not verdict.ok else "",
            "recovered": verdict.details.get("worker_token_ids") == ids,
            "passes": verdict.details.get("forward_passes", 0),
            "expansions": verdict.details.get("readings_expanded", 0),
            "seconds": seconds, "max_gap": max(gaps), "max_rank": max(ranks),
            "off_top1": [g for g in gaps[1:] if g > 0], "parted_at": parted, "n": len(ids),
            "ids": ids}


# -- the study ---------------------------------------------------------------------------

def build_models(work: Path, seeds: int, models: tuple[tuple[str, str, str], ...]
                 ) -> list[tuple[str, int, Path]]:
    from llorch_harness.lab.tinymodel import build_tiny_model

    out = []
    for label, arch, vocab in models:
        for seed in range(seeds):
            d = work / f"{arch}-{vocab}-{seed}"
            if not (d / "config.json").is_file():
                build_tiny_model(d, seed=seed, vocab=vocab, architecture=arch)
            out.append((label, seed, d))
    return out


def study(work: Path, seeds: int, prompts: list[str], max_tokens: int,
          variants: list[str], faults: tuple[str, ...],
          models: tuple[tuple[str, str, str], ...] = MODELS) -> dict[str, Any]:
    from llorch_harness.checks.reference import TransformersReference

    correct: list[dict[str, Any]] = []
    wrong: list[dict[str, Any]] = []
    for label, seed, model_dir in build_models(work, seeds, models):
        saved = work / f"judged-{model_dir.name}-{len(prompts)}-{max_tokens}.json"
        if saved.is_file():  # a resumed study: this model and seed are judged already
            part = json.loads(saved.read_text(encoding="utf-8"))
            correct += part["correct"]
            wrong += part["wrong"]
            continue
        n_correct, n_wrong = len(correct), len(wrong)
        runner = ReferenceRunner(TransformersReference(model_dir), cache_dir=work / "greedy",
                                 model_files={"dir": model_dir.name})
        for variant in variants:
            for rec in run_variant(model_dir, variant, prompts, max_tokens, seed, work):
                v = judge_stream(runner, rec["prompt"], rec["ids"], max_tokens)
                correct.append({"model": label, "seed": seed, "variant": variant,
                                "prompt": rec["prompt"], "noise_scale": rec["noise_scale"], **v})
        for fault in faults:
            for i, prompt in enumerate(prompts):
                ids = wrong_stream(model_dir, fault, prompt, prompts[-1], max_tokens, seed)
                v = judge_stream(runner, prompt, ids, max_tokens)
                wrong.append({"model": label, "seed": seed, "fault": fault, "prompt": prompt,
                              "first_request": i == 0, **v})
        saved.write_text(json.dumps({"correct": correct[n_correct:], "wrong": wrong[n_wrong:]}),
                         encoding="utf-8")
        print(f"{label} seed {seed}: {len(correct)} correct, {len(wrong)} wrong streams so far",
              file=sys.stderr, flush=True)
    return {"correct": correct, "wrong": wrong}


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def _paths_table(correct: list[dict[str, Any]]) -> list[str]:
    """How often two workers of the same precision on other matmul paths wrote the same
    stream: the paths are only a test of the rule where they differ."""
    by: dict[tuple[str, int, str], dict[str, list[int]]] = defaultdict(dict)
    for rec in correct:
        by[(rec["model"], rec["seed"], rec["prompt"])][rec["variant"]] = rec.get("ids", [])
    pairs = [("bf16, default ISA, all threads", "bf16, AVX2, 1 thread"),
             ("bf16, default ISA, all threads", "bf16, deterministic"),
             ("fp16, default ISA, all threads", "fp16, AVX2, 1 thread"),
             ("bf16, default ISA, all threads", "fp16, default ISA, all threads"),
             ("fp32 + bf16-scale noise x1", "fp32 + bf16-scale noise x2")]
    out = ["", "Same stream from two paths (prompts x models x seeds where both ran):", "",
           "| path A | path B | identical streams |", "| --- | --- | --- |"]
    for a, b in pairs:
        both = [v for v in by.values() if a in v and b in v]
        if both:
            same = sum(v[a] == v[b] for v in both)
            out.append(f"| {a} | {b} | {same}/{len(both)} |")
    return out


def render(data: dict[str, Any], meta: dict[str, Any], delta: float, k: int) -> str:
    correct, wrong = data["correct"], data["wrong"]
    lines = [
        "# Reference check: correct reduced-precision workers and wrong ones (issue 25)", "",
        f"Written by `benchmarks/study_reference.py` on {meta['when']}; {meta['machine']}. "
        f"Margins judged: delta {delta} sigma, top-k {k}; {meta['max_tokens']} tokens per "
        f"stream, {meta['prompts']} prompts, {meta['seeds']} seeds per model.", "",
        "## Correct workers (false failures must be 0)", "",
        "| worker | model | streams | false failures | ids recovered | max gap (sigma) | "
        "99.9th pct of off-top-1 gaps | max rank | parted from the reference's greedy | "
        "max passes | max readings |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in correct:
        groups[(rec["variant"], rec["model"])].append(rec)
    for (variant, model), recs in sorted(groups.items()):
        off = [g for r in recs for g in r["off_top1"]]
        lines.append(
            f"| {variant} | {model} | {len(recs)} | {sum(not r['ok'] for r in recs)} | "
            f"{sum(r['recovered'] for r in recs)} | {max(r['max_gap'] for r in recs):.4f} | "
            f"{_pct(off, 99.9):.4f} | {max(r['max_rank'] for r in recs) + 1} | "
            f"{sum(r['parted_at'] is not None for r in recs)} | "
            f"{max(r['passes'] for r in recs)} | {max(r['expansions'] for r in recs)} |")
    lines += _paths_table(correct)
    off_all = [g for r in correct for g in r["off_top1"]]
    tokens = sum(r["n"] for r in correct)
    lines += [
        "", f"**All correct streams: {len(correct)}, false failures "
        f"{sum(not r['ok'] for r in correct)}.** {tokens} tokens, of which {len(off_all)} "
        f"were not the float32 reference's top-1; their gap: median "
        f"{_pct(off_all, 50):.4f}, 99th pct {_pct(off_all, 99):.4f}, 99.9th pct "
        f"{_pct(off_all, 99.9):.4f}, max {max(off_all, default=0.0):.4f} sigma; largest rank "
        f"{max((r['max_rank'] for r in correct), default=0) + 1}.", "",
        "Gap of the tokens that were not the top-1 (sigma):", "",
        "| bucket | tokens |", "| --- | --- |"]
    edges = [0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, math.inf]
    for lo, hi in zip(edges, edges[1:], strict=False):
        lines.append(f"| ({lo}, {hi}] | {sum(lo < g <= hi for g in off_all)} |")
    failures = [r for r in correct if not r["ok"]]
    if failures:
        lines += ["", "False failures:", ""]
        lines += [f"- {r['variant']} / {r['model']} seed {r['seed']}: {r['message'][:400]}"
                  for r in failures[:20]]
    lines += ["", "## Wrong workers (each must fail on its first request)", "",
              "| fault | model | caught on the first request | caught over all prompts | "
              "smallest max gap of a caught stream (sigma) |", "| --- | --- | --- | --- | --- |"]
    wgroups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in wrong:
        wgroups[(rec["fault"], rec["model"])].append(rec)
    for (fault, model), recs in sorted(wgroups.items()):
        first = [r for r in recs if r["first_request"]]
        caught = [r for r in recs if not r["ok"]]
        lines.append(f"| {fault} | {model} | {sum(not r['ok'] for r in first)}/{len(first)} | "
                     f"{len(caught)}/{len(recs)} | "
                     f"{min((r['max_gap'] for r in caught), default=0.0):.3f} |")
    missed = [r for r in wrong if r["ok"]]
    lines += ["", f"**Wrong streams: {len(wrong)}, passed: {len(missed)}; first requests "
              f"caught: {sum(not r['ok'] for r in wrong if r['first_request'])}/"
              f"{sum(r['first_request'] for r in wrong)}.**"]
    first_ranks = [r["max_rank"] + 1 for r in wrong if r["first_request"]]
    parted = [r for r in wrong if r["parted_at"] is not None]
    lines += ["", f"Where the wrong streams that parted from the reference stand: smallest max "
              f"gap {min((r['max_gap'] for r in parted), default=0.0):.3f} sigma, smallest max "
              f"rank {min((r['max_rank'] + 1 for r in parted), default=0)} (first requests: "
              f"{min(first_ranks, default=0)}); a stream fails when any token is beyond delta "
              "or beyond rank k."]
    if missed:
        lines += ["", "Wrong streams that passed (parted at None: the fault did not change the "
                  "output at all, e.g. CP3's decode positions 1, 2, ... are the right positions "
                  "after a one-token prompt):", ""]
        lines += [f"- {r['fault']} / {r['model']} seed {r['seed']}, prompt {r['prompt']!r}: "
                  f"max gap {r['max_gap']:.3f}, parted at {r['parted_at']}" for r in missed[:20]]
    cost = [r["seconds"] for r in correct]
    lines += ["", "## Cost of the check per correct stream", "",
              f"compare (alignment search + EOS check, reference greedy cached): median "
              f"{_pct(cost, 50):.3f} s, max {max(cost, default=0):.3f} s; forward passes: max "
              f"{max((r['passes'] for r in correct), default=0)}; readings expanded: max "
              f"{max((r['expansions'] for r in correct), default=0)}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    col = sub.add_parser("collect")  # internal: one worker process
    for name in ("--model", "--variant", "--prompts", "--out"):
        col.add_argument(name, required=True)
    col.add_argument("--max-tokens", type=int, required=True)
    col.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--quick", action="store_true", help="a small grid (the test suite's)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS_reference_study.md")
    ap.add_argument("--json", type=Path, default=HERE / "reference_study.json")
    args = ap.parse_args(argv)
    if args.cmd == "collect":
        _collect(args)
        return 0
    from llorch_harness.checks.referencecfg import DEFAULT_DELTA, DEFAULT_TOP_K

    prompts = [*GATE_PROMPTS.values(), *EXTRA_PROMPTS]
    variants, faults, models, seeds = list(VARIANTS), FAULTS, MODELS, args.seeds
    if args.quick:
        prompts, variants, seeds = prompts[:2], variants[:1] + variants[-1:], 1
        models = MODELS[:1]
    with tempfile.TemporaryDirectory(prefix="refstudy-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = study(work, seeds, prompts, args.max_tokens, variants, faults, models)
    meta = {"when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": f"{platform.machine()}, {platform.python_version()}, "
                       f"{os.cpu_count()} cores", "max_tokens": args.max_tokens,
            "prompts": len(prompts), "seeds": seeds}
    args.out.write_text(render(data, meta, DEFAULT_DELTA, DEFAULT_TOP_K), encoding="utf-8")
    args.json.write_text(json.dumps({"meta": meta, **data}), encoding="utf-8")
    bad = sum(not r["ok"] for r in data["correct"]) + sum(r["ok"] for r in data["wrong"]
                                                          if r["first_request"])
    print(f"wrote {args.out}: {len(data['correct'])} correct streams, {len(data['wrong'])} wrong;"
          f" {bad} verdicts against the targets")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
