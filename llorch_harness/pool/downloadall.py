"""`llorch-pool models download --all`: CP4's catalog on one pool, smallest first.

Why apart from download.py: the single download stays one model's story (lock, listing,
space, fetch, verify, record); this module only chooses the models, orders them, runs
each through `download_model` and reports. Which models: every model in the pool's
catalog, plus CP4's four (`CP4_MODELS`), registered on first use as `download ID` does.
The embedded tiny models are test models: only those already in the catalog are taken.

Order (CP4 WU4.1: smallest first): by the bytes each model will take, as its hub listing
gives them (a verified model: its recorded files, no network), else the catalog's
`metadata.expected_size_gb`, else its `size_gb`; ties by id; a model of unknown size last.

A failed model is named in one line and the run goes on with the next: a lab wants every
model that can be downloaded, and a big model refused for disk space must not cost the
smaller ones. Ctrl-C stops the run. The end: one summary line with every model's outcome,
and an error (exit 1, 130 after Ctrl-C) naming each model that is not downloaded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from llorch_harness.errors import HarnessError
from llorch_harness.pool import catalog as cat
from llorch_harness.pool import diskspace, hubdeadline
from llorch_harness.pool.download import DEFAULT_REVISION, download_model, fetch_listing
from llorch_harness.pool.hubfiles import resolve_endpoint, resolve_token, select_files
from llorch_harness.pool.modelfiles import model_dir_for, quick_check, recorded_files
from llorch_harness.pool.paths import PoolPaths, validate_repo_id
from llorch_harness.pool.units import human_bytes
from llorch_harness.redaction import redact

CP4_MODELS = ("qwen-0.5b", "tinyllama", "phi3", "mistral")
INTERRUPTED = 130
RERUN = "llorch-pool models download --all"


@dataclass(frozen=True)
class PlanItem:
    """One model of the run: its entry, the bytes it will take and where that came from."""

    entry: cat.ModelEntry
    size_bytes: int
    source: str  # listed | recorded | expected | catalog | unknown
    downloaded: bool

    @property
    def sort_key(self) -> tuple[bool, int, str]:
        return (self.source == "unknown", self.size_bytes, self.entry.id)


@dataclass(frozen=True)
class RunOptions:
    """What every model's download in the run is given."""

    force: bool
    keep_free: int
    stall_timeout: float
    endpoint: str
    token: str | None


@dataclass(frozen=True)
class Outcome:
    model_id: str
    state: str  # downloaded | already downloaded | failed | not attempted
    error: str = ""


def chosen_models(catalog: cat.Catalog) -> list[cat.ModelEntry]:
    """The catalog's models plus CP4's four (as built in, when not registered yet)."""
    chosen = {m.id: m for m in catalog.models}
    known = cat.known_models()
    for model_id in CP4_MODELS:
        chosen.setdefault(model_id, known[model_id])
    return list(chosen.values())


def _listed_bytes(paths: PoolPaths, entry: cat.ModelEntry, endpoint: str, token: str | None,
                  stall_timeout: float) -> int | None:
    """The listing's total for the files a download takes; None when it cannot be had.

    Any failure only costs the plan its exact size: the model's own download meets the
    same cause again and reports it in its one line."""
    try:
        repo = validate_repo_id(entry.repo)
        with hubdeadline.hub_deadlines(stall_timeout):
            _sha, listing = fetch_listing(repo, DEFAULT_REVISION, endpoint, token)
        return sum(f.size for f in select_files(listing, model_dir_for(paths, entry)))
    except KeyboardInterrupt:
        raise
    except Exception:
        return None


def plan_item(paths: PoolPaths, entry: cat.ModelEntry, endpoint: str, token: str | None,
              stall_timeout: float) -> PlanItem:
    if quick_check(paths, entry):
        files = recorded_files(entry) or {}
        return PlanItem(entry, sum(int(v.get("size", 0)) for v in files.values()),
                        "recorded", True)
    listed = _listed_bytes(paths, entry, endpoint, token, stall_timeout)
    if listed is not None:
        return PlanItem(entry, listed, "listed", False)
    expected = entry.metadata.get("expected_size_gb")
    if isinstance(expected, int | float) and not isinstance(expected, bool) and expected > 0:
        return PlanItem(entry, int(expected * 1e9), "expected", False)
    if entry.size_gb > 0:
        return PlanItem(entry, int(entry.size_gb * 1e9), "catalog", False)
    return PlanItem(entry, 0, "unknown", False)


def make_plan(paths: PoolPaths, endpoint: str, token: str | None,
              stall_timeout: float) -> list[PlanItem]:
    items = [plan_item(paths, e, endpoint, token, stall_timeout)
             for e in chosen_models(cat.read_catalog(paths))]
    return sorted(items, key=lambda i: i.sort_key)


def format_plan(plan: list[PlanItem], force: bool, free: int) -> list[str]:
    """The plan as printed before anything is fetched: order, size, state."""
    todo = sum(i.size_bytes for i in plan if force or not i.downloaded)
    lines = [f"Plan: {len(plan)} models, smallest first; about {diskspace.format_size(todo)} "
             f"to download, {diskspace.format_size(free)} free"]
    width = max(len(i.entry.id) for i in plan)
    for n, item in enumerate(plan, 1):
        size = "size unknown" if item.source == "unknown" else \
            f"{human_bytes(item.size_bytes)} ({item.source})"
        state = ("download again (--force)" if force else "already downloaded") \
            if item.downloaded else "to download"
        lines.append(f"  {n}. {item.entry.id:<{width}}  {size:<22} {state}")
    return lines


def _run_one(paths: PoolPaths, item: PlanItem, opts: RunOptions, out: TextIO,
             err: TextIO) -> Outcome:
    model_id = item.entry.id
    try:
        result = download_model(
            paths, model_id, force=opts.force, endpoint=opts.endpoint, token=opts.token,
            out=out, stall_timeout=opts.stall_timeout, keep_free=opts.keep_free)
    except (HarnessError, KeyboardInterrupt) as exc:
        line = exc.one_line() if isinstance(exc, HarnessError) else "interrupted"
        out.flush()
        print(redact(f"❌ {model_id} failed: {line}"), file=err, flush=True)
        stopped = not isinstance(exc, HarnessError) or exc.exit_code == INTERRUPTED
        return Outcome(model_id, "failed", "interrupted" if stopped else line)
    return Outcome(model_id, "already downloaded" if result.already_downloaded
                   else "downloaded")


def run_plan(paths: PoolPaths, plan: list[PlanItem], opts: RunOptions, out: TextIO,
             err: TextIO) -> list[Outcome]:
    """Each model in order; a failure is reported and the next one runs; Ctrl-C stops."""
    outcomes: list[Outcome] = []
    for n, item in enumerate(plan, 1):
        print(f"[{n}/{len(plan)}] {item.entry.id}", file=out, flush=True)
        outcome = _run_one(paths, item, opts, out, err)
        outcomes.append(outcome)
        if outcome.error == "interrupted":
            outcomes += [Outcome(i.entry.id, "not attempted") for i in plan[n:]]
            break
    return outcomes


def summary_line(outcomes: list[Outcome]) -> str:
    return "Summary: " + "; ".join(f"{o.model_id} {o.state}" for o in outcomes)


def download_all(paths: PoolPaths, *, force: bool = False,
                 keep_free: int = diskspace.DEFAULT_KEEP_FREE,
                 stall_timeout: float = hubdeadline.DEFAULT_STALL_S,
                 endpoint: str | None = None, token: str | None = None,
                 out: TextIO | None = None, err: TextIO | None = None) -> list[Outcome]:
    """Plan, download each, summarise; raises one HarnessError if any model is missing."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    endpoint_url = resolve_endpoint(endpoint)  # a bad HF_ENDPOINT stops the run at once
    tok = resolve_token(token)
    plan = make_plan(paths, endpoint_url, tok, stall_timeout)
    for line in format_plan(plan, force, diskspace.free_bytes(paths.models_dir)):
        print(line, file=out)
    opts = RunOptions(force, keep_free, stall_timeout, endpoint_url, tok)
    outcomes = run_plan(paths, plan, opts, out, err)
    print(summary_line(outcomes), file=out, flush=True)
    missing = [o.model_id for o in outcomes if o.state in ("failed", "not attempted")]
    if missing:
        interrupted = any(o.error == "interrupted" for o in outcomes)
        raise HarnessError(
            f"{len(missing)} of {len(outcomes)} models not downloaded: {', '.join(missing)}"
            + (" (interrupted)" if interrupted else ""),
            f"the lines above say why; then run: {RERUN} (verified models are skipped)",
            exit_code=INTERRUPTED if interrupted else 1,
        )
    return outcomes
