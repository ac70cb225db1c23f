"""The decoder the reference worker runs, in numpy (float32), with a KV cache.

Why numpy: the reference worker must run on any CI box without torch, yet compute real
logits so that the harness's determinism and cache-pollution checks mean something. The
maths follows Hugging Face's Qwen2/Llama/Mistral/Phi-3 models (RMSNorm, rotate_half RoPE,
optional partial rotary, grouped-query attention, optional q/k/v biases, optional sliding
window, SwiGLU) so that the oracle tests can compare logits with transformers;
``architectures.py`` maps each checkpoint onto this one layout.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from llorch_harness.lab.refworker.architectures import DecoderConfig, LayerWeights, model_weights

__all__ = ["CandleError", "DecoderModel", "KVCache"]


class CandleError(RuntimeError):
    """A failure the candle forward pass would raise, with candle's own text.

    Only reachable through ``forward(..., position=...)``; llorch-candled wraps it as
    "<Arch> forward pass failed" (the text stays in ``str(err)`` but is never shown there).
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


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(np.square(x), axis=-1, keepdims=True)
    return w * (x / np.sqrt(var + np.float32(eps)))


def _silu(x: np.ndarray) -> np.ndarray:
    # sigmoid(x) = (1 + tanh(x/2)) / 2 never overflows, unlike 1 / (1 + exp(-x)).
    return x * (np.float32(0.5) * (np.float32(1.0) + np.tanh(np.float32(0.5) * x)))


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate((-x[..., half:], x[..., :half]), axis=-1)


def _rope_apply(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """RoPE on the first ``cos.shape[-1]`` dims of each head (all of them but for Phi-3's
    partial rotary); the rest pass through."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    rot = x[..., :r]
    return np.concatenate((rot * cos + _rotate_half(rot) * sin, x[..., r:]), axis=-1)


def _causal_mask(start: int, n: int, window: int | None = None) -> np.ndarray:
    """``[n, start + n]``: 0 where query i (at start + i) may see key j, else -inf:
    j <= start + i, and with a window also j > start + i - window."""
    keys = np.arange(start + n)[None, :]
    queries = (start + np.arange(n))[:, None]
    allowed = keys <= queries
    if window is not None:
        allowed &= keys > queries - window
    return np.where(allowed, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)


class DecoderModel:
    """Weights plus the forward pass; stateless apart from the cache passed in."""

    def __init__(self, config: DecoderConfig, tensors: Mapping[str, np.ndarray]) -> None:
        self.config = config
        self.embed, self.layers, self.norm, self.lm_head = model_weights(config, tensors)
        self.windows = [config.window(i) for i in range(config.num_hidden_layers)]
        rd = config.rotary_dim
        hd_idx = np.arange(0, rd, 2, dtype=np.int64).astype(np.float32) / np.float32(rd)
        self._inv_freq = (
            np.float32(1.0) / np.power(np.float32(config.rope_theta), hd_idx)
        ).astype(np.float32)

    def new_cache(self, capacity: int = 64) -> KVCache:
        c = self.config
        return KVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, capacity)

    def _rope(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        pos = np.arange(start, start + n, dtype=np.float32)
        freqs = np.outer(pos, self._inv_freq).astype(np.float32)
        emb = np.concatenate((freqs, freqs), axis=-1)
        return np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]  # [S, 1, rotary_dim]

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
        masks = {w: _causal_mask(start, n, w) for w in set(self.windows)} if n > 1 else {}
        x = self.embed[ids]  # [S, D]
        for li, layer in enumerate(self.layers):
            h = _rms_norm(x, layer.ln1, self.config.rms_norm_eps)
            x = x + self._attention(li, layer, h, cos, sin, cache, masks.get(self.windows[li]))
            x = x + self._mlp(layer, _rms_norm(x, layer.ln2, self.config.rms_norm_eps))
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

    def _qkv(self, layer: LayerWeights, h: np.ndarray, cos: np.ndarray,
             sin: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Queries ``[S, H, hd]`` and keys/values ``[S, KV, hd]``, RoPE applied."""
        c = self.config
        n = h.shape[0]
        hd, n_h, n_kv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        q_end, k_end = n_h * hd, (n_h + n_kv) * hd
        qkv = h @ layer.w_qkv.T
        if layer.b_qkv is not None:
            qkv = qkv + layer.b_qkv
        q = _rope_apply(qkv[:, :q_end].reshape(n, n_h, hd), cos, sin)
        k = _rope_apply(qkv[:, q_end:k_end].reshape(n, n_kv, hd), cos, sin)
        return q, k, qkv[:, k_end:].reshape(n, n_kv, hd)

    def _attention(self, li: int, layer: LayerWeights, h: np.ndarray, cos: np.ndarray,
                   sin: np.ndarray, cache: KVCache, mask: np.ndarray | None) -> np.ndarray:
        """Attention of one layer over its cache (new keys appended first); ``[S, D]``."""
        c = self.config
        n = h.shape[0]
        hd, n_h, n_kv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        group = n_h // n_kv
        q, k, v = self._qkv(layer, h, cos, sin)
        p0 = cache.lengths[li]
        total = p0 + n
        cache.k[li][:, p0:total] = k.transpose(1, 0, 2)
        cache.v[li][:, p0:total] = v.transpose(1, 0, 2)
        cache.lengths[li] = total
        window = self.windows[li]
        lo = max(0, total - window) if n == 1 and window is not None else 0
        keys = cache.k[li][:, lo:total]  # [KV, T, hd]
        vals = cache.v[li][:, lo:total]
        span = total - lo
        # head h uses kv head h // group (HF repeat_kv): group queries per kv head
        qg = q.reshape(n, n_kv, group, hd).transpose(1, 2, 0, 3).reshape(n_kv, group * n, hd)
        scores = (qg @ keys.transpose(0, 2, 1)) * np.float32(hd**-0.5)  # [KV, G*S, T]
        scores = scores.reshape(n_kv, group, n, span)
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
        att = probs.reshape(n_kv, group * n, span) @ vals  # [KV, G*S, hd]
        att = att.reshape(n_kv, group, n, hd).transpose(2, 0, 1, 3).reshape(n, n_h * hd)
        return att @ layer.w_o.T

    def _mlp(self, layer: LayerWeights, h: np.ndarray) -> np.ndarray:
        """SwiGLU: ``down(silu(gate(h)) * up(h))``, gate and up as one matrix."""
        gu = h @ layer.w_gate_up.T
        inter = self.config.intermediate_size
        return (_silu(gu[:, :inter]) * gu[:, inter:]) @ layer.w_down.T
