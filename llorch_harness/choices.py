"""Names a person types, checked against the known ones before anything runs.

Why one module: a model id, a backend, a `-m` marker, a checklist item or a pool name
mistyped in `llorch-pool`, `llorch`, `llorch-harness` or the pytest plugin must cost one
line (what was typed, a "did you mean", the known values) and the same exit status
everywhere, so a script can tell the kinds of mistake apart. difflib's close matches are
enough for names this short. Foundation layer: the plugin and the pool modules use it too.

The exit statuses are in EXIT_CODES (docs/DESIGN.md, "Exit statuses", shows the table; 1
stays "failed", 2 "malformed usage", and pytest's own 0-5 keep their meaning in the plugin).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from llorch_harness.errors import HarnessError

USAGE = 2  # malformed usage (argparse's own status): a missing argument, a bad number
EXIT_CODES: dict[str, int] = {
    "model id": 10,  # not in the catalog and not a built-in model
    "backend": 11,  # not cpu, cuda or metal
    "marker": 12,  # a `-m` name the gate does not define
    "checklist item": 13,  # an item name the checklist does not have
    "pool": 14,  # a pool name the pools file does not list
    "pool root": 15,  # a read-only command pointed at a directory that is not a pool
    "lab": 16,  # the lab asked for (`--lab real`) is not available here
}


def did_you_mean(value: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known names closest to `value` (case-insensitive), best first; [] if none is close."""
    pool = sorted(set(known))
    by_lower = {k.lower(): k for k in pool}
    close = difflib.get_close_matches(value.lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[c] for c in close]


class UnknownName(HarnessError):
    """A typed name that is not among the known ones: one line, exit status of its kind."""

    def __init__(self, kind: str, value: str, known: Iterable[str], *,
                 extra_hint: str | None = None) -> None:
        names = sorted(set(known))
        close = did_you_mean(value, names)
        parts = []
        if close:
            parts.append("did you mean " + " or ".join(close) + "?")
        parts.append(f"known: {', '.join(names)}" if names else "none is known here")
        if extra_hint:
            parts.append(extra_hint)
        super().__init__(f"unknown {kind} {value!r}", "; ".join(parts),
                         exit_code=EXIT_CODES[kind])
        self.kind = kind
        self.value = value
        self.suggestions = close


def check_name(kind: str, value: str, known: Iterable[str],
               extra_hint: str | None = None) -> str:
    """`value` if it is one of `known`, else UnknownName of `kind`."""
    names = list(known)
    if value in names:
        return value
    raise UnknownName(kind, value, names, extra_hint=extra_hint)
