"""Local Hugging Face hub: a real HTTP server over a directory, with fault injection.

Why: the harness must prove that downloads, resumes and sha256 checks work without the
real Hub (unreachable from test machines). This server speaks the subset of the Hub
protocol that `huggingface_hub` 2.4 (`snapshot_download`, `hf download`) uses over plain
HTTP, and lets tests break it on purpose (dropped connections, corrupted bytes, 5xx,
404s, stalls). It never sends Xet headers, so clients always use plain HTTP.

Layout served: every `ROOT/ORG/NAME/` directory is the model repo `ORG/NAME` (files may
sit in subfolders; dot-directories such as `.cache` are ignored). Revisions: `main` and
the repo sha (sha1 over the sorted (path, git blob oid) list, so it changes with content).

Parts: `localhub` (LocalHub: lifecycle, request log), `server` (the HTTP handler),
`routes` (what a URL means, what an answer holds), `repo` (the repository model and its
hashes), `faults` (the fault rules), `records` (the request log's records). The
`llorch-harness hub serve` command lives in `cli.hub_cmd`. Stdlib only.
"""

from __future__ import annotations

from llorch_harness.lab.hub.faults import HubFaults
from llorch_harness.lab.hub.localhub import DEFAULT_PAGE_SIZE, LocalHub, build_embedded_hub_root
from llorch_harness.lab.hub.records import RequestRecord
from llorch_harness.lab.hub.repo import is_lfs_path

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "HubFaults",
    "LocalHub",
    "RequestRecord",
    "build_embedded_hub_root",
    "is_lfs_path",
]
