"""`llorch-pool leases`: which devices of this host are held, and by whom.

Why a command of its own: a run waiting for a device says who holds it in one line; this
lists every device lease of the host (all pool roots, all users) with its holder record,
so a person can find the run or worker that keeps a GPU busy.
"""

from __future__ import annotations

import argparse
import json

from llorch_harness.pool import leases
from llorch_harness.safetext import term_text


def cmd_leases(args: argparse.Namespace) -> int:
    lease_dir = leases.resolve_lease_dir(args.lease_dir)
    states = leases.list_leases(lease_dir, include_free=args.all)
    if args.json:
        print(json.dumps({"lease_dir": str(lease_dir),
                          "leases": [s.to_json() for s in states]}, indent=2))
        return 0
    print(f"Device leases in {term_text(lease_dir)}:")
    if not states:
        print("   (no device is held)" if not args.all else "   (no device was ever leased)")
    for s in states:  # names and records come from a shared directory: shown escaped
        device = term_text((s.holder or {}).get("device") or s.key)
        if s.held:
            print(f"   🔒 {device}: {leases.describe_holder(s.holder)}")
        else:
            print(f"   🔓 {device}: free")
    return 0
