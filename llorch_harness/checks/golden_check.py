"""Check (g): tokens equal the recorded golden outputs of this model and backend.

Why apart from the other checks: goldens are a per-hardware regression baseline with
their own rules (record only output the reference agrees with; across backends only a
common prefix is required), read from and written to the golden store (`golden`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llorch_harness.checks.answer import CheckOutcome, stream_failure
from llorch_harness.checks.golden import (
    Golden,
    GoldenPrompt,
    compare_tokens,
    golden_backends,
    golden_path,
    load_golden,
    save_golden,
)
from llorch_harness.checks.workerclient import StreamResult
from llorch_harness.errors import HarnessError


def _golden_from(model_id: str, backend: str, prompts_results: Mapping[str, StreamResult],
                 worker_binary_sha256: str | None) -> Golden:
    prompts = {}
    for name, res in prompts_results.items():
        req = res.request_json or {}
        prompts[name] = GoldenPrompt(str(req.get("prompt", "")), int(req.get("max_tokens", 0)),
                                     list(res.tokens), res.text)
    return Golden(model_id=model_id, backend=backend, prompts=prompts,
                  worker_binary_sha256=worker_binary_sha256)


def _cross_backend(golden_dir: Path, model_id: str, backend: str,
                   current: Golden, min_common_prefix: int) -> tuple[dict, list[str]]:
    table: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    for other in golden_backends(golden_dir, model_id):
        if other == backend:
            continue
        theirs = load_golden(golden_dir, model_id, other)
        if theirs is None:
            continue
        for name, mine in sorted(current.prompts.items()):
            gp = theirs.prompts.get(name)
            if gp is None or (gp.prompt, gp.max_tokens) != (mine.prompt, mine.max_tokens):
                continue
            cmp = compare_tokens(gp.token_texts, mine.token_texts)
            table.setdefault(other, {})[name] = cmp.common_prefix
            need = min(min_common_prefix, len(gp.token_texts), len(mine.token_texts))
            if cmp.common_prefix < need:
                problems.append(
                    f"{backend} vs {other} golden on prompt {name!r}: common prefix "
                    f"{cmp.common_prefix} tokens, expected at least {need} "
                    f"(min_common_prefix={min_common_prefix}); {cmp.describe()}")
    return table, problems


def check_golden(golden_dir: Path, model_id: str, backend: str,
                 prompts_results: Mapping[str, StreamResult], update: bool,
                 min_common_prefix: int, worker_binary_sha256: str | None = None,
                 reference_problems: list[str] | None = None) -> CheckOutcome:
    """(g) tokens equal the recorded golden of this model and backend (or record it).

    Goldens are a per-hardware regression check on top of the reference, not the source
    of truth: `reference_problems` holds the reference check's disagreements on these
    streams (None when no reference ran). Output that disagrees is never recorded, and a
    missing golden passes when the reference agreed. Across backends only a common prefix
    of `min_common_prefix` tokens is required (CPU and GPU arithmetic may diverge later).
    """
    results = list(prompts_results.values())
    try:
        path = golden_path(Path(golden_dir), model_id, backend)
    except HarnessError as exc:
        return CheckOutcome(False, exc.one_line(), {}, results)
    details: dict[str, Any] = {"golden_path": str(path), "update": update,
                               "token_streams": {n: r.tokens for n, r in prompts_results.items()}}
    broken = [f"prompt {n!r}: {why}" for n, r in prompts_results.items()
              if (why := stream_failure(r)) is not None]
    if broken:
        return CheckOutcome(False, "cannot compare or record golden outputs from failed "
                                   "requests: " + "; ".join(broken), details, results)
    if update and reference_problems:
        return CheckOutcome(False, "refusing to record golden outputs that disagree with the "
                                   "reference implementation: " + "; ".join(reference_problems),
                            details, results)
    current = _golden_from(model_id, backend, prompts_results, worker_binary_sha256)
    try:
        if update:
            save_golden(Path(golden_dir), current)
            verdict_ok = True
            message = f"recorded golden outputs for {len(current.prompts)} prompts at {path}"
        else:
            golden = load_golden(Path(golden_dir), model_id, backend)
            if golden is None:
                return _no_golden(model_id, backend, path, details, results, reference_problems)
            verdict_ok, message = _compare_golden(golden, current, path, details)
        table, problems = _cross_backend(Path(golden_dir), model_id, backend, current,
                                         min_common_prefix)
    except HarnessError as exc:
        return CheckOutcome(False, exc.one_line(), details, results)
    details["cross_backend_prefixes"] = table
    details["min_common_prefix"] = min_common_prefix
    if problems:
        verdict_ok = False
        message = f"{message}. Across backends: " + "; ".join(problems)
    return CheckOutcome(verdict_ok, message, details, results)


def _no_golden(model_id: str, backend: str, path: Path, details: dict[str, Any],
               results: list[StreamResult], reference_problems: list[str] | None) -> CheckOutcome:
    """No golden yet: the reference decides; without one nothing can be said."""
    details["golden_missing"] = True
    if reference_problems is None:
        return CheckOutcome(False, f"no golden outputs for {model_id} on {backend} at {path} and "
                                   "no reference check ran (--reference off): nothing to compare "
                                   "with; record them with --update-golden on a trusted build",
                            details, results, skipped=True)
    if reference_problems:
        return CheckOutcome(False, "no golden outputs yet, and the output disagrees with the "
                                   "reference implementation: " + "; ".join(reference_problems),
                            details, results)
    return CheckOutcome(True, f"no golden outputs for {model_id} on {backend} at {path} yet; the "
                              "output agrees with the reference implementation (record a "
                              "per-hardware regression baseline with --update-golden)",
                        details, results)


def _compare_golden(golden: Golden, current: Golden, path: Path,
                    details: dict[str, Any]) -> tuple[bool, str]:
    problems: list[str] = []
    comparisons: dict[str, str] = {}
    for name in sorted(set(golden.prompts) | set(current.prompts)):
        exp, got = golden.prompts.get(name), current.prompts.get(name)
        if got is None:
            problems.append(f"golden prompt {name!r} was not run")
            continue
        if exp is None:
            problems.append(f"prompt {name!r} has no golden output in {path}")
            continue
        if (exp.prompt, exp.max_tokens) != (got.prompt, got.max_tokens):
            problems.append(f"prompt {name!r}: golden recorded for prompt {exp.prompt!r} with "
                            f"max_tokens={exp.max_tokens}, this run used {got.prompt!r} with "
                            f"max_tokens={got.max_tokens}")
            continue
        cmp = compare_tokens(exp.token_texts, got.token_texts)
        comparisons[name] = cmp.describe()
        if not cmp.equal:
            problems.append(f"prompt {name!r}: {cmp.describe()}")
    details["comparisons"] = comparisons
    details["golden_recorded_at"] = golden.recorded_at
    details["golden_worker_binary_sha256"] = golden.worker_binary_sha256
    if not problems:
        return True, f"tokens equal the golden outputs ({len(comparisons)} prompts, {path})"
    binary = ""
    if (golden.worker_binary_sha256 and current.worker_binary_sha256
            and golden.worker_binary_sha256 != current.worker_binary_sha256):
        binary = (f" The golden was recorded with worker binary sha256 "
                  f"{golden.worker_binary_sha256[:12]}..., this run's is "
                  f"{current.worker_binary_sha256[:12]}...")
    return False, (f"expected the golden outputs of {path} (recorded {golden.recorded_at}), got: "
                   + "; ".join(problems) + "." + binary
                   + " If the change is intended, re-record with --update-golden.")
