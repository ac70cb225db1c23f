"""Sizes as CP3 prints them; kept apart from progress.py so listing commands skip tqdm."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """Decimal units, as CP3 prints sizes (1.0 GB = 1e9 bytes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def format_gb(size_gb: float) -> str:
    """CP3 prints `{:.1f} GB`; below 0.1 GB that reads 0.0, so small models show MB."""
    if size_gb >= 0.1 or size_gb <= 0:
        return f"{size_gb:.1f} GB"
    return f"{size_gb * 1000:.1f} MB"
