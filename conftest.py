"""Repository-level pytest configuration.

The harness itself is a pytest plugin loaded through its `pytest11` entry point,
so nothing here registers it; this file only keeps non-test folders out of
collection.
"""

collect_ignore = ["benchmarks", "docs", "reports", ".venv", "build"]
