"""Independent reference implementations the gate compares a worker's tokens against.

A worker that is deterministic but wrong (decode positions shifted, a wrong RoPE base,
weights in the wrong layer) passes every self-comparison; only an implementation that
shares nothing with it but the downloaded files can tell. Two are offered, both on the
pool's CPU, both reading the same model directory the worker loaded:

- `transformers`: Hugging Face transformers with torch (the `oracle` extra), float32;
- `numpy`: the reference worker's numpy decoder (Qwen2, Llama, Mistral, Phi-3; checked
  against transformers in this repository's tests), for pools without torch.

Both tokenize with the model's own `tokenizer.json` through `tokenizers`, as the worker
does (`encode(prompt, add_special_tokens=True)`), and answer one question: the logits of
every position of a token sequence, in one forward pass.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tokenizers import Tokenizer

from llorch_harness.checks.referencecfg import REFERENCE_CHOICES
from llorch_harness.errors import HarnessError

QWEN_EOS_FALLBACK = 151643  # llorch-candled: the id of "</s>" if the tokenizer has it, else this
# the reference worker's numpy decoder's architectures (lab.refworker.architectures.SUPPORTED;
# named here so the checks import the lab only when the numpy reference is chosen)
_NUMPY_ARCHITECTURES = frozenset({"qwen2", "llama", "mistral", "phi3"})
_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ReferenceIdentity:
    """What a verdict was reached with: shown in the report beside every comparison."""

    implementation: str  # "transformers" | "numpy"
    version: str
    dtype: str

    def label(self) -> str:
        return f"{self.implementation} {self.version} ({self.dtype}, CPU)"

    def to_json(self) -> dict[str, str]:
        return {"implementation": self.implementation, "version": self.version,
                "dtype": self.dtype}


class Reference(Protocol):
    identity: ReferenceIdentity
    tokenizer: Tokenizer
    eos_id: int | None
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def logits(self, ids: list[int]) -> np.ndarray:
        """[len(ids), vocab] float32 logits of one pass over `ids` (row i predicts i + 1)."""
        ...


def worker_eos_id(tokenizer: Tokenizer, vocab_size: int) -> int | None:
    """llorch-candled's single EOS id: `</s>` if the tokenizer has it, else 151643."""
    eos = tokenizer.token_to_id("</s>")
    if eos is None:
        eos = QWEN_EOS_FALLBACK
    return eos if 0 <= eos < vocab_size else None


def model_architecture(model_dir: Path) -> str | None:
    """`model_type` from config.json (None when unreadable)."""
    try:
        raw = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = raw.get("model_type") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def _load_tokenizer(model_dir: Path) -> Tokenizer:
    path = Path(model_dir) / "tokenizer.json"
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception subclass
        raise HarnessError(f"the reference cannot load {path}: {exc}",
                           "check that the model download is complete "
                           "(llorch-pool models verify)") from exc


class _Base:
    tokenizer: Tokenizer
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=True).ids)

    @property
    def eos_id(self) -> int | None:
        return worker_eos_id(self.tokenizer, self.vocab_size)


class NumpyReference(_Base):
    """The reference worker's numpy Qwen2, float32."""

    def __init__(self, model_dir: Path) -> None:
        from llorch_harness import __version__
        from llorch_harness.lab.refworker.engine import Engine

        engine = Engine.load(Path(model_dir))
        self._model = engine.model
        self.tokenizer = _load_tokenizer(model_dir)
        self.vocab_size = engine.vocab_size
        self.identity = ReferenceIdentity("numpy", f"llorch-harness {__version__}", "float32")

    def logits(self, ids: list[int]) -> np.ndarray:
        cache = self._model.new_cache(len(ids))
        return self._model.forward(list(ids), cache, all_logits=True)


class TransformersReference(_Base):
    """Hugging Face transformers on the CPU; `dtype` float32 unless measuring precision."""

    def __init__(self, model_dir: Path, dtype: str = "float32") -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}")
        import torch
        import transformers

        self._torch = torch
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                Path(model_dir), dtype=getattr(torch, dtype), local_files_only=True)
        except Exception as exc:  # transformers raises many kinds for a bad directory
            raise HarnessError(f"transformers cannot load {model_dir}: {exc}",
                               "use --reference numpy, or check the model files") from exc
        self._model = model.eval()
        self.tokenizer = _load_tokenizer(model_dir)
        self.vocab_size = int(model.config.vocab_size)
        version = f"transformers {transformers.__version__}, torch {torch.__version__}"
        self.identity = ReferenceIdentity("transformers", version, dtype)

    def logits(self, ids: list[int]) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            out = self._model(torch.tensor([list(ids)], dtype=torch.long)).logits[0]
        return out.float().numpy()


def transformers_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def pick_implementation(choice: str, architecture: str | None) -> str | None:
    """The implementation `--reference CHOICE` means for a model; None for `off`.

    `auto` takes transformers when importable, else numpy where it knows the architecture.
    """
    if choice not in REFERENCE_CHOICES:
        raise HarnessError(f"unknown reference {choice!r}",
                           f"use one of {', '.join(REFERENCE_CHOICES)}")
    if choice == "off":
        return None
    if choice == "auto":
        if transformers_available():
            return "transformers"
        if architecture in _NUMPY_ARCHITECTURES:
            return "numpy"
        raise HarnessError(
            f"no reference implementation for architecture {architecture!r} on this pool",
            "install the oracle extra (pip install 'llorch-harness[oracle]'), or pass "
            "--reference off to judge the worker only against itself")
    if choice == "transformers" and not transformers_available():
        raise HarnessError("--reference transformers needs torch and transformers",
                           "pip install 'llorch-harness[oracle]', or use --reference numpy")
    if choice == "numpy" and architecture not in _NUMPY_ARCHITECTURES:
        raise HarnessError(f"the numpy reference does not run architecture {architecture!r}",
                           "use --reference transformers")
    return choice


def load_reference(model_dir: Path, choice: str = "auto", dtype: str = "float32") -> Any:
    """A loaded `Reference` for the model directory, or None for `off`."""
    impl = pick_implementation(choice, model_architecture(model_dir))
    if impl is None:
        return None
    if impl == "transformers":
        return TransformersReference(model_dir, dtype)
    return NumpyReference(model_dir)
