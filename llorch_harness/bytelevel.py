"""GPT-2's byte-level BPE table: the one copy the tiny model, the vocabulary and the checks use.

Why a foundation module: the lab builds tokenizers with it and the checks map a worker's
pieces back to bytes with it; the checks may not import the lab, so the table lives
below both (pure data, no imports).
"""

from __future__ import annotations


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by every ByteLevel BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}
