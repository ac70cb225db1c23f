"""The reference worker's torch engine: transformers' model on cpu, cuda[:N] or mps.

Why: the numpy engine runs anywhere but only on the CPU, so without a llorch-candled build the
embedded lab had to skip every cuda and metal item. This engine loads the same files through
transformers (the `oracle` extra) onto the device torch sees and plugs into the same loops
(`inference.py`, `Engine.generate`): it exposes the numpy engine's model surface
(`new_cache()`, `forward(ids, cache, position=..., all_logits=...)` returning float32 numpy
logits, `config`) and its tokenizer is the same `tokenizer.json`, so the wire, the pieces and
the logs are the numpy engine's. On `--device cpu` greedy tokens equal the numpy engine's
on the tiny model (tests/test_torch_engine.py).

Decisions:
- float32 on every device: the engine is a reference, and cpu parity needs it.
- `forward(..., position=P)` is candle's `seqlen_offset`: RoPE at P.., keys appended to the
  cache's end; more than one token at a P that is not the cache's length fails with
  candle's mask text (a :class:`CandleError`), as the numpy model does.
- `vram_bytes()` is what torch holds on the device (`torch.cuda.memory_allocated`,
  `torch.mps.current_allocated_memory`); on cpu, the parameters' size.
- The model-altering fault switches (`wrong_rope_base`, `swapped_layers`) are numpy-only.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, cast

import numpy as np
from tokenizers import Tokenizer

from llorch_harness.lab.refworker.architectures import (
    DecoderConfig,
    canonical_architecture,
    detect_architecture,
    parse_config,
)
from llorch_harness.lab.refworker.decoder import CandleError
from llorch_harness.lab.refworker.engine import Engine
from llorch_harness.lab.refworker.weights import ModelLoadError
from llorch_harness.pool.torchdevice import default_device, device_usable, torch_available

ENGINES = ("numpy", "torch")
__all__ = ["ENGINES", "TorchCausalLM", "TorchEngine", "default_device", "device_usable",
           "engine_facts", "engine_for", "load_engine", "parse_device", "torch_available"]


def parse_device(text: str) -> str:
    """`cpu`, `cuda`, `cuda:N` or `mps`, as torch spells them; ValueError otherwise."""
    t = text.strip()
    if t in ("cpu", "cuda", "mps"):
        return t
    if t.startswith("cuda:") and t[5:].isdigit():
        return t
    raise ValueError(f"unknown device {text!r} (cpu, cuda, cuda:N or mps)")


class TorchCache:
    """transformers' DynamicCache plus the length the loops read."""

    def __init__(self, past: Any) -> None:
        self.past = past
        self.length = 0


class TorchCausalLM:
    """A transformers causal LM behind the numpy model's `new_cache`/`forward`."""

    def __init__(self, model: Any, config: DecoderConfig, device: str) -> None:
        import torch

        self._torch = torch
        self.hf = model
        self.config = config
        self.device = torch.device(device)
        # transformers 5 renamed `past_key_values` to `cache` and dropped `cache_position`
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._cache_position = "cache_position" in params

    def new_cache(self, capacity: int = 64) -> TorchCache:
        from transformers import DynamicCache

        return TorchCache(DynamicCache(config=self.hf.config))

    def forward(self, token_ids: Any, cache: TorchCache, *, all_logits: bool = False,
                position: int | None = None) -> np.ndarray:
        """Logits ``[rows, vocab]`` (last row, or every row) of ``token_ids`` after what
        ``cache`` holds; see the module docstring for ``position``."""
        torch = self._torch
        ids = [int(t) for t in token_ids]
        n, length = len(ids), cache.length
        if n == 0:
            raise ValueError("forward() needs at least one token")
        if min(ids) < 0 or max(ids) >= self.config.vocab_size:
            raise ValueError(f"token id out of range 0..{self.config.vocab_size - 1}")
        start = length if position is None else int(position)
        limit = self.config.max_position_embeddings
        if position is not None and (start < 0 or start + n > limit):
            raise CandleError(f"narrow invalid args start + len > dim_len: [{limit}], dim: 0, "
                              f"start: {start}, len:{n}")
        if position is not None and n > 1 and start != length:
            heads = self.config.num_attention_heads
            raise CandleError(f"cannot broadcast [{n}, {n}] to [1, {heads}, {n}, {n + start}]")
        kwargs: dict[str, Any] = {self._cache_kw: cache.past}
        if self._cache_position:  # the keys' slots, whatever RoPE's positions are
            kwargs["cache_position"] = torch.arange(length, length + n, device=self.device)
        with torch.inference_mode():
            out = self.hf(
                input_ids=torch.tensor([ids], dtype=torch.long, device=self.device),
                position_ids=torch.arange(start, start + n, device=self.device)[None, :],
                use_cache=True, logits_to_keep=0 if all_logits else 1, **kwargs,
            )
        cache.past = getattr(out, self._cache_kw)
        cache.length = length + n
        return cast(np.ndarray, out.logits[0].float().cpu().numpy())

    def vram_bytes(self) -> int:
        """What torch holds on the device; on cpu, the parameters' size."""
        torch = self._torch
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        if self.device.type == "mps":
            return int(torch.mps.current_allocated_memory())
        return sum(p.numel() * p.element_size() for p in self.hf.parameters())


def _eos_ids(config: DecoderConfig, raw: dict[str, Any], model_dir: Path) -> frozenset[int]:
    """config's and generation_config's EOS ids plus candle's fallback, as the numpy engine
    takes them."""
    found: set[int] = set()
    for value in (raw.get("eos_token_id"), _generation_eos(model_dir)):
        found |= set(value if isinstance(value, list) else [value] if value is not None else [])
    found.add(config.candle_eos_fallback)
    vocab = config.vocab_size
    return frozenset(i for i in found if isinstance(i, int) and 0 <= i < vocab)


def _generation_eos(model_dir: Path) -> Any:
    if not (model_dir / "generation_config.json").is_file():
        return None
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir, local_files_only=True).eos_token_id
    except Exception:  # a broken generation config only loses its extra EOS ids
        return None


def _config(model_dir: Path) -> tuple[DecoderConfig, dict[str, Any], str | None]:
    """config.json read as the numpy engine reads it (same architectures, same errors)."""
    path = model_dir / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    detected = detect_architecture(raw)
    arch = canonical_architecture(detected)
    if arch is None:
        raise ModelLoadError(f"{path}: unsupported architecture {detected!r}")
    return parse_config(raw, path, arch), raw, detected


class TorchEngine(Engine):
    """`Engine` with a transformers model; `device` as torch spells it."""

    device: str

    @classmethod
    def load(cls, model_path: Path, device: str = "cpu") -> TorchEngine:
        model_dir = Path(model_path)
        model_dir = model_dir.parent if model_dir.is_file() else model_dir
        why = device_usable(device)
        if why is not None:
            raise ModelLoadError(f"torch engine on {device}: {why}")
        tok_path = model_dir / "tokenizer.json"
        if not tok_path.is_file():
            raise ModelLoadError(f"{tok_path}: missing")
        config, raw, detected = _config(model_dir)
        import torch
        import transformers

        try:
            hf: Any = transformers.AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=torch.float32, local_files_only=True)
            hf = hf.to(torch.device(device)).eval()
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # transformers raises many kinds for a bad directory
            first = str(exc).splitlines()[0] if str(exc) else repr(exc)
            raise ModelLoadError(f"{model_dir}: transformers cannot load it: {first}") from exc
        model = TorchCausalLM(hf, config, device)
        engine = cls(cast(Any, model), tokenizer, model_name=model_dir.name,
                     eos_token_ids=_eos_ids(config, raw, model_dir),
                     weight_files=tuple(sorted(model_dir.glob("*.safetensors"))),
                     detected_architecture=detected)
        engine.device = device
        return engine

    def vram_bytes(self) -> int:
        return cast(TorchCausalLM, self.model).vram_bytes()


def load_engine(model_path: Path, engine: str = "numpy", device: str = "cpu") -> Engine:
    """The engine the worker's --engine/--device ask for."""
    if engine == "torch":
        return TorchEngine.load(model_path, parse_device(device))
    if device != "cpu":
        raise ModelLoadError(f"the numpy engine runs on cpu only, not {device} (use --engine "
                             "torch)")
    return Engine.load(model_path)


def engine_for(model: Path, engine: str, torch_device: str | None, backend: str,
               index: int = 0) -> Engine:
    """The worker's --engine/--device: torch on the given device (default: the persona's),
    or numpy, which runs on the CPU whatever persona it plays."""
    if engine == "torch":
        return TorchEngine.load(model, parse_device(torch_device or default_device(backend,
                                                                                   index)))
    return load_engine(model, "numpy", torch_device or "cpu")


def engine_facts(engine: Engine) -> tuple[str, str, int | None]:
    """(engine, device, measured vram_bytes or None) for the logs and /health."""
    if isinstance(engine, TorchEngine):
        return "torch", engine.device, engine.vram_bytes()
    return "numpy", "cpu", None


NUMPY_ONLY_FAULTS = ("wrong_rope_base", "swapped_layers")
