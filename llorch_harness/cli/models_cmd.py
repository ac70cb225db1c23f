"""`llorch-pool models ...`: catalog editing and downloads."""

from __future__ import annotations

import argparse
import json
from typing import Any

from llorch_harness.cli.common import pool_paths
from llorch_harness.errors import HarnessError
from llorch_harness.pool import catalog as cat
from llorch_harness.pool.units import format_gb


def cmd_download(args: argparse.Namespace) -> int:
    if args.all == bool(args.model_id):
        raise HarnessError("give a model id or --all (not both)",
                           "e.g. llorch-pool models download qwen-0.5b, or --all for CP4's "
                           "models", exit_code=2)
    if args.all:
        from llorch_harness.pool.downloadall import download_all

        download_all(pool_paths(args), force=args.force, keep_free=args.keep_free,
                     stall_timeout=args.stall_timeout)
        return 0
    from llorch_harness.pool.download import download_model

    download_model(pool_paths(args), args.model_id, force=args.force,
                   stall_timeout=args.stall_timeout, keep_free=args.keep_free)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from llorch_harness.pool.download import verify_model

    verify_model(pool_paths(args), args.model_id)
    return 0


def format_catalog_table(catalog: cat.Catalog) -> str:
    lines = [
        f"Model Catalog for {catalog.pool_id if catalog.pool_id is not None else '?'}",
        "=" * 80,
        f"{'ID':<15} {'Name':<30} {'Downloaded':<12} {'Size':<10} {'Backends'}",
        "-" * 80,
    ]
    for m in catalog.models:
        state = "✅" if m.downloaded else "❌"
        size = format_gb(m.size_gb) if m.downloaded else "-"
        lines.append(f"{m.id:<15} {m.name[:30]:<30} {state:<12} {size:<10} {', '.join(m.backends)}")
    if not catalog.models:
        lines.append("(no models registered: llorch-pool models download ID registers known ones)")
    lines.append("=" * 80)
    return "\n".join(lines)


def cmd_catalog(args: argparse.Namespace) -> int:
    catalog = cat.read_catalog(pool_paths(args))
    if args.json:
        print(catalog.dumps(), end="")
    else:
        print(format_catalog_table(catalog))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    catalog = cat.read_catalog(pool_paths(args))
    rows: list[dict[str, Any]] = []
    known = cat.known_models()
    for model_id in sorted(set(known) | {m.id for m in catalog.models}):
        entry = catalog.find(model_id)
        ref = entry or known[model_id]
        rows.append({
            "id": model_id,
            "name": ref.name,
            "repo": ref.repo,
            "registered": entry is not None,
            "downloaded": bool(entry and entry.downloaded),
            "size_gb": entry.size_gb if entry and entry.downloaded else None,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'ID':<15} {'Repo':<40} {'Registered':<11} {'Downloaded'}")
    for r in rows:
        reg = "yes" if r["registered"] else "no"
        dl = f"yes ({format_gb(r['size_gb'])})" if r["downloaded"] else "no"
        print(f"{r['id']:<15} {r['repo']:<40} {reg:<11} {dl}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    entry = cat.register_model(
        pool_paths(args), args.model_id, name=args.name, repo=args.repo,
        architecture=args.architecture, backends=backends,
    )
    print(f"✅ Registered {entry.id} ({entry.repo}) at {entry.path}")
    return 0


def cmd_unregister(args: argparse.Namespace) -> int:
    cat.unregister_model(pool_paths(args), args.model_id)
    print(f"✅ Unregistered {args.model_id} (files left in place)")
    return 0
