"""Forward passes the alignment search spends per correct stream, with the rest's guess
encoded alone (as before) and behind a newline where the tokenizer would prepend its dummy
"▁" (now), on the same streams in one run.

Why: each pass runs the reference over the prompt and the whole reading so far, so a
reading that leaves the guess costs one more pass. A Llama-style SentencePiece tokenizer
prepends "▁" to whatever it encodes; encoded alone mid-text, the rest spelled a space the
text does not have, no reading followed it, and every token cost a pass (O(n^2) work in the
stream's length). Streams: every tiny architecture's reference greedy output (numpy, float32)
for the gate's prompts and the study's, several seeds; both ways must recover the same ids.

Run: ``.venv/bin/python benchmarks/bench_alignment_passes.py [--seeds 3] [--max-tokens 24]``;
writes benchmarks/RESULTS_alignment_passes.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.study_reference import EXTRA_PROMPTS, MODELS  # noqa: E402
from llorch_harness.checks.agreement import ReferenceRunner  # noqa: E402
from llorch_harness.checks.inference_checks import GATE_PROMPTS  # noqa: E402
from llorch_harness.checks.reference import NumpyReference  # noqa: E402
from llorch_harness.checks.tokenalign import Aligner  # noqa: E402


class AloneAligner(Aligner):
    """The guess as it was: the rest encoded alone, whatever it spells."""

    def _canonical(self, rest: bytes, first: bool = False) -> list[int]:
        try:
            text = rest.decode("utf-8")
        except UnicodeDecodeError:
            return []
        return self._encode(text) if text else []


def _passes(aligner: Aligner, prompt_ids: list[int], text: str, n: int) -> tuple[int, list[int],
                                                                                  float]:
    calls = [0]
    inner = aligner.logits

    def counted(ids: list[int]) -> object:
        calls[0] += 1
        return inner(ids)

    aligner.logits = counted  # type: ignore[assignment]
    t0 = time.perf_counter()
    try:
        got = aligner.align(prompt_ids, text, n)
    finally:
        aligner.logits = inner
    return calls[0], got.ids, time.perf_counter() - t0


@dataclass
class Row:
    model: str
    streams: int = 0
    tokens: int = 0
    alone: int = 0  # passes, the rest's guess encoded alone
    now: int = 0  # passes, behind a newline where a dummy prefix would be prepended
    alone_max: int = 0
    now_max: int = 0
    alone_s: float = 0.0
    now_s: float = 0.0
    same_ids: int = 0


def measure(seeds: int, max_tokens: int) -> list[Row]:
    from llorch_harness.lab.tinymodel import build_tiny_model

    prompts = [*GATE_PROMPTS.values(), *EXTRA_PROMPTS]
    rows = []
    with tempfile.TemporaryDirectory(prefix="alignpasses-") as tmp:
        for label, arch, vocab in MODELS:
            row = Row(label)
            for seed in range(seeds):
                out = Path(tmp) / f"{arch}-{vocab}-{seed}"
                build_tiny_model(out, seed=seed, vocab=vocab, architecture=arch)
                ref = NumpyReference(out)
                runner = ReferenceRunner(ref)
                alone = AloneAligner(ref.tokenizer, runner.table, ref.logits,
                                     delta=runner.delta, k=runner.k)
                for prompt in prompts:
                    greedy = runner.greedy(prompt, max_tokens)
                    ids, text = greedy["ids"], greedy["text"]
                    pids = ref.encode(prompt)
                    p_alone, ids_alone, s_alone = _passes(alone, pids, text, len(ids))
                    p_now, ids_now, s_now = _passes(runner.aligner, pids, text, len(ids))
                    row.streams += 1
                    row.tokens += len(ids)
                    row.alone += p_alone
                    row.now += p_now
                    row.alone_max = max(row.alone_max, p_alone)
                    row.now_max = max(row.now_max, p_now)
                    row.alone_s += s_alone
                    row.now_s += s_now
                    row.same_ids += ids_alone == ids_now == ids
            rows.append(row)
            print(f"{label}: {row}", flush=True)
    return rows


def render(rows: list[Row], meta: str) -> str:
    lines = ["# Alignment search: forward passes per correct stream", "", meta, "",
             "Each stream is the numpy reference's own greedy output, read back by the "
             "alignment search twice in one run: with the rest's guess encoded alone (before) "
             "and behind a newline where the tokenizer prepends its dummy prefix (now). "
             "`same ids`: streams where both recovered exactly the generated ids.", "",
             "| model | streams | tokens | passes before (sum / max) | passes now (sum / max) "
             "| passes now / before | search time now / before | same ids |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = r.now / r.alone if r.alone else 0.0
        time_ratio = r.now_s / r.alone_s if r.alone_s else 0.0
        lines.append(f"| {r.model} | {r.streams} | {r.tokens} | {r.alone} / {r.alone_max} | "
                     f"{r.now} / {r.now_max} | {ratio:.2f} | {time_ratio:.2f} | "
                     f"{r.same_ids}/{r.streams} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS_alignment_passes.md")
    args = ap.parse_args(argv)
    rows = measure(args.seeds, args.max_tokens)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = (f"{when}; {platform.machine()}, Python {platform.python_version()}; {args.seeds} "
            f"seed(s), {args.max_tokens} tokens per stream; command: `.venv/bin/python "
            f"benchmarks/bench_alignment_passes.py --seeds {args.seeds} --max-tokens "
            f"{args.max_tokens}`")
    args.out.write_text(render(rows, meta), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
