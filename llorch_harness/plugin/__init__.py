"""The pytest plugin: hooks, fixtures, the lab decision, the report."""
