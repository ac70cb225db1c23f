"""The reference check's choices and default margins, apart from the heavy modules.

Why a module of its own: the gate options (`labs.py`) are read on every pytest start,
and must not import numpy, tokenizers or torch for three constants.
"""

from __future__ import annotations

REFERENCE_CHOICES = ("auto", "transformers", "numpy", "off")
# Measured in benchmarks/RESULTS_reference_study.md (issue 25): correct bfloat16/float16
# workers (two oneDNN ISAs, 1 and all threads, deterministic mode, bf16-scale logit noise) on
# every tiny architecture, several seeds and prompts sit up to 1.42 sigma below the float32
# top-1 and at rank 6 (the Qwen2.5-vocabulary model: its 151,936 tokens crowd the top); every
# wrong worker (garbage, shifted or CP3 decode positions, swapped layers, wrong RoPE base, a
# cache never cleared) has a token at rank 10 or worse. delta 2.0 and k 8 leave room on both
# sides; a token must satisfy both.
DEFAULT_DELTA = 2.0  # in standard deviations of the reference's logits at that position
DEFAULT_TOP_K = 8
