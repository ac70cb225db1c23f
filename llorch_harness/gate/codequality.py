"""Code Quality items of the CP3 gate that read the checkpoint's range: signatures and guides.

Why relative to a range: "Team signatures added" and "Documentation updated" say something
was *added*. A whole-tree search passed a CP1 checkout (issue 18): the stubs carry TEAM-022
from CP1, and a repository of hundreds of markdown files always has one whose name says
"download". Here a signature must sit in lines the range added to a deliverable, and a guide
is a markdown file the range added or changed whose added lines *show* the CP3 commands in
a code block (the troubleshooting guide also quotes a failure those commands report).

The deliverables are the seed's "Deliverables / Code" list (03_CP3_AUTOMATION.md): the
three files the work units name as their location. The guides are its "Documentation".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llorch_harness.gate.gitrange import GitRange, added_lines, changed_files, text_at_head

DELIVERABLES: tuple[str, ...] = (
    "bin/pool-ctl/src/commands/models.rs",
    "bin/pool-ctl/src/commands/worker.rs",
    "bin/llorch-ctl/src/commands/pool.rs",
)
SIGNATURE_RE = re.compile(r"\bTEAM-\d+\b")
MARKDOWN_SUFFIXES = (".md", ".markdown")
SHOWN_LINES = 5  # lines quoted per file in the report

_CLI = r"(?:llorch-pool|llorch\s+pool)\s+"
DOWNLOAD_CMD = re.compile(_CLI + r"models\s+download\b")
SPAWN_CMD = re.compile(_CLI + r"worker\s+spawn\b")
ANY_CP3_CMD = re.compile(_CLI + r"(?:models\s+(?:download|catalog|list)|"
                         r"worker\s+(?:spawn|list|stop|logs))\b")
# Failures the CP3 commands report (the seed's messages and checks): what a troubleshooting
# guide is about.
CP3_FAILURE = re.compile(
    r"not in catalog|not found in catalog|not downloaded|n[o']t support|download failed|"
    r"no model file found|no repo in metadata|worker \S+ not found|still running|"
    r"broadcast|huggingface-cli", re.IGNORECASE)
# A checkpoint plan shows every command too; it is a plan, not a guide.
PLAN_HEADING = re.compile(r"^#{1,6}\s+(?:Checkpoint Gate|Work Units)\b", re.MULTILINE)
_FENCE_RE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")


@dataclass
class ItemResult:
    """An item's verdict, the lines a reader needs, and the evidence for the report."""

    passed: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


def _quote(lines: Sequence[tuple[int, str]], path: str) -> list[str]:
    return [f"{path}:{n}: {text.strip()[:160]}" for n, text in lines[:SHOWN_LINES]]


# --------------------------------------------------------------------------- signatures


def _deliverable(rng: GitRange, path: str, status: str | None) -> dict[str, Any]:
    text = text_at_head(rng, path)
    if text is None:
        return {"state": "missing", "ok": False,
                "why": "does not exist at HEAD" + (" (the range deleted it)" if status else "")}
    if status is None:
        sigs = sorted(set(SIGNATURE_RE.findall(text)))
        return {"state": "untouched", "ok": bool(sigs), "signatures": sigs,
                "why": "untouched by the range" + (f", already signed {', '.join(sigs)}"
                                                   if sigs else " and carries no TEAM-NNN")}
    added = added_lines(rng, path)
    signed = [(n, t) for n, t in added if SIGNATURE_RE.search(t)]
    sigs = sorted({s for _, t in signed for s in SIGNATURE_RE.findall(t)})
    state = "added" if status == "A" else "changed"
    if signed:
        return {"state": state, "ok": True, "signatures": sigs, "lines": _quote(signed, path),
                "why": f"{state} by the range, signed {', '.join(sigs)}"}
    return {"state": state, "ok": False, "signatures": [], "lines": [],
            "why": f"{state} by the range, but none of its {len(added)} added line(s) "
                   "carries a TEAM-NNN signature"}


def check_signatures(rng: GitRange, changed: Mapping[str, str] | None = None) -> ItemResult:
    """Every deliverable the range touched is signed in its added lines; untouched ones still
    carry a signature; and the range touched at least one (else nothing was added)."""
    changed = changed_files(rng) if changed is None else changed
    per = {p: _deliverable(rng, p, changed.get(p)) for p in DELIVERABLES}
    touched = [p for p, d in per.items() if d["state"] in ("added", "changed")]
    bad = [f"{p}: {d['why']}" for p, d in per.items() if not d["ok"]]
    if not touched:
        bad.insert(0, f"the range {rng.describe()} changed none of the CP3 deliverables "
                      f"({', '.join(DELIVERABLES)}): no signature was added")
    lines = [f"{p}: {d['why']}" for p, d in per.items()]
    details = {"range": rng.describe(), "deliverables": per}
    if bad:
        return ItemResult(False, "; ".join(bad), details)
    return ItemResult(True, "; ".join(lines), details)


# --------------------------------------------------------------------------- guides


def fenced_lines(text: str) -> set[int]:
    """1-based numbers of the lines inside fenced code blocks (``` or ~~~)."""
    inside: set[int] = set()
    fence: str | None = None
    for n, line in enumerate(text.splitlines(), start=1):
        m = _FENCE_RE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and m and m.group(1)[0] == fence[0] \
                and len(m.group(1)) >= len(fence) and not line.strip()[len(m.group(1)):]:
            fence = None
        elif fence is not None:
            inside.add(n)
    return inside


@dataclass(frozen=True)
class GuideSpec:
    name: str
    shows: re.Pattern[str]  # a command it shows in a code block
    also: re.Pattern[str] | None = None  # and text it quotes (anywhere in its added lines)


GUIDES: tuple[GuideSpec, ...] = (
    GuideSpec("download guide", DOWNLOAD_CMD),
    GuideSpec("worker spawning guide", SPAWN_CMD),
    GuideSpec("troubleshooting guide", ANY_CP3_CMD, CP3_FAILURE),
)


def _guide_evidence(spec: GuideSpec, path: str, added: list[tuple[int, str]],
                    fenced: set[int]) -> list[str] | None:
    shown = [(n, t) for n, t in added if n in fenced and spec.shows.search(t)]
    if not shown:
        return None
    if spec.also is None:
        return _quote(shown, path)
    quoted = [(n, t) for n, t in added if spec.also.search(t)]
    return _quote(quoted, path) + _quote(shown, path) if quoted else None


def _markdown_changes(rng: GitRange, changed: Mapping[str, str]
                      ) -> tuple[dict[str, tuple[list[tuple[int, str]], set[int]]], list[str]]:
    docs: dict[str, tuple[list[tuple[int, str]], set[int]]] = {}
    plans: list[str] = []
    for path, status in sorted(changed.items()):
        if status == "D" or not path.lower().endswith(MARKDOWN_SUFFIXES):
            continue
        text = text_at_head(rng, path)
        if text is None:
            continue
        if PLAN_HEADING.search(text):
            plans.append(path)
            continue
        docs[path] = (added_lines(rng, path), fenced_lines(text))
    return docs, plans


def check_guides(rng: GitRange, changed: Mapping[str, str] | None = None) -> ItemResult:
    """The range added or changed a download, a worker spawning and a troubleshooting guide."""
    changed = changed_files(rng) if changed is None else changed
    docs, plans = _markdown_changes(rng, changed)
    found: dict[str, dict[str, Any]] = {}
    for spec in GUIDES:
        for path, (added, fenced) in docs.items():
            evidence = _guide_evidence(spec, path, added, fenced)
            if evidence:
                found[spec.name] = {"file": path, "lines": evidence}
                break
    details: dict[str, Any] = {"range": rng.describe(), "guides": found,
                               "markdown_changed": sorted(docs), "plans_ignored": plans}
    missing = [s for s in GUIDES if s.name not in found]
    if missing:
        why = []
        for s in missing:
            need = f"shows `{_example(s)}` in a code block"
            if s.also is not None:
                need += " and quotes a failure the CP3 commands report"
            why.append(f"no {s.name} ({need})")
        scope = (f"{len(docs)} markdown file(s) the range added or changed" if docs
                 else "the range added or changed no markdown file")
        ignored = f"; checkpoint plans ignored: {', '.join(plans)}" if plans else ""
        return ItemResult(False, f"{'; '.join(why)} among {scope} in {rng.describe()}{ignored}",
                          details)
    summary = "; ".join(f"{n}: {v['file']}" for n, v in found.items())
    return ItemResult(True, summary, details)


def _example(spec: GuideSpec) -> str:
    return {"download guide": "llorch-pool models download <model>",
            "worker spawning guide": "llorch-pool worker spawn <backend> --model <model>",
            }.get(spec.name, "llorch-pool worker list|stop|logs ...")
