"""The Hub protocol's shapes, as plain functions: request targets, ranges, JSON answers.

Why apart from the HTTP handler: these decide what a URL means and what an answer holds,
with no socket in sight, so the handler only sends what they return. The subset is what
`huggingface_hub` 2.4 uses: model info (`/api/models/ORG/NAME[/revision/REV]`), the tree
(`/api/models/ORG/NAME/tree/REV[/PATH]`, paginated) and file bodies
(`/ORG/NAME/resolve/REV/PATH`).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from llorch_harness.lab.hub.repo import NAME_RE, Repo, valid_component

HOST_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,300}$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class BadTarget(Exception):
    """The request target is not an absolute path, could escape the root, or is malformed."""


@dataclass(frozen=True)
class Target:
    """What a request asks for. `route`: info | tree | resolve | telemetry | unknown."""

    route: str
    repo_id: str | None
    rev: str | None
    rel: str | None  # the repo-relative path (tree folder or resolved file)
    query: str
    url_path: str  # decoded

    @property
    def fault_targets(self) -> list[str]:
        """What fault globs match: the URL path, the file path, and ORG/NAME/FILE."""
        out = [self.url_path]
        if self.repo_id is not None and self.rel is not None:
            out += [self.rel, f"{self.repo_id}/{self.rel}"]
        return out


def _decode(raw: str) -> list[str]:
    """Percent-decode one raw URL segment into validated path components."""
    parts = unquote(raw, errors="strict").split("/")
    if not all(valid_component(p) for p in parts):
        raise BadTarget(raw)
    return parts


def parse_target(path: str) -> Target:
    """The request line's target (`/a/b?q`) as a Target; BadTarget names what is wrong."""
    raw_path, _, query = path.partition("?")
    if not raw_path.startswith("/"):
        raise BadTarget("request target must be an absolute path")
    raw = raw_path[1:].split("/")
    if raw and raw[-1] == "" and len(raw) > 1:
        raw.pop()  # tolerate one trailing slash
    try:
        if "\\" in raw_path:
            raise BadTarget(raw_path)
        segs = [_decode(r) for r in raw]
    except (BadTarget, UnicodeDecodeError):
        raise BadTarget("invalid path") from None
    url_path = "/" + "/".join(p for s in segs for p in s)
    route, repo_id, rev, rel = classify(raw, segs)
    return Target(route, repo_id, rev, rel, query, url_path)


def classify(
    raw: list[str], segs: list[list[str]]
) -> tuple[str, str | None, str | None, str | None]:
    """-> (route, repo_id, revision, repo-relative path)."""

    def one(i: int) -> str | None:  # a segment that must be one component
        return segs[i][0] if len(segs[i]) == 1 else None

    def repo_at(i: int) -> str | None:
        org, name = one(i), one(i + 1)
        if org is None or name is None:
            return None
        if not (NAME_RE.match(org) and NAME_RE.match(name)):
            return None
        return f"{org}/{name}"

    def rest(i: int) -> str:
        return "/".join(p for s in segs[i:] for p in s)

    n = len(raw)
    if raw[:2] == ["api", "agent-harnesses"] and n == 2:
        return "telemetry", None, None, None
    if n >= 4 and raw[:2] == ["api", "models"]:
        repo_id = repo_at(2)
        if repo_id is None:
            return "unknown", None, None, None
        if n == 4:
            return "info", repo_id, "main", None
        rev = "/".join(segs[5]) if n >= 6 else None
        if n == 6 and raw[4] == "revision":
            return "info", repo_id, rev, None
        if n >= 6 and raw[4] == "tree":
            return "tree", repo_id, rev, rest(6)
    if n >= 5 and raw[2] == "resolve":
        repo_id = repo_at(0)
        if repo_id is not None:
            return "resolve", repo_id, "/".join(segs[3]), rest(4)
    return "unknown", None, None, None


def parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """`bytes=a-`, `bytes=a-b`, `bytes=-n` -> (first, last); None = ignore the header."""
    m = _RANGE_RE.match(value.strip().replace(" ", ""))
    if m is None or (not m.group(1) and not m.group(2)):
        return None  # multiple or malformed ranges: RFC 9110 lets us send the whole file
    if not m.group(1):
        n = int(m.group(2))
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size:
        return "unsatisfiable"
    if last < first:
        return None
    return first, min(last, size - 1)


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def info_json(repo: Repo) -> dict[str, Any]:
    """The model info answer (`HfApi.model_info`)."""
    org = repo.repo_id.split("/")[0]
    return {
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": org,
        "sha": repo.sha,
        "lastModified": _iso(repo.last_modified),
        "createdAt": _iso(repo.last_modified),
        "private": False,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": [{"rfilename": p} for p in sorted(repo.files)],
        "usedStorage": sum(f.size for f in repo.files.values()),
    }


def tree_entries(repo: Repo, rel: str, recursive: bool) -> list[dict[str, Any]] | None:
    """The folder `rel`'s entries (all below it when `recursive`), sorted by path; None
    when `rel` is not a folder of the repo."""
    dirs = repo.dirs()
    if rel and rel not in dirs:
        return None
    prefix = f"{rel}/" if rel else ""

    def wanted(p: str) -> bool:
        return p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])

    entries: list[dict[str, Any]] = [
        {"type": "directory", "oid": oid, "path": d} for d, oid in dirs.items() if wanted(d)
    ]
    entries += [f.tree_entry() for p, f in repo.files.items() if wanted(p)]
    entries.sort(key=lambda e: e["path"])
    return entries


def next_page_url(host: str, repo: Repo, rev: str, rel: str, q: dict[str, list[str]],
                  recursive: bool, cursor: int) -> str:
    """The tree listing's `Link: rel="next"` target for the page starting at `cursor`."""
    path_part = f"/{quote(rel, safe='')}" if rel else ""
    return (
        f"http://{host}/api/models/{repo.repo_id}/tree/{quote(rev, safe='')}{path_part}"
        f"?recursive={str(recursive).lower()}"
        f"&expand={q.get('expand', ['false'])[0]}&cursor={cursor}"
    )


def broken_next_url(base: str, mode: str, next_loop: Callable[[], int]) -> str:
    """The next-page URL a broken hub sends for the page at `base`: itself (`self`), its
    twin (`cycle`), or a new one each time (`endless`, numbered by `next_loop`)."""
    if mode == "self":
        return base
    plain = re.sub(r"[&?]loop=\d+", "", base)
    sep = "&" if "?" in plain else "?"
    if mode == "cycle":
        return plain if plain != base else f"{plain}{sep}loop=1"
    return f"{plain}{sep}loop={next_loop()}"
