"""Random weights with Hugging Face tensor names, and their bytes on disk.

Why hand-written: the tiny models must be byte-identical for a seed (their hashes are
pinned), so the draw order is fixed per architecture and the safetensors file is
serialised by hand (``safetensors.numpy.save`` orders its metadata differently from run to
run, and numpy cannot produce bf16 itself).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import atomic_write_bytes, atomic_write_text

# Weight scales, chosen by experiment: larger-than-usual projections make the random
# network chaotic enough that 32 greedy tokens hold >= 16 distinct ids.
EMBED_STD = 1.0
PROJ_GAIN = 3.0
BIAS_STD = 0.5
NORM_JITTER = 0.1
# Rows of single-byte tokens that are not printable ASCII (UTF-8 fragments, control
# bytes) are shrunk so that greedy output reads mostly as text; sampling still reaches them.
FRAGMENT_EMBED_SCALE = 0.3

MAX_SEED = 2**32 - 1


def check_seed(seed: object) -> int:
    """A seed numpy takes: an integer 0..2**32-1 (a negative one is a usage error)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise HarnessError(f"seed {seed!r} is out of range", f"pass --seed 0..{MAX_SEED}",
                           exit_code=2)
    return seed


def json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def tiny_weights(
    config: Mapping[str, Any],
    seed: int,
    fragment_ids: list[int] | None = None,
    row_scale: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Random float32 weights with the architecture's Hugging Face names, in a fixed order.

    Every architecture draws q, k, v (Qwen2: each with its bias), o, gate, up, down per
    layer in that order; Phi-3 stores q|k|v as ``qkv_proj`` and gate|up as
    ``gate_up_proj``. ``row_scale`` (one factor per vocabulary row) shapes the LM head
    (the tied embedding, or ``lm_head.weight``): large rows are what greedy decoding picks.
    """
    rng = np.random.default_rng(seed)
    d = int(config["hidden_size"])
    vocab = int(config["vocab_size"])

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * (PROJ_GAIN / np.sqrt(cols))).astype(np.float32)

    def vec(n: int, std: float, mean: float = 0.0) -> np.ndarray:
        return (mean + rng.standard_normal(n) * std).astype(np.float32)

    embed = (rng.standard_normal((vocab, d)) * EMBED_STD).astype(np.float32)
    if fragment_ids:
        embed[np.asarray(fragment_ids, dtype=np.int64)] *= np.float32(FRAGMENT_EMBED_SCALE)
    tied = bool(config["tie_word_embeddings"])
    if row_scale is not None and tied:
        embed *= np.asarray(row_scale, dtype=np.float32)[:, None]
    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": embed}
    for i in range(int(config["num_hidden_layers"])):
        w.update(_layer(config, i, mat, vec))
    w["model.norm.weight"] = vec(d, NORM_JITTER, 1.0)
    if not tied:
        w["lm_head.weight"] = mat(vocab, d)
        if row_scale is not None:
            w["lm_head.weight"] *= np.asarray(row_scale, dtype=np.float32)[:, None]
    return w


def _layer(config: Mapping[str, Any], i: int, mat: Any, vec: Any) -> dict[str, np.ndarray]:
    """One layer's tensors, drawn in the order every tiny model has always used."""
    d, inter = int(config["hidden_size"]), int(config["intermediate_size"])
    n_h, n_kv = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    hd = int(config.get("head_dim") or d // n_h)
    bias = config["model_type"] == "qwen2"
    p = f"model.layers.{i}."
    a = p + "self_attn."
    w: dict[str, np.ndarray] = {p + "input_layernorm.weight": vec(d, NORM_JITTER, 1.0)}
    for name, rows in (("q", n_h * hd), ("k", n_kv * hd), ("v", n_kv * hd)):
        w[a + f"{name}_proj.weight"] = mat(rows, d)
        if bias:
            w[a + f"{name}_proj.bias"] = vec(rows, BIAS_STD)
    w[a + "o_proj.weight"] = mat(d, n_h * hd)
    w[p + "post_attention_layernorm.weight"] = vec(d, NORM_JITTER, 1.0)
    w[p + "mlp.gate_proj.weight"] = mat(inter, d)
    w[p + "mlp.up_proj.weight"] = mat(inter, d)
    w[p + "mlp.down_proj.weight"] = mat(d, inter)
    if config["model_type"] == "phi3":
        w[a + "qkv_proj.weight"] = np.concatenate(
            [w.pop(a + f"{x}_proj.weight") for x in ("q", "k", "v")])
        w[p + "mlp.gate_up_proj.weight"] = np.concatenate(
            [w.pop(p + f"mlp.{x}_proj.weight") for x in ("gate", "up")])
    return w


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounding to nearest even (as torch does)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    return ((bits + rounding) >> np.uint32(16)).astype(np.uint16)


def safetensors_bytes(
    tensors: Mapping[str, np.ndarray],
    *,
    dtype: str = "F32",
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Serialise float tensors as F32, F16 or BF16 safetensors, byte-for-byte reproducibly."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        if dtype == "F32":
            data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        elif dtype == "F16":
            data = np.ascontiguousarray(arr, dtype=np.float32).astype("<f2").tobytes()
        elif dtype == "BF16":
            data = _to_bf16_bits(arr).astype("<u2").tobytes()
        else:
            raise ValueError(f"unsupported dtype {dtype}")
        header[name] = {
            "data_offsets": [offset, offset + len(data)],
            "dtype": dtype,
            "shape": [int(n) for n in arr.shape],
        }
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def write_repo(out_dir: Path, files: dict[str, str], weights: dict[str, Any],
               dtype: str = "F32") -> list[Path]:
    """The repo's text files and model.safetensors, each written atomically; their paths."""
    written: list[Path] = []
    for name, text in files.items():
        path = out_dir / name
        atomic_write_text(path, text)
        written.append(path)
    st_path = out_dir / "model.safetensors"
    atomic_write_bytes(st_path, safetensors_bytes(weights, dtype=dtype))
    written.append(st_path)
    return sorted(written)
