"""Talking to a worker and judging it, free of pytest.

Client, stream contract, log and error patterns, goldens, inference and reference checks.
"""
