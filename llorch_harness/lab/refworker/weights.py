"""The model directory's files for the reference worker: which safetensors files (shards,
index), each tensor as float32 numpy, the JSON files.

Why our own parser: numpy has no bfloat16, so ``safe_open(framework="numpy")`` cannot load
bf16 checkpoints (Qwen2.5, TinyLlama, Phi-3 and Mistral all ship bf16). Errors name the
file, as llorch-candled's load errors do.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from llorch_harness.errors import HarnessError

__all__ = [
    "ModelLoadError",
    "bf16_bits_to_f32",
    "load_weights",
    "read_json_object",
    "read_safetensors",
    "weight_files",
]


class ModelLoadError(HarnessError):
    """The model directory is incomplete or malformed; the message names the file."""


_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "F64": np.dtype("<f8"),
}


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the high half of a float32: shift the 16 bits up and reinterpret."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def read_safetensors(path: Path, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read tensors (all, or ``names``) of one file as float32 arrays."""
    wanted = None if names is None else set(names)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ModelLoadError(f"{path}: not a safetensors file (too short)")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > size - 8 or hlen > 100_000_000:
                raise ModelLoadError(f"{path}: not a safetensors file (bad header length)")
            try:
                header = json.loads(fh.read(hlen))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ModelLoadError(f"{path}: bad safetensors header: {exc}") from exc
            if not isinstance(header, dict):
                raise ModelLoadError(f"{path}: bad safetensors header")
            base = 8 + hlen
            out: dict[str, np.ndarray] = {}
            for name, info in sorted(header.items(), key=lambda kv: str(kv[0])):
                if name == "__metadata__" or (wanted is not None and name not in wanted):
                    continue
                out[name] = _read_tensor(fh, path, name, info, base, size)
            return out
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc}") from exc


def _read_tensor(fh: Any, path: Path, name: str, info: Any, base: int, size: int) -> np.ndarray:
    try:
        dtype_name = info["dtype"]
        shape = tuple(int(d) for d in info["shape"])
        start, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: bad header entry for {name}") from exc
    dtype = _DTYPES.get(dtype_name)
    if dtype is None:
        raise ModelLoadError(f"{path}: tensor {name} has unsupported dtype {dtype_name}")
    count = int(np.prod(shape, dtype=np.int64))
    if end - start != count * dtype.itemsize or start < 0 or base + end > size:
        raise ModelLoadError(f"{path}: tensor {name} has bad data offsets")
    fh.seek(base + start)
    raw = np.frombuffer(fh.read(end - start), dtype=dtype, count=count).reshape(shape)
    if dtype_name == "BF16":
        return np.ascontiguousarray(bf16_bits_to_f32(raw))
    return raw.astype(np.float32)


def load_weights(files: list[Path]) -> dict[str, np.ndarray]:
    """Merge all shards; a tensor present in two shards is an error (ambiguous)."""
    merged: dict[str, np.ndarray] = {}
    for path in files:
        for name, arr in read_safetensors(path).items():
            if name in merged:
                raise ModelLoadError(f"{path}: tensor {name} also appears in another shard")
            merged[name] = arr
    return merged


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object file of the model directory (config.json, the shard index, ...)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def weight_files(path: Path) -> tuple[Path, list[Path]]:
    """The model directory and its safetensors files, as llorch-candled resolves them."""
    if not path.exists():
        raise ModelLoadError(f"{path}: model path does not exist")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelLoadError(f"{path}: not a .safetensors file")
        return path.parent, [path]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index}: no weight_map")
        names = sorted({str(name) for name in weight_map.values()})
        for name in names:
            if Path(name).name != name or name in ("", ".", ".."):
                raise ModelLoadError(f"{index}: shard name {name!r} is not a plain file name")
        files = [path / name for name in names]
        for f in files:
            if not f.is_file():
                raise ModelLoadError(f"{f}: shard listed in {index.name} is missing")
        return path, files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: no *.safetensors weight files")
    return path, files
