"""Qwen2 causal LM in numpy (float32), with a KV cache.

Why numpy: the reference worker must run on any CI box without torch, yet compute
real logits so that the harness's determinism and cache-pollution checks mean something.
The maths follows Hugging Face's ``modeling_qwen2`` (RMSNorm, rotate_half RoPE, GQA with
q/k/v biases, SwiGLU) so that ``tests/test_oracle_transformers.py`` can compare logits.
Sliding-window attention is not implemented (Qwen2.5 ships ``use_sliding_window: false``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llorch_harness.errors import HarnessError


class ModelLoadError(HarnessError):
    """The model directory is incomplete or malformed; the message names the file."""


# The keys the llorch-candled Qwen2 loader reads (see the worker contract).
REQUIRED_CONFIG_KEYS: tuple[str, ...] = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "sliding_window",
    "max_window_layers",
    "tie_word_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "use_sliding_window",
    "hidden_act",
)


@dataclass(frozen=True)
class Qwen2Config:
    """The subset of ``config.json`` the engine needs, validated once at load."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    hidden_act: str
    use_sliding_window: bool
    sliding_window: int | None
    max_window_layers: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: Path | str = "config.json") -> Qwen2Config:
        missing = [k for k in REQUIRED_CONFIG_KEYS if k not in raw]
        if missing:
            raise ModelLoadError(f"{source}: missing key(s) {', '.join(missing)}")
        try:
            cfg = cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=int(raw["hidden_size"]),
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=int(raw["num_attention_heads"]),
                num_key_value_heads=int(raw["num_key_value_heads"]),
                max_position_embeddings=int(raw["max_position_embeddings"]),
                rope_theta=float(raw["rope_theta"]),
                rms_norm_eps=float(raw["rms_norm_eps"]),
                tie_word_embeddings=bool(raw["tie_word_embeddings"]),
                hidden_act=str(raw["hidden_act"]),
                use_sliding_window=bool(raw["use_sliding_window"]),
                sliding_window=(
                    None if raw["sliding_window"] is None else int(raw["sliding_window"])
                ),
                max_window_layers=int(raw["max_window_layers"]),
            )
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"{source}: bad value: {exc}") from exc
        if cfg.hidden_act not in ("silu", "swish"):
            raise ModelLoadError(f"{source}: hidden_act {cfg.hidden_act!r} is not supported")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ModelLoadError(f"{source}: hidden_size not divisible by num_attention_heads")
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ModelLoadError(
                f"{source}: num_attention_heads not divisible by num_key_value_heads"
            )
        if (
            min(cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.max_position_embeddings)
            <= 0
        ):
            raise ModelLoadError(f"{source}: sizes must be positive")
        return cfg


# ---------------------------------------------------------------------------------------
# safetensors reading (own parser: numpy has no bfloat16, so safe_open(framework="numpy")
# cannot load bf16 checkpoints such as Qwen2.5's).

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


# ---------------------------------------------------------------------------------------
# the model


class CandleError(RuntimeError):
    """A failure the candle Qwen2 forward pass would raise, with candle's own text.

    Only reachable through ``forward(..., position=...)``; llorch-candled wraps it as
    "Qwen forward pass failed" (the text stays in ``str(err)`` but is never shown there).
    """


class KVCache:
    """Per-layer keys/values ``[n_kv, capacity, head_dim]``; grows by doubling.

    Each layer has its own length (``lengths``) because candle's cache is per layer and a
    failing candle forward pass leaves layer 0 longer than the others (see ``forward``).
    ``length`` is what every layer holds on the ordinary path.
    """

    def __init__(self, n_layers: int, n_kv: int, head_dim: int, capacity: int = 64) -> None:
        self.lengths = [0] * n_layers
        self._shape = (n_kv, head_dim)
        self.k = [np.zeros((n_kv, capacity, head_dim), np.float32) for _ in range(n_layers)]
        self.v = [np.zeros((n_kv, capacity, head_dim), np.float32) for _ in range(n_layers)]

    @property
    def length(self) -> int:
        """Entries of the longest layer (all layers are equal unless a candle pass failed)."""
        return max(self.lengths, default=0)

    @length.setter
    def length(self, value: int) -> None:
        self.lengths = [value] * len(self.lengths)

    @property
    def capacity(self) -> int:
        return self.k[0].shape[1] if self.k else 0

    def reserve(self, extra: int) -> None:
        need = self.length + extra
        if need <= self.capacity:
            return
        cap = max(need, 2 * self.capacity)
        n_kv, hd = self._shape
        for store in (self.k, self.v):
            for i, old in enumerate(store):
                new = np.zeros((n_kv, cap, hd), np.float32)
                new[:, : self.lengths[i]] = old[:, : self.lengths[i]]
                store[i] = new


@dataclass
class _Layer:
    ln1: np.ndarray
    w_qkv: np.ndarray  # [(H + 2*KV) * hd, D]
    b_qkv: np.ndarray
    w_o: np.ndarray  # [D, H*hd]
    ln2: np.ndarray
    w_gate_up: np.ndarray  # [2*I, D]
    w_down: np.ndarray  # [D, I]


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(np.square(x), axis=-1, keepdims=True)
    return w * (x / np.sqrt(var + np.float32(eps)))


def _silu(x: np.ndarray) -> np.ndarray:
    # sigmoid(x) = (1 + tanh(x/2)) / 2 never overflows, unlike 1 / (1 + exp(-x)).
    return x * (np.float32(0.5) * (np.float32(1.0) + np.tanh(np.float32(0.5) * x)))


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate((-x[..., half:], x[..., :half]), axis=-1)


class Qwen2Model:
    """Weights plus the forward pass; stateless apart from the cache passed in."""

    def __init__(self, config: Qwen2Config, tensors: Mapping[str, np.ndarray]) -> None:
        self.config = config
        c = config
        hd, n_h, n_kv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        d, inter = c.hidden_size, c.intermediate_size

        def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
            if name not in tensors:
                raise ModelLoadError(f"weights: tensor {name} is missing")
            arr = tensors[name]
            if tuple(arr.shape) != shape:
                raise ModelLoadError(
                    f"weights: tensor {name} has shape {list(arr.shape)}, expected {list(shape)}"
                )
            return np.ascontiguousarray(arr, dtype=np.float32)

        self.embed = get("model.embed_tokens.weight", (c.vocab_size, d))
        self.layers: list[_Layer] = []
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            self.layers.append(
                _Layer(
                    ln1=get(p + "input_layernorm.weight", (d,)),
                    w_qkv=np.concatenate(
                        [
                            get(a + "q_proj.weight", (n_h * hd, d)),
                            get(a + "k_proj.weight", (n_kv * hd, d)),
                            get(a + "v_proj.weight", (n_kv * hd, d)),
                        ]
                    ),
                    b_qkv=np.concatenate(
                        [
                            get(a + "q_proj.bias", (n_h * hd,)),
                            get(a + "k_proj.bias", (n_kv * hd,)),
                            get(a + "v_proj.bias", (n_kv * hd,)),
                        ]
                    ),
                    w_o=get(a + "o_proj.weight", (d, n_h * hd)),
                    ln2=get(p + "post_attention_layernorm.weight", (d,)),
                    w_gate_up=np.concatenate(
                        [
                            get(p + "mlp.gate_proj.weight", (inter, d)),
                            get(p + "mlp.up_proj.weight", (inter, d)),
                        ]
                    ),
                    w_down=get(p + "mlp.down_proj.weight", (d, inter)),
                )
            )
        self.norm = get("model.norm.weight", (d,))
        if c.tie_word_embeddings:
            self.lm_head = self.embed
        else:
            self.lm_head = get("lm_head.weight", (c.vocab_size, d))
        hd_idx = np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / np.float32(hd)
        self._inv_freq = (np.float32(1.0) / np.power(np.float32(c.rope_theta), hd_idx)).astype(
            np.float32
        )

    def new_cache(self, capacity: int = 64) -> KVCache:
        c = self.config
        return KVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, capacity)

    def _rope(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        pos = np.arange(start, start + n, dtype=np.float32)
        freqs = np.outer(pos, self._inv_freq).astype(np.float32)
        emb = np.concatenate((freqs, freqs), axis=-1)
        return np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]  # [S, 1, hd]

    def forward(
        self,
        token_ids: np.ndarray | list[int],
        cache: KVCache,
        *,
        all_logits: bool = False,
        position: int | None = None,
    ) -> np.ndarray:
        """Run ``token_ids`` after what ``cache`` holds; return logits (last row or all rows).

        Default (``position=None``): positions continue at ``cache.length`` and the new
        keys/values are appended. ``position=P`` is candle's ``forward(input, seqlen_offset)``:
        RoPE at P, P+1, ...; keys appended at each layer's own end whatever P is; for more
        than one token a causal mask ``[n, n + P]`` that must match the keys' length, else
        :class:`CandleError` (after layer 0 has appended, as candle does); P + n beyond
        ``max_position_embeddings`` is a :class:`CandleError` too. P = ``cache.length`` gives
        the same numbers as the default path.
        """
        ids = self._check_ids(token_ids)
        n = int(ids.shape[0])
        start = cache.length if position is None else int(position)
        if position is not None and (start < 0 or start + n > self.config.max_position_embeddings):
            raise CandleError(
                f"narrow invalid args start + len > dim_len: [{self.config.max_position_embeddings}"
                f", {self.config.head_dim // 2}], dim: 0, start: {start}, len:{n}"
            )
        cache.reserve(n)
        cos, sin = self._rope(start, n)
        # query i sits at absolute position start + i and may see keys 0..start + i
        mask = self._causal_mask(start, n) if n > 1 else None
        x = self.embed[ids]  # [S, D]
        for li, layer in enumerate(self.layers):
            x = self._block(li, layer, x, cos, sin, cache, mask)
        if position is None:
            cache.length = start + n
        if not all_logits:
            x = x[-1:]
        x = _rms_norm(x, self.norm, self.config.rms_norm_eps)
        return (x @ self.lm_head.T).astype(np.float32, copy=False)

    def _check_ids(self, token_ids: np.ndarray | list[int]) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64)
        if int(ids.shape[0]) == 0:
            raise ValueError("forward() needs at least one token")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(f"token id out of range 0..{self.config.vocab_size - 1}")
        return ids

    @staticmethod
    def _causal_mask(start: int, n: int) -> np.ndarray:
        """``[n, start + n]``: 0 where query i may see key j (j <= start + i), else -inf."""
        allowed = np.arange(start + n)[None, :] <= (start + np.arange(n))[:, None]
        return np.where(allowed, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)

    def _block(
        self,
        li: int,
        layer: _Layer,
        x: np.ndarray,
        cos: np.ndarray,
        sin: np.ndarray,
        cache: KVCache,
        mask: np.ndarray | None,
    ) -> np.ndarray:
        """One decoder layer: attention over this layer's cache, then the SwiGLU MLP."""
        c = self.config
        n = x.shape[0]
        hd, n_h, n_kv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        group = n_h // n_kv
        q_end, k_end = n_h * hd, (n_h + n_kv) * hd
        h = _rms_norm(x, layer.ln1, c.rms_norm_eps)
        qkv = h @ layer.w_qkv.T + layer.b_qkv
        q = qkv[:, :q_end].reshape(n, n_h, hd)
        k = qkv[:, q_end:k_end].reshape(n, n_kv, hd)
        v = qkv[:, k_end:].reshape(n, n_kv, hd)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        p0 = cache.lengths[li]
        total = p0 + n
        cache.k[li][:, p0:total] = k.transpose(1, 0, 2)
        cache.v[li][:, p0:total] = v.transpose(1, 0, 2)
        cache.lengths[li] = total
        keys = cache.k[li][:, :total]  # [KV, T, hd]
        vals = cache.v[li][:, :total]
        # head h uses kv head h // group (HF repeat_kv): group queries per kv head
        qg = q.reshape(n, n_kv, group, hd).transpose(1, 2, 0, 3).reshape(n_kv, group * n, hd)
        scores = (qg @ keys.transpose(0, 2, 1)) * np.float32(hd**-0.5)  # [KV, G*S, T]
        scores = scores.reshape(n_kv, group, n, total)
        if mask is not None:
            if mask.shape[-1] != total:
                raise CandleError(
                    f"shape mismatch in broadcast_add, lhs: [1, {n_h}, {n}, {total}], "
                    f"rhs: [1, 1, {n}, {mask.shape[-1]}]"
                )
            scores = scores + mask
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        att = probs.reshape(n_kv, group * n, total) @ vals  # [KV, G*S, hd]
        att = att.reshape(n_kv, group, n, hd).transpose(2, 0, 1, 3).reshape(n, n_h * hd)
        x = x + att @ layer.w_o.T
        h = _rms_norm(x, layer.ln2, c.rms_norm_eps)
        gu = h @ layer.w_gate_up.T
        inter = c.intermediate_size
        return x + (_silu(gu[:, :inter]) * gu[:, inter:]) @ layer.w_down.T
