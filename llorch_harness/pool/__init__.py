"""What runs on a pool.

Paths, catalog, downloads, hf CLI, backends, processes, readiness, workers, local HTTP.
"""
