"""`llorch-pool models ...`: catalog editing and downloads."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llorch_harness.choices import check_name
from llorch_harness.cli.common import pool_line, pool_paths
from llorch_harness.errors import HarnessError
from llorch_harness.pool import catalog as cat
from llorch_harness.pool.paths import validate_model_id
from llorch_harness.pool.units import format_gb
from llorch_harness.safetext import term_text


def cmd_download(args: argparse.Namespace) -> int:
    if args.all == bool(args.model_id):
        raise HarnessError("give a model id or --all (not both)",
                           "e.g. llorch-pool models download qwen-0.5b, or --all for CP4's "
                           "models", exit_code=2)
    paths = pool_paths(args)
    out = sys.stderr if args.json else sys.stdout  # --json: stdout holds the JSON only
    line = pool_line(paths, args, writes=True)
    if args.model_id:  # a mistyped id is refused before the pool is named or made
        validate_model_id(args.model_id)
        check_name("model id", args.model_id, cat.known_ids(cat.read_catalog(paths)))
    print(line, file=out, flush=True)
    if args.all:
        from llorch_harness.pool.downloadall import download_all

        outcomes = download_all(paths, force=args.force, keep_free=args.keep_free,
                                stall_timeout=args.stall_timeout, out=out)
        if args.json:
            print(json.dumps({"pool_root": str(paths.root), "models": [
                {"model_id": o.model_id, "state": o.state} for o in outcomes]}, indent=2))
        return 0
    from llorch_harness.pool.download import download_model

    result = download_model(paths, args.model_id, force=args.force,
                            stall_timeout=args.stall_timeout, keep_free=args.keep_free,
                            out=out)
    if args.json:
        print(json.dumps({
            "pool_root": str(paths.root), "model_id": result.model_id,
            "path": str(result.path), "repo": result.repo, "revision": result.revision,
            "size_bytes": result.size_bytes, "files": sorted(result.files),
            "fetched": result.fetched, "already_downloaded": result.already_downloaded,
        }, indent=2))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from llorch_harness.pool.download import verify_model

    paths = pool_paths(args)
    out = sys.stderr if args.json else sys.stdout
    print(pool_line(paths, args), file=out, flush=True)
    result = verify_model(paths, args.model_id, out=out, raise_on_failure=not args.json)
    if args.json:
        print(json.dumps({"pool_root": str(paths.root), "model_id": result.model_id,
                          "path": str(result.path), "ok": result.ok,
                          "checked": result.checked, "problems": result.problems}, indent=2))
    return 0 if result.ok else 1


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
    return "\n".join(term_text(line) for line in lines)  # catalog values: no control bytes


def cmd_catalog(args: argparse.Namespace) -> int:
    paths = pool_paths(args)
    catalog = cat.read_catalog(paths)
    if args.json:  # the catalog file's own document, as llama-orch's llorch-pool reads it
        print(catalog.dumps(), end="")
    else:
        print(pool_line(paths, args))
        print(format_catalog_table(catalog))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    paths = pool_paths(args)
    catalog = cat.read_catalog(paths)
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
    print(pool_line(paths, args))
    print(f"{'ID':<15} {'Repo':<40} {'Registered':<11} {'Downloaded'}")
    for r in rows:
        reg = "yes" if r["registered"] else "no"
        dl = f"yes ({format_gb(r['size_gb'])})" if r["downloaded"] else "no"
        print(term_text(f"{r['id']:<15} {r['repo']:<40} {reg:<11} {dl}"))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    paths = pool_paths(args)
    line = pool_line(paths, args, writes=True)  # before the catalog exists
    entry = cat.register_model(
        paths, args.model_id, name=args.name, repo=args.repo,
        architecture=args.architecture, backends=backends,
    )
    if args.json:
        print(json.dumps({"pool_root": str(paths.root), "model": entry.to_json()}, indent=2))
        return 0
    print(line)
    print(f"✅ Registered {entry.id} ({entry.repo}) at {entry.path}")
    return 0


def cmd_unregister(args: argparse.Namespace) -> int:
    paths = pool_paths(args)
    cat.unregister_model(paths, args.model_id)
    print(pool_line(paths, args))
    print(f"✅ Unregistered {args.model_id} (files left in place)")
    return 0
