"""The reference check's choices and default margins, apart from the heavy modules.

Why a module of its own: the gate options (`labs.py`) are read on every pytest start,
and must not import numpy, tokenizers or torch for three constants.
"""

from __future__ import annotations

REFERENCE_CHOICES = ("auto", "transformers", "numpy", "off")
# Measured in benchmarks/RESULTS_reference.md (see agreement.py and docs/gate.md): the
# float32 reference judging its own bfloat16 run's greedy tokens on the gate prompts sees
# gaps up to 0.66 sigma and rank 3 (float16: 0.002 sigma). 1.5 times the largest, rounded.
DEFAULT_DELTA = 1.0  # in standard deviations of the reference's logits at that position
DEFAULT_TOP_K = 5
