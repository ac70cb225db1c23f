"""`llorch-pool status`: one look at the pool (catalog, workers, devices, binaries)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from llorch_harness.cli.common import is_pool, pool_line, pool_paths
from llorch_harness.errors import HarnessError
from llorch_harness.pool import backends
from llorch_harness.pool.catalog import read_catalog
from llorch_harness.pool.paths import PoolPaths
from llorch_harness.pool.workers.listing import list_workers
from llorch_harness.pool.workers.stop import find_orphans


def collect_status(paths: PoolPaths, bin_dir: str | None = None) -> dict[str, Any]:
    """Everything the overview shows, as plain data (also used by the remote `llorch pool`)."""
    catalog = read_catalog(paths)
    detected = backends.detect_backends()
    binaries: dict[str, str | None] = {}
    for name in backends.BACKENDS:
        try:
            binaries[name] = str(backends.find_binary(name, bin_dir))
        except HarnessError:
            binaries[name] = None
    return {
        "pool_root": str(paths.root),
        "is_pool": is_pool(paths),  # False: no .test-models/ or .runtime/ there
        "pool_id": catalog.pool_id,
        "models": [{"id": m.id, "name": m.name, "downloaded": m.downloaded,
                    "size_gb": m.size_gb, "backends": m.backends} for m in catalog.models],
        "workers": [r.to_json() for r in list_workers(paths)],
        "orphans": [p.pid for p in find_orphans(paths)],
        "devices": {name: {"reason": why, **backends.device_info(name, 0)}
                    for name, why in detected.items()},
        "binaries": binaries,
    }


def cmd_status(args: argparse.Namespace) -> int:
    paths = pool_paths(args)
    st = collect_status(paths, args.llorch_bin_dir)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    downloaded = sum(1 for m in st["models"] if m["downloaded"])
    print(pool_line(paths, args))
    print(f"Pool id: {st['pool_id'] or '- (no catalog yet)'}")
    print(f"Models: {len(st['models'])} registered, {downloaded} downloaded")
    for m in st["models"]:
        state = "✅" if m["downloaded"] else "❌"
        print(f"   {state} {m['id']:<15} {m['name'][:30]:<30} {', '.join(m['backends'])}")
    print(f"Workers: {len(st['workers'])} recorded, {len(st['orphans'])} orphan process(es)")
    for r in st["workers"]:
        print(f"   {r['worker_id']:<20} pid {r['pid']!s:<8} port {r['port']!s:<6} "
              f"{r['status']:<9} {r['health']}")
    print("Devices:")
    for name, d in st["devices"].items():
        driver = f", driver {d['driver_version']}" if d.get("driver_version") else ""
        print(f"   {name:<6} {d.get('name') or '?'}{driver} ({d['reason']})")
    print("Worker binaries:")
    for name, path in st["binaries"].items():
        print(f"   {name:<6} {path or 'not found (--llorch-bin-dir DIR or $LLORCH_BIN_DIR)'}")
    return 0
