"""The reference worker's model names as they were when it ran Qwen2 only.

Why kept: tests, benchmarks and other modules import these names from here. The decoder
now runs four architectures: ``decoder.py`` (the maths), ``architectures.py`` (config
keys and weight names per architecture), ``weights.py`` (safetensors reading).
"""

from __future__ import annotations

from llorch_harness.lab.refworker.architectures import QWEN2_REQUIRED_KEYS, DecoderConfig
from llorch_harness.lab.refworker.decoder import CandleError, DecoderModel, KVCache
from llorch_harness.lab.refworker.weights import (
    ModelLoadError,
    bf16_bits_to_f32,
    load_weights,
    read_safetensors,
)

__all__ = [
    "REQUIRED_CONFIG_KEYS",
    "CandleError",
    "KVCache",
    "ModelLoadError",
    "Qwen2Config",
    "Qwen2Model",
    "bf16_bits_to_f32",
    "load_weights",
    "read_safetensors",
]

REQUIRED_CONFIG_KEYS = QWEN2_REQUIRED_KEYS
Qwen2Config = DecoderConfig  # from_dict(raw, source) parses a Qwen2 config.json
Qwen2Model = DecoderModel
