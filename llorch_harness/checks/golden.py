"""Golden token streams per model and backend, and token-for-token comparison.

Greedy output of one build on one backend should never change; when it does,
the gate must say at which token. Files live at `<dir>/<model_id>/<backend>.json`
so CPU, CUDA and Metal each keep their own truth (they may legitimately diverge
after a common prefix, which `cross_backend_prefixes` measures).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llorch_harness import __version__
from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import atomic_write_text
from llorch_harness.pool.paths import safe_join, validate_model_id

DEFAULT_GOLDEN_DIR = Path("tests_hw/golden")
GOLDEN_FORMAT = 1
_BACKEND_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


@dataclass
class GoldenPrompt:
    prompt: str
    max_tokens: int
    token_texts: list[str]
    text: str


@dataclass
class Golden:
    model_id: str
    backend: str
    prompts: dict[str, GoldenPrompt]
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    harness_version: str = __version__
    worker_binary_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, kept on save

    def to_json(self) -> dict[str, Any]:
        return {
            "format": GOLDEN_FORMAT,
            "model_id": self.model_id,
            "backend": self.backend,
            "prompts": {k: asdict(v) for k, v in sorted(self.prompts.items())},
            "recorded_at": self.recorded_at,
            "harness_version": self.harness_version,
            "worker_binary_sha256": self.worker_binary_sha256,
            **self.extra,
        }


@dataclass(frozen=True)
class Comparison:
    equal: bool
    common_prefix: int
    first_diff_index: int | None
    expected_at: str | None  # None: the expected stream had ended there
    got_at: str | None
    expected_len: int = 0
    got_len: int = 0

    def describe(self) -> str:
        """One sentence: expected vs got, at which token."""
        if self.equal:
            return f"identical ({self.expected_len} tokens)"
        return (
            f"differs at token {self.first_diff_index}: expected {self.expected_at!r}, "
            f"got {self.got_at!r} (common prefix {self.common_prefix}; "
            f"{self.expected_len} tokens expected, {self.got_len} got)"
        )


def _check_backend(backend: str) -> str:
    if not isinstance(backend, str) or not _BACKEND_RE.fullmatch(backend):
        raise HarnessError(f"invalid backend name {backend!r}",
                           "use lower-case letters, digits, '_' and '-' (e.g. cpu, cuda, metal)",
                           exit_code=2)
    return backend


def golden_path(golden_dir: Path, model_id: str, backend: str) -> Path:
    validate_model_id(model_id)
    _check_backend(backend)
    return safe_join(Path(golden_dir), f"{model_id}/{backend}.json")


def _bad(path: Path, why: str) -> HarnessError:
    return HarnessError(f"golden file {path} is not valid: {why}",
                        "fix it, or delete it and re-record with --update-golden")


def _parse(obj: Any, path: Path) -> Golden:
    if not isinstance(obj, dict):
        raise _bad(path, "not a JSON object")
    prompts_raw = obj.get("prompts")
    if not isinstance(prompts_raw, dict):
        raise _bad(path, "`prompts` is not an object")
    prompts: dict[str, GoldenPrompt] = {}
    for name, p in prompts_raw.items():
        toks = p.get("token_texts") if isinstance(p, dict) else None
        if (not isinstance(p, dict) or not isinstance(p.get("prompt"), str)
                or not isinstance(p.get("max_tokens"), int)
                or not isinstance(toks, list) or not all(isinstance(t, str) for t in toks)):
            raise _bad(path, f"prompt {name!r} needs prompt (str), max_tokens (int), "
                             "token_texts (list of str)")
        text = p.get("text")
        prompts[name] = GoldenPrompt(p["prompt"], p["max_tokens"], list(toks),
                                     text if isinstance(text, str) else "".join(toks))
    for key in ("model_id", "backend"):
        if not isinstance(obj.get(key), str):
            raise _bad(path, f"`{key}` missing")
    known = {"format", "model_id", "backend", "prompts", "recorded_at", "harness_version",
             "worker_binary_sha256"}
    return Golden(
        model_id=obj["model_id"], backend=obj["backend"], prompts=prompts,
        recorded_at=str(obj.get("recorded_at", "")),
        harness_version=str(obj.get("harness_version", "")),
        worker_binary_sha256=obj.get("worker_binary_sha256"),
        extra={k: v for k, v in obj.items() if k not in known},
    )


def load_golden(golden_dir: Path, model_id: str, backend: str) -> Golden | None:
    """The recorded golden, None when there is none; a broken file is an error, never ignored."""
    path = golden_path(golden_dir, model_id, backend)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(path, str(exc)) from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise _bad(path, f"JSON error: {exc}") from None
    golden = _parse(obj, path)
    if (golden.model_id, golden.backend) != (model_id, backend):
        raise _bad(path, f"it records {golden.model_id}/{golden.backend}, "
                         f"expected {model_id}/{backend}")
    return golden


def save_golden(golden_dir: Path, golden: Golden) -> Path:
    """Write atomically; returns the path written."""
    path = golden_path(golden_dir, golden.model_id, golden.backend)
    atomic_write_text(path, json.dumps(golden.to_json(), indent=2, ensure_ascii=False) + "\n")
    return path


def compare_tokens(expected: list[str], got: list[str]) -> Comparison:
    prefix = 0
    for a, b in zip(expected, got, strict=False):
        if a != b:
            break
        prefix += 1
    equal = list(expected) == list(got)
    return Comparison(
        equal=equal,
        common_prefix=prefix,
        first_diff_index=None if equal else prefix,
        expected_at=None if equal or prefix >= len(expected) else expected[prefix],
        got_at=None if equal or prefix >= len(got) else got[prefix],
        expected_len=len(expected),
        got_len=len(got),
    )


def golden_backends(golden_dir: Path, model_id: str) -> list[str]:
    """Backends with a golden file for `model_id`, sorted."""
    base = safe_join(Path(golden_dir), validate_model_id(model_id))
    if not base.is_dir():
        return []
    return sorted(p.stem for p in base.glob("*.json") if _BACKEND_RE.fullmatch(p.stem))


def cross_backend_detail(golden_dir: Path, model_id: str) -> dict[tuple[str, str], dict[str, int]]:
    """Per backend pair, per shared prompt (same text and max_tokens): the common prefix."""
    backends = golden_backends(golden_dir, model_id)
    goldens = {b: load_golden(golden_dir, model_id, b) for b in backends}
    out: dict[tuple[str, str], dict[str, int]] = {}
    for b1, b2 in itertools.combinations(sorted(goldens), 2):
        g1, g2 = goldens[b1], goldens[b2]
        if g1 is None or g2 is None:
            continue
        per: dict[str, int] = {}
        for name in sorted(set(g1.prompts) & set(g2.prompts)):
            p1, p2 = g1.prompts[name], g2.prompts[name]
            if (p1.prompt, p1.max_tokens) == (p2.prompt, p2.max_tokens):
                per[name] = compare_tokens(p1.token_texts, p2.token_texts).common_prefix
        if per:
            out[(b1, b2)] = per
    return out


def cross_backend_prefixes(golden_dir: Path, model_id: str) -> dict[tuple[str, str], int]:
    """Per backend pair: the shortest common prefix over the prompts both recorded."""
    return {pair: min(per.values())
            for pair, per in cross_backend_detail(golden_dir, model_id).items()}
