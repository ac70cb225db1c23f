"""The range a bisect searches, read from the user's llama-orch clone with git, read-only.

Why the first-parent path: on a branch that merges feature branches, the commits of a merged
branch were never built as the branch's state; the first-parent path is what the branch was
at each point, and a merge that brought a fault in is named as the merge. Everything here
only reads (`rev-parse`, `merge-base --is-ancestor`, `rev-list`, `show`): the user's refs,
index, working tree and bisect state are never written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llorch_harness.errors import HarnessError
from llorch_harness.gate.gitrange import git, toplevel


@dataclass(frozen=True)
class Commit:
    """One commit as the answer names it."""

    sha: str
    subject: str
    author: str
    date: str  # the author date, ISO 8601
    files: tuple[str, ...] = ()  # files changed against its first parent

    @property
    def short(self) -> str:
        return self.sha[:12]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = list(self.files)
        return data


@dataclass(frozen=True)
class Range:
    """good..bad on the first-parent path: `commits` oldest first, the last one is bad."""

    root: Path
    good: str
    bad: str
    commits: tuple[str, ...]
    good_ref: str
    bad_ref: str

    @property
    def size(self) -> int:
        return len(self.commits)


def repo_root(repo: Path) -> Path:
    """The clone's top directory; one line when `repo` is not a git checkout."""
    if not repo.is_dir():
        raise HarnessError(f"--llorch-repo {repo} is not a directory",
                           "pass the llama-orch clone", exit_code=2)
    try:
        return toplevel(repo)
    except HarnessError as err:
        raise HarnessError(err.message, err.hint, exit_code=2) from None


def resolve(root: Path, ref: str, flag: str) -> str:
    """A commit name to its full sha; refuses option-looking or unknown names."""
    if not ref.strip() or ref.startswith("-"):
        raise HarnessError(f"{flag} {ref!r} is not a commit name",
                           "name a branch, tag or sha", exit_code=2)
    res = git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}",
              check=False)
    if res.returncode != 0:
        raise HarnessError(f"{flag} {ref} is not a commit in {root}",
                           "name a branch, tag or sha that exists there (git fetch first)",
                           exit_code=2)
    return res.stdout.decode().strip()


def is_ancestor(root: Path, a: str, b: str) -> bool:
    return git(root, "merge-base", "--is-ancestor", a, b, check=False).returncode == 0


def first_parent_range(root: Path, good_ref: str, bad_ref: str) -> Range:
    """The commits after good up to bad on bad's first-parent path; one line (exit 2) for a
    range that cannot be bisected, before anything is built."""
    good = resolve(root, good_ref, "--good")
    bad = resolve(root, bad_ref, "--bad")
    if good == bad:
        raise HarnessError(f"--good {good_ref} and --bad {bad_ref} are the same commit "
                           f"{good[:12]}", "nothing lies between them", exit_code=2)
    if not is_ancestor(root, good, bad):
        how = ("--bad is older: swap them" if is_ancestor(root, bad, good)
               else "they are on different lines of history")
        raise HarnessError(f"--good {good_ref} ({good[:12]}) is not an ancestor of --bad "
                           f"{bad_ref} ({bad[:12]})", how, exit_code=2)
    out = git(root, "rev-list", "--first-parent", "--reverse", f"{good}..{bad}")
    commits = tuple(out.stdout.decode().split())
    oldest_parent = _first_parent(root, commits[0]) if commits else None
    if not commits or oldest_parent != good:
        raise HarnessError(
            f"--good {good_ref} ({good[:12]}) is not on the first-parent path of --bad "
            f"{bad_ref}: it came in through a merge", "pass as --good the commit of that path "
            f"where its history joins ({(oldest_parent or '?')[:12]}) or a later one of it",
            exit_code=2)
    return Range(root, good, bad, commits, good_ref, bad_ref)


def _first_parent(root: Path, sha: str) -> str | None:
    res = git(root, "rev-parse", "--verify", "--quiet", f"{sha}^1", check=False)
    return res.stdout.decode().strip() if res.returncode == 0 else None


def commit_info(root: Path, sha: str) -> Commit:
    """Hash, subject, author, date and the files changed against the first parent."""
    fmt = "%H%x00%s%x00%an <%ae>%x00%aI"
    head = git(root, "show", "-s", f"--format={fmt}", sha).stdout.decode("utf-8", "replace")
    full, subject, author, date = (head.strip("\n").split("\0") + ["", "", "", ""])[:4]
    files = git(root, "diff-tree", "--no-commit-id", "--root", "-r", "--name-only", "-z",
                "-m", "--first-parent", sha).stdout.decode("utf-8", "replace")
    names = tuple(dict.fromkeys(f for f in files.split("\0") if f))
    return Commit(full, subject, author, date, names)
