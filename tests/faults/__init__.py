"""Fault-injection suite: the harness must survive a hostile lab (issue 7)."""
