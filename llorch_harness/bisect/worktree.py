"""The bisect's own worktree under the pool root: made at the start, moved from commit to
commit, removed at the end (Ctrl-C and a crashed step included), never the user's.

Why a worktree and not the user's checkout: `git bisect` in the clone would take over the
user's working tree, index, HEAD and bisect state for an hour. A linked worktree has its own
HEAD (detached, so no branch and no ref is made) and index, and shares only the object
store; moving it from commit to commit rewrites only the files that differ, so cargo's
incremental build stays warm. Hooks are off for every git command here (a post-checkout
hook of the user's is not ours to run). A bisect killed outright (SIGKILL) leaves its
worktree behind; the next bisect on the pool removes worktrees whose owner is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import psutil

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import atomic_write_text, loads_json_strict, read_regular_text
from llorch_harness.gate.gitrange import git

NO_HOOKS = ("-c", "core.hooksPath=/dev/null", "-c", "gc.auto=0")
OWNER = "owner.json"


class Worktree:
    """A detached worktree of `repo` at `path`; `close()` removes it (idempotent)."""

    def __init__(self, repo: Path, path: Path, admin: Path | None) -> None:
        self.repo = repo
        self.path = path
        self.admin = admin  # <common git dir>/worktrees/<name>
        self.commit: str | None = None

    @classmethod
    def create(cls, repo: Path, path: Path, commit: str) -> Worktree:
        """`git worktree add --detach` (no branch is made); the owner file lets a later
        bisect remove it if this process is killed before it can."""
        _write_owner(path.parent, repo, path)
        try:
            git(repo, *NO_HOOKS, "worktree", "add", "--detach", str(path), commit)
        except BaseException:  # Ctrl-C or a failure half-way: nothing of it stays
            remove(repo, path, _admin_dir(path))
            raise
        wt = cls(repo, path, _admin_dir(path))
        wt.commit = commit
        return wt

    def checkout(self, commit: str) -> None:
        """Exactly the commit's tree: tracked files moved, untracked and ignored removed."""
        git(self.path, *NO_HOOKS, "checkout", "--quiet", "--detach", "--force", commit)
        git(self.path, *NO_HOOKS, "clean", "-ffdxq")
        self.commit = commit

    def close(self) -> None:
        remove(self.repo, self.path, self.admin)

    def __enter__(self) -> Worktree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _admin_dir(path: Path) -> Path | None:
    """The worktree's administrative directory, read from its `.git` file."""
    try:
        text = (path / ".git").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    admin = Path(text.removeprefix("gitdir:").strip())
    return admin if admin.parent.name == "worktrees" else None


def remove(repo: Path, path: Path, admin: Path | None) -> None:
    """`git worktree remove --force`; when git cannot (the directory is half gone), the
    directory and its own administrative entry only (never `git worktree prune`, which
    would touch the user's other worktrees)."""
    if path.exists():
        res = git(repo, *NO_HOOKS, "worktree", "remove", "--force", "--force", str(path),
                  check=False)
        if res.returncode == 0:
            return
        shutil.rmtree(path, ignore_errors=True)
    if admin is not None and admin.parent.name == "worktrees" and admin.is_dir():
        shutil.rmtree(admin, ignore_errors=True)
        with contextlib.suppress(OSError):
            admin.parent.rmdir()  # git removes it when it empties it; so do we


def _write_owner(run_dir: Path, repo: Path, path: Path) -> None:
    me = psutil.Process()
    atomic_write_text(run_dir / OWNER, json.dumps({
        "pid": me.pid, "start_time": me.create_time(), "repo": str(repo),
        "worktree": str(path)}))


def _owner_alive(rec: dict[str, object]) -> bool:
    try:
        proc = psutil.Process(int(str(rec.get("pid"))))
        return abs(proc.create_time() - float(str(rec.get("start_time")))) < 1.0
    except (psutil.Error, ValueError):
        return False


def sweep_stale(runs_dir: Path) -> list[Path]:
    """Remove the worktrees of earlier bisects on this pool whose process is gone."""
    removed: list[Path] = []
    if not runs_dir.is_dir():
        return removed
    for owner in sorted(runs_dir.glob(f"*/{OWNER}")):
        try:
            rec = loads_json_strict(read_regular_text(owner, "bisect owner file"))
        except (OSError, ValueError, HarnessError):
            continue
        if not isinstance(rec, dict) or _owner_alive(rec):
            continue
        path = Path(str(rec.get("worktree", "")))
        if path.parent == owner.parent and path.exists():
            remove(Path(str(rec.get("repo", ""))), path, _admin_dir(path))
            removed.append(path)
        with contextlib.suppress(OSError):
            os.unlink(owner)
    return removed
