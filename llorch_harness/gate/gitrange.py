"""The checkpoint's range of commits in a llama-orch checkout, read with git.

Why: "Team signatures added" and "Documentation updated" are claims about what a checkpoint
*added*. Looking at the whole tree passes a checkout where nothing was done (issue 18: a
CP1 checkout passed both). The range is base..HEAD: `--llorch-base REF`, else the merge base
of HEAD and the branch's upstream. Every git call is an argv list (no shell) with a deadline;
a problem is one `GitRangeError` line with the fix.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from llorch_harness.errors import HarnessError

GIT_TIMEOUT_S = 120.0
BASE_HINT = "pass --llorch-base REF (the commit the checkpoint's work started from) or LLORCH_BASE"
_HUNK_RE = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")


class GitRangeError(HarnessError):
    """The range cannot be read: the items that need it could not be checked."""


@dataclass(frozen=True)
class GitRange:
    """base..head of one checkout; `how` says where the base came from."""

    root: Path
    base: str  # full sha of the range's start (the merge base when REF is not an ancestor)
    head: str
    how: str

    def describe(self) -> str:
        return f"{self.base[:12]}..{self.head[:12]} ({self.how})"


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """`git -C root ARGS` without a shell, pager, prompt or the caller's GIT_* redirections."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    argv = ["git", "-C", str(root), "-c", "core.quotepath=false", "--no-pager", *args]
    try:
        res = subprocess.run(argv, capture_output=True, env=env, timeout=GIT_TIMEOUT_S,
                             stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise GitRangeError("git is not installed", "install git on this pool") from None
    except subprocess.TimeoutExpired:
        raise GitRangeError(f"git {args[0]} in {root} ran past {GIT_TIMEOUT_S:g} s",
                            "rerun; check the checkout's disk") from None
    if check and res.returncode != 0:
        raise GitRangeError(f"git {' '.join(args[:2])} in {root}: {_first_line(res.stderr)}",
                            "check the checkout with `git status`")
    return res


def _first_line(raw: bytes) -> str:
    lines = [ln.strip() for ln in raw.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[0][:300] if lines else "failed"


def _out(res: subprocess.CompletedProcess[bytes]) -> str:
    return res.stdout.decode("utf-8", "replace").strip()


def toplevel(repo: Path) -> Path:
    res = git(repo, "rev-parse", "--show-toplevel", check=False)
    if res.returncode != 0:
        raise GitRangeError(f"--llorch-repo {repo} is not a git checkout "
                            f"({_first_line(res.stderr)})",
                            "pass the llama-orch clone with its .git, not an export")
    return Path(_out(res))


def _commit(root: Path, ref: str, what: str) -> str | None:
    if ref.startswith("-") or not ref.strip():
        raise GitRangeError(f"{what} {ref!r} is not a commit name", BASE_HINT)
    res = git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    return _out(res) if res.returncode == 0 else None


def resolve_range(repo: Path, base: str | None) -> GitRange:
    """base..HEAD: the given REF (through the merge base when it is not an ancestor of
    HEAD), else the merge base with the upstream; one line with the fix when neither works."""
    root = toplevel(repo)
    head = _commit(root, "HEAD", "HEAD")
    if head is None:
        raise GitRangeError(f"{root} has no commit at HEAD", "commit the checkpoint's work")
    if base:
        sha = _commit(root, base, "--llorch-base")
        if sha is None:
            raise GitRangeError(f"--llorch-base {base} is not a commit in {root}",
                                "name a branch, tag or sha that exists there; in a shallow "
                                "clone fetch more history (git fetch --unshallow)")
        start = _merge_base(root, sha, head, f"--llorch-base {base}")
        how = f"--llorch-base {base}" + ("" if start == sha else
                                         f", through its merge base with HEAD {start[:12]}")
        return GitRange(root, start, head, how)
    upstream = git(root, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}",
                   check=False)
    if upstream.returncode != 0:
        branch = _out(git(root, "rev-parse", "--abbrev-ref", "HEAD", check=False))
        where = ("a detached HEAD" if branch in ("HEAD", "")
                 else f"branch {branch}, which has no upstream")
        raise GitRangeError(f"cannot tell where the checkpoint's work starts in {root}: it is "
                            f"on {where}", BASE_HINT)
    name = _out(upstream)
    upstream_sha = _commit(root, "@{upstream}", "upstream")
    if upstream_sha is None:
        raise GitRangeError(f"upstream {name} of {root} is not fetched", BASE_HINT)
    start = _merge_base(root, upstream_sha, head, f"upstream {name}")
    return GitRange(root, start, head, f"merge base of HEAD and {name}")


def _merge_base(root: Path, a: str, b: str, what: str) -> str:
    res = git(root, "merge-base", a, b, check=False)
    if res.returncode != 0:
        raise GitRangeError(f"{what} shares no history with HEAD in {root}", BASE_HINT)
    return _out(res)


def changed_files(rng: GitRange) -> dict[str, str]:
    """path -> git's status letter (A added, M modified, D deleted, T type) over the range."""
    raw = git(rng.root, "diff", "--name-status", "--no-renames", "-z", rng.base, rng.head)
    parts = raw.stdout.decode("utf-8", "replace").split("\0")
    out: dict[str, str] = {}
    for status, path in zip(parts[0::2], parts[1::2], strict=False):
        if status and path:
            out[path] = status[0]
    return out


def added_lines(rng: GitRange, path: str) -> list[tuple[int, str]]:
    """(line number at HEAD, text) of every line the range added to `path`."""
    raw = git(rng.root, "diff", "-U0", "--no-color", "--no-ext-diff", "--no-textconv",
              "--no-renames", rng.base, rng.head, "--", path)
    out: list[tuple[int, str]] = []
    lineno = 0
    in_hunk = False
    for line in raw.stdout.decode("utf-8", "replace").splitlines():
        hunk = _HUNK_RE.match(line)
        if hunk:
            lineno, in_hunk = int(hunk.group(1)), True
        elif in_hunk and line.startswith("+"):
            out.append((lineno, line[1:]))
            lineno += 1
        elif in_hunk and not line.startswith(("-", "\\")):
            in_hunk = line.startswith(" ")  # a context line (none with -U0) or a new header
    return out


def text_at_head(rng: GitRange, path: str) -> str | None:
    """The file's text in HEAD's tree, None when HEAD has no such file."""
    res = git(rng.root, "cat-file", "blob", f"{rng.head}:{path}", check=False)
    return res.stdout.decode("utf-8", "replace") if res.returncode == 0 else None
