"""Throughput of the reference worker's numpy engine; writes benchmarks/RESULTS_refworker.md.

Why: the harness's timeouts for the reference worker must fit its real speed, and the
KV cache must keep decode cost flat in the prompt length. Measured on the tiny model and
on random bf16 weights of Qwen2.5-0.5B's shape (no download needed).

Run: ``.venv/bin/python benchmarks/bench_refworker.py [--skip-large] [--out PATH]``
Not run by the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llorch_harness.fsutil import atomic_write_bytes, atomic_write_text
from llorch_harness.lab.refworker.engine import Engine, GenerationParams
from llorch_harness.lab.tinymodel import (
    _json_text,
    build_tiny_model,
    corpus_text,
    safetensors_bytes,
)

QWEN05_SHAPE = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
}
PROMPT_LENGTHS = (16, 64, 256)


def build_qwen05_shape(out_dir: Path, tiny_dir: Path, seed: int = 0) -> float:
    """Random bf16 weights in Qwen2.5-0.5B's shape, with the tiny tokenizer; returns GB."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg.update(QWEN05_SHAPE)
    cfg.update(max_window_layers=24, sliding_window=32768, torch_dtype="bfloat16")
    atomic_write_text(out_dir / "config.json", _json_text(cfg))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(tiny_dir / name, out_dir / name)
    rng = np.random.default_rng(seed)
    d, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd

    def mat(rows: int, cols: int) -> np.ndarray:
        return rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(cols**-0.5)

    shard: dict[str, np.ndarray] = {"model.embed_tokens.weight": mat(v, d)}
    shard["model.norm.weight"] = np.ones(d, np.float32)
    total = 0
    n_layers = cfg["num_hidden_layers"]
    # two shards, like a real multi-file checkpoint
    for part, layers in enumerate((range(0, n_layers // 2), range(n_layers // 2, n_layers))):
        for i in layers:
            p = f"model.layers.{i}."
            shard[p + "input_layernorm.weight"] = np.ones(d, np.float32)
            shard[p + "post_attention_layernorm.weight"] = np.ones(d, np.float32)
            shard[p + "self_attn.q_proj.weight"] = mat(d, d)
            shard[p + "self_attn.q_proj.bias"] = np.zeros(d, np.float32)
            for x in "kv":
                shard[p + f"self_attn.{x}_proj.weight"] = mat(kv, d)
                shard[p + f"self_attn.{x}_proj.bias"] = np.zeros(kv, np.float32)
            shard[p + "self_attn.o_proj.weight"] = mat(d, d)
            shard[p + "mlp.gate_proj.weight"] = mat(inter, d)
            shard[p + "mlp.up_proj.weight"] = mat(inter, d)
            shard[p + "mlp.down_proj.weight"] = mat(d, inter)
        data = safetensors_bytes(shard, dtype="BF16")
        atomic_write_bytes(out_dir / f"model-{part + 1:05d}-of-00002.safetensors", data)
        total += len(data)
        shard = {}
    return total / 1e9


def prompt_of(engine: Engine, n_tokens: int) -> str:
    """Text from the corpus that encodes to about ``n_tokens`` tokens."""
    ids = engine.encode(corpus_text() * 4)[:n_tokens]
    return engine.tokenizer.decode(ids)


def measure(engine: Engine, decode_tokens: int, repeats: int = 3) -> list[dict[str, float]]:
    """Median of ``repeats`` runs per prompt length: the CPUs are shared, single runs jitter."""
    rows = []
    engine.generate("Hello", GenerationParams(max_tokens=2, temperature=0.0))  # warm-up
    params = GenerationParams(max_tokens=decode_tokens, temperature=0.0)
    for n in PROMPT_LENGTHS:
        prompt = prompt_of(engine, n)
        runs = [engine.generate(prompt, params) for _ in range(repeats)]
        prefill = float(np.median([r.prefill_seconds for r in runs]))
        k = len(runs[0].token_ids)
        decode = float(np.median([r.decode_seconds for r in runs]))
        rows.append(
            {
                "prompt_tokens": runs[0].prompt_tokens,
                "prefill_s": prefill,
                "prefill_tps": runs[0].prompt_tokens / prefill,
                "decode_tokens": k,
                "decode_ms_per_token": 1000 * decode / max(k, 1),
                "decode_tps": k / decode,
            }
        )
        print(f"  {rows[-1]}", flush=True)
    return rows


def table(title: str, rows: list[dict[str, float]], extra: str) -> str:
    out = [f"## {title}", "", extra, ""]
    out.append(
        "| prompt tokens | prefill ms | prefill tok/s | decoded tokens | decode ms/token "
        "| decode tok/s |"
    )
    out.append("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        out.append(
            f"| {r['prompt_tokens']} | {1000 * r['prefill_s']:.1f} | {r['prefill_tps']:.0f} "
            f"| {r['decode_tokens']} | {r['decode_ms_per_token']:.2f} | {r['decode_tps']:.1f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS_refworker.md"))
    ap.add_argument("--skip-large", action="store_true", help="tiny model only")
    ap.add_argument("--large-decode-tokens", type=int, default=16)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench-refworker-") as tmp:
        tiny_dir = Path(tmp) / "tiny-qwen"
        build_tiny_model(tiny_dir, seed=0)
        print("tiny model", flush=True)
        tiny = Engine.load(tiny_dir)
        sections.append(
            table(
                "Tiny model (64 wide, 2 layers, f32, ~0.5 MB)",
                measure(tiny, 64),
                "64 greedy tokens per prompt length.",
            )
        )
        if not args.skip_large:
            big_dir = Path(tmp) / "qwen05-shape"
            t0 = time.perf_counter()
            gb = build_qwen05_shape(big_dir, tiny_dir)
            t1 = time.perf_counter()
            big = Engine.load(big_dir)
            t2 = time.perf_counter()
            print(f"0.5B shape: built {gb:.2f} GB in {t1 - t0:.1f}s, loaded in {t2 - t1:.1f}s")
            sections.append(
                table(
                    "Qwen2.5-0.5B shape (hidden 896, 24 layers, 14/2 heads, vocab 151936)",
                    measure(big, args.large_decode_tokens),
                    f"Random bf16 weights in 2 shards ({gb:.2f} GB on disk), computed in f32. "
                    f"Load (bf16 -> f32): {t2 - t1:.1f} s. "
                    f"{args.large_decode_tokens} greedy tokens per prompt length.",
                )
            )
    cmd = " ".join([".venv/bin/python", "benchmarks/bench_refworker.py", *(argv or sys.argv[1:])])
    header = [
        "# Reference worker (numpy Qwen2) throughput",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.platform()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared with other jobs while measured)",
        f"- python {platform.python_version()}, numpy {np.__version__}",
        f"- command: `{cmd}`",
        f"- total runtime: {time.perf_counter() - started:.0f} s",
        "",
        "Each row is the median of 3 runs. Prefill is one forward pass over the prompt;",
        "decode ms/token is the decode wall time",
        "(one cached forward pass plus sampling per token) divided by the tokens produced.",
        "With the KV cache, decode cost should grow only slowly with the prompt length.",
        "",
        "",
    ]
    atomic_write_text(args.out, "\n".join(header) + "\n".join(sections))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
