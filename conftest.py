"""Repository-level pytest configuration.

The harness itself is a pytest plugin loaded through its `pytest11` entry point, so nothing
here registers it; it acts as the CP3 gate only in gate runs (tests_hw/conftest.py declares
the gate suite, see docs/DESIGN.md "When the pytest plugin acts"). This file only keeps
non-test folders out of collection.
"""

collect_ignore = ["benchmarks", "docs", "reports", ".venv", "build"]
