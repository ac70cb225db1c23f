"""The four decoder architectures the reference worker runs: config keys and weight names.

Why one table: Qwen2, Llama, Mistral and Phi-3 are the same pre-norm decoder (RMSNorm,
RoPE, grouped-query attention, SwiGLU MLP); they differ only in which config.json keys
they need, their defaults, biases, fused projections and sliding windows. ``decoder.py``
computes with one layout (q|k|v stacked, gate|up stacked); this module reads each
checkpoint into it:

- qwen2: q/k/v with biases, all 14 keys llorch-candled's Qwen2 loader reads are required;
  sliding window only where ``use_sliding_window`` and layer >= ``max_window_layers``
  (as transformers' ``layer_types``).
- llama: no biases; missing keys take candle's defaults (llama.rs: kv heads = heads,
  rms_norm_eps 1e-5, rope_theta 1e4, 2048 positions, untied).
- mistral: as llama, plus ``sliding_window`` (null or absent: none) on every layer.
- phi3: fused ``qkv_proj`` and ``gate_up_proj`` read as they are, ``partial_rotary_factor``,
  ``sliding_window`` on every layer. llorch-candled at CP3 cannot load Phi-3 (its ``phi``
  is candle's Phi-1/2; ``model_type`` "phi3" is "Unsupported model architecture").

Window semantics are transformers' (query at p sees keys p - window < j <= p).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llorch_harness.lab.refworker.weights import ModelLoadError

__all__ = [
    "QWEN2_REQUIRED_KEYS",
    "SUPPORTED",
    "ArchSpec",
    "DecoderConfig",
    "LayerWeights",
    "canonical_architecture",
    "detect_architecture",
    "model_weights",
    "parse_config",
]

# The keys the llorch-candled Qwen2 loader reads (see the worker contract).
QWEN2_REQUIRED_KEYS: tuple[str, ...] = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
    "sliding_window", "max_window_layers", "tie_word_embeddings", "rope_theta",
    "rms_norm_eps", "use_sliding_window", "hidden_act",
)
_BASE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads")
_COMMON_DEFAULTS: dict[str, Any] = {
    "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "hidden_act": "silu", "sliding_window": None, "use_sliding_window": True,
    "max_window_layers": 0, "partial_rotary_factor": 1.0,
}


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: how it is named in logs and what its config.json must hold."""

    model_type: str  # canonical: qwen2, llama, mistral, phi3
    worker_name: str  # llorch-candled's Model::architecture(): qwen, llama, mistral, phi
    display: str  # its log texts: "Loaded Qwen model", "Qwen forward pass failed"
    required: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    eos_fallback: int | None = None  # None: config.json's eos_token_id, else 2 (llama.rs)
    qkv_bias: bool = False
    fused: bool = False  # Phi-3's qkv_proj and gate_up_proj


SPECS: dict[str, ArchSpec] = {
    "qwen2": ArchSpec("qwen2", "qwen", "Qwen", QWEN2_REQUIRED_KEYS, eos_fallback=151643,
                      qkv_bias=True),
    "llama": ArchSpec("llama", "llama", "Llama", _BASE_KEYS,
                      {"max_position_embeddings": 2048}),
    "mistral": ArchSpec("mistral", "mistral", "Mistral",
                        (*_BASE_KEYS, "num_key_value_heads", "hidden_act",
                         "max_position_embeddings", "rms_norm_eps"), eos_fallback=2),
    "phi3": ArchSpec("phi3", "phi", "Phi", _BASE_KEYS, {"max_position_embeddings": 4096},
                     eos_fallback=50256, fused=True),
}
SUPPORTED: tuple[str, ...] = tuple(SPECS)
_CANONICAL = {"qwen": "qwen2", "qwen2": "qwen2", "llama": "llama", "mistral": "mistral",
              "phi3": "phi3"}


def detect_architecture(raw: Mapping[str, Any]) -> str | None:
    """What llorch-candled's ``detect_architecture`` reports: ``model_type`` lower-cased,
    else the first ``architectures`` entry normalised (llama, mistral, phi, qwen)."""
    model_type = raw.get("model_type")
    if isinstance(model_type, str):
        return model_type.lower()
    archs = raw.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        name = archs[0].lower()
        if "phi3" in name:  # candle says "phi" here; we run Phi-3, not Phi-2
            return "phi3"
        return next((k for k in ("llama", "mistral", "phi", "qwen", "gemma") if k in name), name)
    return None


def canonical_architecture(detected: str | None) -> str | None:
    return _CANONICAL.get(detected or "")


@dataclass(frozen=True)
class DecoderConfig:
    """The subset of ``config.json`` the decoder needs, validated once at load."""

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
    model_type: str = "qwen2"
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    partial_rotary_factor: float = 1.0
    eos_token_id: int = 2  # llama's fallback EOS (config.json's, as llama.rs reads it)

    def __post_init__(self) -> None:
        if not self.head_dim and self.num_attention_heads > 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @property
    def spec(self) -> ArchSpec:
        return SPECS[self.model_type]

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def candle_eos_fallback(self) -> int:
        """The EOS id llorch-candled uses when the tokenizer has no ``"</s>"``."""
        fallback = self.spec.eos_fallback
        return self.eos_token_id if fallback is None else fallback

    def window(self, layer: int) -> int | None:
        """Layer ``layer``'s sliding window (keys it may see, its own included), or None."""
        if self.sliding_window is None or not self.use_sliding_window:
            return None
        return self.sliding_window if layer >= self.max_window_layers else None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: Path | str = "config.json",
                  model_type: str = "qwen2") -> DecoderConfig:
        return parse_config(raw, source, model_type)


def _value(raw: Mapping[str, Any], spec: ArchSpec, key: str) -> Any:
    """``raw[key]``; an absent (or, for a defaulted key, null) value takes the default."""
    if key in spec.required:
        return raw[key]
    value = raw.get(key)
    if value is None and key != "sliding_window":
        return {**_COMMON_DEFAULTS, **spec.defaults}.get(key)
    return value


def parse_config(raw: Mapping[str, Any], source: Path | str, model_type: str) -> DecoderConfig:
    """Validate ``raw`` (config.json) for ``model_type``; errors name ``source``."""
    spec = SPECS[model_type]
    missing = [k for k in spec.required if k not in raw]
    if missing:
        raise ModelLoadError(f"{source}: missing key(s) {', '.join(missing)}")
    try:
        cfg = _build(raw, spec)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{source}: bad value: {exc}") from exc
    _check(cfg, raw, source)
    return cfg


def _build(raw: Mapping[str, Any], spec: ArchSpec) -> DecoderConfig:
    def get(key: str) -> Any:
        return _value(raw, spec, key)

    heads = int(get("num_attention_heads"))
    kv = get("num_key_value_heads")
    window = get("sliding_window")
    eos = raw.get("eos_token_id")
    qwen = spec.model_type == "qwen2"
    return DecoderConfig(
        vocab_size=int(get("vocab_size")), hidden_size=int(get("hidden_size")),
        intermediate_size=int(get("intermediate_size")),
        num_hidden_layers=int(get("num_hidden_layers")), num_attention_heads=heads,
        num_key_value_heads=heads if kv is None else int(kv),
        max_position_embeddings=int(get("max_position_embeddings")),
        rope_theta=float(get("rope_theta")), rms_norm_eps=float(get("rms_norm_eps")),
        tie_word_embeddings=bool(get("tie_word_embeddings")), hidden_act=str(get("hidden_act")),
        use_sliding_window=bool(get("use_sliding_window")),
        sliding_window=None if window is None or spec.model_type == "llama" else int(window),
        max_window_layers=int(get("max_window_layers")) if qwen else 0,
        model_type=spec.model_type, head_dim=int(raw.get("head_dim") or 0),
        partial_rotary_factor=float(get("partial_rotary_factor")) if spec.fused else 1.0,
        eos_token_id=eos if isinstance(eos, int) and not isinstance(eos, bool) else 2,
    )


def _check(cfg: DecoderConfig, raw: Mapping[str, Any], source: Path | str) -> None:
    if cfg.hidden_act not in ("silu", "swish"):
        raise ModelLoadError(f"{source}: hidden_act {cfg.hidden_act!r} is not supported")
    if not raw.get("head_dim") and cfg.hidden_size % cfg.num_attention_heads:
        raise ModelLoadError(f"{source}: hidden_size not divisible by num_attention_heads")
    if cfg.num_key_value_heads <= 0 or cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ModelLoadError(f"{source}: num_attention_heads not divisible by num_key_value_heads")
    sizes = (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers,
             cfg.max_position_embeddings, cfg.head_dim)
    if min(sizes) <= 0 or (cfg.sliding_window is not None and cfg.sliding_window <= 0):
        raise ModelLoadError(f"{source}: sizes must be positive")
    if cfg.rotary_dim <= 0 or cfg.rotary_dim % 2 or cfg.rotary_dim > cfg.head_dim:
        raise ModelLoadError(f"{source}: partial_rotary_factor {cfg.partial_rotary_factor} "
                             "gives no even rotary dimension")
    scaling = raw.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) not in (
            None, "default"):
        raise ModelLoadError(f"{source}: rope_scaling {scaling!r} is not supported")
    for key in ("attention_bias", "mlp_bias"):
        if raw.get(key) and cfg.model_type != "qwen2":
            raise ModelLoadError(f"{source}: {key} true is not supported")


# ---------------------------------------------------------------------------------------
# weights


@dataclass
class LayerWeights:
    """One decoder layer in the decoder's layout (q|k|v rows stacked, gate|up rows stacked)."""

    ln1: np.ndarray
    w_qkv: np.ndarray  # [(H + 2*KV) * hd, D]
    b_qkv: np.ndarray | None
    w_o: np.ndarray  # [D, H*hd]
    ln2: np.ndarray
    w_gate_up: np.ndarray  # [2*I, D]
    w_down: np.ndarray  # [D, I]


Getter = Callable[[str, tuple[int, ...]], np.ndarray]


def _getter(tensors: Mapping[str, np.ndarray]) -> Getter:
    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise ModelLoadError(f"weights: tensor {name} is missing")
        arr = tensors[name]
        if tuple(arr.shape) != shape:
            raise ModelLoadError(
                f"weights: tensor {name} has shape {list(arr.shape)}, expected {list(shape)}"
            )
        return np.ascontiguousarray(arr, dtype=np.float32)

    return get


def _layer(c: DecoderConfig, get: Getter, i: int) -> LayerWeights:
    hd, n_h, n_kv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
    d, inter = c.hidden_size, c.intermediate_size
    p = f"model.layers.{i}."
    a = p + "self_attn."
    if c.spec.fused:
        w_qkv = get(a + "qkv_proj.weight", ((n_h + 2 * n_kv) * hd, d))
        w_gate_up = get(p + "mlp.gate_up_proj.weight", (2 * inter, d))
    else:
        w_qkv = np.concatenate([get(a + "q_proj.weight", (n_h * hd, d)),
                                get(a + "k_proj.weight", (n_kv * hd, d)),
                                get(a + "v_proj.weight", (n_kv * hd, d))])
        w_gate_up = np.concatenate([get(p + "mlp.gate_proj.weight", (inter, d)),
                                    get(p + "mlp.up_proj.weight", (inter, d))])
    b_qkv = None
    if c.spec.qkv_bias:
        b_qkv = np.concatenate([get(a + "q_proj.bias", (n_h * hd,)),
                                get(a + "k_proj.bias", (n_kv * hd,)),
                                get(a + "v_proj.bias", (n_kv * hd,))])
    return LayerWeights(
        ln1=get(p + "input_layernorm.weight", (d,)), w_qkv=w_qkv, b_qkv=b_qkv,
        w_o=get(a + "o_proj.weight", (d, n_h * hd)),
        ln2=get(p + "post_attention_layernorm.weight", (d,)), w_gate_up=w_gate_up,
        w_down=get(p + "mlp.down_proj.weight", (d, inter)),
    )


def model_weights(
    c: DecoderConfig, tensors: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, list[LayerWeights], np.ndarray, np.ndarray]:
    """Embedding, layers, final norm and LM head of a checkpoint (Hugging Face names)."""
    get = _getter(tensors)
    embed = get("model.embed_tokens.weight", (c.vocab_size, c.hidden_size))
    layers = [_layer(c, get, i) for i in range(c.num_hidden_layers)]
    norm = get("model.norm.weight", (c.hidden_size,))
    lm_head = embed if c.tie_word_embeddings else get("lm_head.weight",
                                                      (c.vocab_size, c.hidden_size))
    return embed, layers, norm, lm_head
