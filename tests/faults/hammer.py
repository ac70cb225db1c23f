"""Child process for the catalog tests: many `update_catalog` calls as fast as it can.

Usage: python hammer.py POOL_ROOT TAG COUNT [START_FILE]
       python hammer.py --read POOL_ROOT STOP_FILE   (lock-free reader, prints its counts)

Each update adds the model `TAG-<i>` and increments the top-level `counter`
(a read-modify-write that a lost update would show). After each update returns,
the file is re-read without the lock and parsed; then `done <i>` is printed and
flushed, so the parent knows exactly which updates completed. With HAMMER_TRACE=1 it
also prints `writing <bytes>` just before each atomic write, to aim kills inside it.
With START_FILE the process waits until that file exists, so several hammers start at once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import llorch_harness.pool.catalog as catmod
from llorch_harness.pool.catalog import Catalog, ModelEntry, update_catalog
from llorch_harness.pool.paths import PoolPaths

_real_write = catmod.atomic_write_text


def _traced_write(path: Path, text: str) -> None:
    """Say that the real atomic write starts now, so the parent can aim its SIGKILL."""
    print(f"writing {len(text)}", flush=True)
    _real_write(path, text)


def read_loop(root: str, stop: Path) -> int:
    """Parse the catalog without the lock until STOP exists: only whole files may be seen."""
    path = PoolPaths.at(root).catalog_path
    reads = missing = 0
    invalid: list[str] = []
    deadline = time.monotonic() + 600
    while not stop.exists() and time.monotonic() < deadline:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            missing += 1
            time.sleep(0.002)
            continue
        try:
            Catalog.parse(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            invalid.append(f"{len(data)} bytes: {exc}"[:200])
        reads += 1
    print(json.dumps({"reads": reads, "missing": missing, "invalid": invalid}), flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--read":
        return read_loop(argv[1], Path(argv[2]))
    root, tag, n = argv[0], argv[1], int(argv[2])
    start = Path(argv[3]) if len(argv) > 3 else None
    paths = PoolPaths.at(root)
    if os.environ.get("HAMMER_TRACE") == "1":
        catmod.atomic_write_text = _traced_write  # the module's own name, looked up per call
    if start is not None:
        deadline = time.monotonic() + 60
        while not start.exists():
            if time.monotonic() > deadline:
                print("never started", flush=True)
                return 4
            time.sleep(0.005)
    for i in range(n):
        mid = f"{tag}-{i:05d}"

        def change(c: Catalog, mid: str = mid) -> None:
            c.upsert(ModelEntry(id=mid, name=mid, path=f".test-models/{mid}", backends=["cpu"]))
            c.extra["counter"] = int(c.extra.get("counter", 0)) + 1

        update_catalog(paths, change)
        try:
            json.loads(paths.catalog_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            print(f"INVALID after update {i}: {exc}", flush=True)
            return 3
        print(f"done {i}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
