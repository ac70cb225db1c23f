"""Does the worker's greedy output agree with an independent reference implementation?

For each greedy stream: recover the worker's token ids from its text (`tokenalign`),
then hold each against the reference's logits at its position, computed on the prompt
plus the worker's own earlier tokens (teacher forcing, so one early difference does not
condemn every later token). A token passes when it is the reference's top-1, or within
`delta` logits of it and among its top `k` (reduced-precision arithmetic on a GPU may
flip a genuine near-tie). A generation that ended before `max_tokens` must end where
the reference's next token is the worker's EOS id. The reference's own greedy text is
shown beside the worker's, cached in the pool root by model files, prompt, max_tokens
and the reference's identity.

`delta` is a logit gap in units of the standard deviation of the reference's logits at
that position ("sigma"): logit scales differ several-fold between models, so one number
must mean the same on each. Defaults for `delta` and `k` are measured in
`benchmarks/RESULTS_reference.md`: the largest gap the float32 reference shows against
its own bfloat16 and float16 runs on the gate prompts, with a margin.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llorch_harness.checks.referencecfg import DEFAULT_DELTA, DEFAULT_TOP_K
from llorch_harness.checks.tokenalign import Aligner, Alignment, Step, judge, token_bytes
from llorch_harness.checks.workerclient import StreamResult
from llorch_harness.fsutil import atomic_write_text

_TEXT_SHOWN = 200


@dataclass
class Agreement:
    """The verdict on one stream, with what a reader needs to act on a failure."""

    ok: bool
    message: str
    label: str
    details: dict[str, Any] = field(default_factory=dict)


def _hash(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


class ReferenceRunner:
    """A loaded reference plus what every comparison shares: the byte table, the margins,
    the model files' identity and a cache of the reference's own greedy outputs."""

    def __init__(self, reference: Any, *, delta: float = DEFAULT_DELTA, k: int = DEFAULT_TOP_K,
                 model_files: Mapping[str, str] | None = None, cache_dir: Path | None = None
                 ) -> None:
        self.ref = reference
        self.delta = delta
        self.k = k
        self.model_files = dict(model_files or {})
        self.cache_dir = cache_dir
        self.table = token_bytes(reference.tokenizer, reference.vocab_size)
        self.aligner = Aligner(reference.tokenizer, self.table, reference.logits,
                               delta=delta, k=k)

    @property
    def identity(self) -> dict[str, Any]:
        return {**self.ref.identity.to_json(), "delta": self.delta, "k": self.k,
                "model_files": self.model_files}

    def text_of(self, ids: list[int]) -> str:
        return self.ref.tokenizer.decode(ids, skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        raw = self.table[token_id] if 0 <= token_id < len(self.table) else b""
        return raw.decode("utf-8", "replace") if raw else (
            self.ref.tokenizer.id_to_token(token_id) or f"<{token_id}>")

    def greedy(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        """The reference's own greedy continuation (stopping at the worker's EOS), cached."""
        key = _hash({"files": self.model_files, "prompt": prompt, "max_tokens": max_tokens,
                     "reference": self.ref.identity.to_json()})
        path = self.cache_dir / f"{key}.json" if self.cache_dir else None
        if path is not None and path.is_file():
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(cached, dict) and isinstance(cached.get("ids"), list):
                    return cached
            except (OSError, ValueError):
                pass  # a damaged cache entry is recomputed and replaced
        prompt_ids = self.ref.encode(prompt)
        ids: list[int] = []
        while len(ids) < max_tokens:
            nxt = int(self.ref.logits(prompt_ids + ids)[-1].argmax())
            if nxt == self.ref.eos_id:
                break
            ids.append(nxt)
        out = {"ids": ids, "text": self.text_of(ids), "prompt": prompt, "max_tokens": max_tokens}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(out, ensure_ascii=False))
        return out

    def compare(self, res: StreamResult, label: str) -> Agreement:
        """Judge one greedy stream (temperature 0) against the reference."""
        req = res.request_json or {}
        prompt, max_tokens = str(req.get("prompt", "")), int(req.get("max_tokens") or 0)
        reference = self.greedy(prompt, max_tokens)
        details: dict[str, Any] = {
            "prompt": prompt, "max_tokens": max_tokens, "worker_text": res.text,
            "reference_text": reference["text"], "reference": self.identity,
            "first_difference": first_difference(res.text, reference["text"]),
            "side_by_side": side_by_side(res.text, reference["text"]),
        }
        prompt_ids = self.ref.encode(prompt)
        generated = res.tokens_generated
        alignment = self.aligner.align(prompt_ids, res.text, generated)
        details.update({"max_gap": round(alignment.max_gap, 4),
                        "worker_token_ids": alignment.ids,
                        "forward_passes": alignment.forward_passes,
                        "readings_expanded": alignment.expansions,
                        "search_bounded": alignment.bounded})
        problem = (self._token_problem(alignment, label, prompt)
                   or self._count_problem(alignment, generated, label)
                   or self._end_problem(prompt_ids, alignment, max_tokens, label))
        if problem:
            return Agreement(False, problem, label, details)
        return Agreement(True, f"{label}: {len(alignment.ids)} tokens agree with the reference "
                               f"(largest gap {alignment.max_gap:.3f} sigma, delta "
                               f"{self.delta} sigma)", label, details)

    def _describe(self, step: Step) -> str:
        return (f"expected {self.token_text(step.top1_id)!r} (id {step.top1_id}), got "
                f"{self.token_text(step.token_id)!r} (id {step.token_id}), gap "
                f"{step.sigma_gap:.3f} sigma = {step.gap:.3f} logits (delta {self.delta} sigma), "
                f"rank {step.rank + 1} (k {self.k})")

    def _token_problem(self, alignment: Alignment, label: str, prompt: str) -> str | None:
        step = alignment.failure
        if step is None:
            if alignment.complete:
                return None
            what = alignment.failure_text or "the text could not be aligned"
            if alignment.why and alignment.steps:
                what = (f"{alignment.why} after {len(alignment.steps)} tokens; worker's text "
                        f"there {alignment.failure_text!r}")
            return f"{label}: {what}; {self._furthest(alignment)}"
        return (f"{label}: no reading of the worker's text stays within the reference's margin; "
                f"along the furthest, the worker's token at position {step.position} is outside "
                f"the reference's margin: {self._describe(step)}; "
                f"worker's text there {alignment.failure_text!r}; reference's candidates there "
                f"{self._candidates(alignment)}; {self._furthest(alignment)}; prompt "
                f"{prompt[:80]!r}; reference {self.ref.identity.label()}")

    def _candidates(self, alignment: Alignment) -> str:
        return ", ".join(f"{self.token_text(tok)!r} (id {tok}, gap {gap:.3f} sigma)"
                         for tok, gap in alignment.candidates[:max(self.k, 5)])

    def _furthest(self, alignment: Alignment) -> str:
        so_far = self.text_of(alignment.ids)
        bound = " (stopped at the search's bound)" if alignment.bounded else ""
        return (f"reading searched furthest{bound}: {len(alignment.ids)} tokens {alignment.ids}, "
                f"text so far {so_far[-_TEXT_SHOWN:]!r}; search cost {alignment.forward_passes} "
                f"forward passes, {alignment.expansions} readings")

    def _count_problem(self, alignment: Alignment, generated: int | None, label: str
                       ) -> str | None:
        if generated is None or len(alignment.ids) == generated:
            return None
        return (f"{label}: the worker's text spells {len(alignment.ids)} tokens along the "
                f"reference's candidates, its log says {generated} were generated")

    def _end_problem(self, prompt_ids: list[int], alignment: Alignment, max_tokens: int,
                     label: str) -> str | None:
        n = len(alignment.ids)
        if n >= max_tokens:
            return None
        eos = self.ref.eos_id
        text = self.text_of(alignment.ids)
        if eos is None:
            return (f"{label}: the worker stopped after {n} of max_tokens={max_tokens} tokens, "
                    f"but this vocabulary has no EOS id it could have sampled; text {text!r}")
        step = judge(self.ref.logits(prompt_ids + alignment.ids)[-1], eos)
        step.position = n
        if step.sigma_gap <= self.delta and step.rank < self.k:
            return None
        return (f"{label}: the worker stopped (EOS) after {n} of max_tokens={max_tokens} tokens "
                f"where the reference continues: {self._describe(step)}; text so far {text!r}")


def first_difference(worker: str, reference: str) -> int | None:
    """The character index where the two texts part (None when equal)."""
    if worker == reference:
        return None
    n = 0
    for a, b in zip(worker, reference, strict=False):
        if a != b:
            break
        n += 1
    return n


def side_by_side(worker: str, reference: str) -> str:
    """Two lines with the first difference marked by `⟦`."""
    at = first_difference(worker, reference)
    if at is None:
        return f"worker    = reference: {worker!r}"
    return (f"worker:    {worker[:at]!r} ⟦ {worker[at:]!r}\n"
            f"reference: {reference[:at]!r} ⟦ {reference[at:]!r}")
