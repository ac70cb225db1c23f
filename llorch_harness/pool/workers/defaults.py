"""The numbers `worker ...` commands default to, in a module light enough for `llorch`
(which declares the same options, see cli/pool_commands.py) to import without psutil."""

from __future__ import annotations

BASE_PORT = 8000  # a worker's port: BASE_PORT + gpu index (as CP3)
WORKER_KINDS = ("llorch", "reference")
LOG_TAIL_LINES = 40
# SIGINT grace for a running worker: longer than a generation, because llorch-candled is
# single-threaded and handles SIGINT only once the generation in progress has ended.
STOP_GRACE_S = 30.0
FAILED_START_GRACE = 2.0  # SIGINT grace for a worker that never got ready
REAP_GRACE_S = 5.0
READY_TIMEOUT_S = 120.0  # real models load slowly
