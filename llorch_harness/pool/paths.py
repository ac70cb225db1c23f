"""Where a pool keeps its files, and the checks that keep every write inside it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import first_symlink

POOL_ROOT_ENV = "LLORCH_POOL_ROOT"
MODELS_DIRNAME = ".test-models"
CATALOG_FILENAME = "catalog.json"
RUNTIME_DIRNAME = ".runtime"

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # model and worker ids: file names
_REPO_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_MAX_HUB_FILENAME = 1024


def printable(value: object) -> str:
    """Show a rejected value safely: control characters escaped, long values cut."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_model_id(model_id: str) -> str:
    """A catalog id becomes a directory name, so it may hold no separator or dot segment."""
    return _file_name_id(
        model_id, "model id",
        "use letters, digits, '.', '_' and '-' (no '..', no '/'), at most 128 characters",
    )


def validate_worker_id(worker_id: str) -> str:
    """A worker id names files under .runtime/workers, so it gets the same rules as a model id."""
    return _file_name_id(worker_id, "worker id", "worker ids look like worker-<backend>-<gpu>")


def _file_name_id(value: str, what: str, hint: str) -> str:
    """An id that names a file or directory: one plain segment, never '..'."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or ".." in value:
        raise HarnessError(f"invalid {what} {printable(value)}", hint, exit_code=2)
    return value


def validate_pool_key(value: object, what: str = "pool root") -> str:
    """A pool root read from outside (another process's marker, a worker record): used to
    build paths only if it is an absolute, normalised path, so no '..' or relative part can
    move a write elsewhere. Check it (and the worker id) before any path is built."""
    bad = (
        not isinstance(value, str)
        or not value.startswith("/")
        or value.startswith("//")
        or len(value) > 4096
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
        or os.path.normpath(value) != value
    )
    if bad:
        raise HarnessError(f"invalid {what} {printable(value)}",
                           "a pool root is an absolute path without '.', '..' or '//'",
                           exit_code=2)
    return str(value)


def refuse_symlinks(root: Path, path: Path) -> Path:
    """`path` if no existing component below `root` is a symbolic link (or it lies outside
    `root`); else one-line HarnessError naming the link. For everything written or deleted
    under the pool root: a link there would move the write outside it."""
    norm_root, norm = os.path.normpath(root), os.path.normpath(path)
    if norm != norm_root and not norm.startswith(norm_root.rstrip("/") + "/"):
        raise HarnessError(f"refusing to write {path}: it lies outside the pool root {root}",
                           "check the pool layout", exit_code=2)
    link = first_symlink(root, path)
    if link is not None:
        raise HarnessError(
            f"refusing to write through the symbolic link {link} under the pool root {root}",
            "replace the link with a real directory or file inside the pool root, then retry",
            exit_code=2,
        )
    return path


def validate_repo_id(repo_id: str) -> str:
    """A hub repo id is exactly ORG/NAME; anything else could point the client elsewhere."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if (
        len(parts) != 2
        or not all(_REPO_PART_RE.fullmatch(p) for p in parts)
        or any(".." in p or "--" in p for p in parts)
    ):
        raise HarnessError(
            f"invalid hub repo id {printable(repo_id)}",
            "expected ORG/NAME, e.g. Qwen/Qwen2.5-0.5B-Instruct",
            exit_code=2,
        )
    return repo_id


def validate_hub_filename(name: str) -> str:
    """A file name from a hub listing must stay a relative path below the model directory."""
    bad = (
        not isinstance(name, str)
        or not name
        or len(name) > _MAX_HUB_FILENAME
        or "\\" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or name.startswith("/")
        or re.match(r"^[A-Za-z]:", name) is not None
        or "%" in name
    )
    if not bad:
        segments = PurePosixPath(name).parts
        raw = name.split("/")
        bad = any(s in ("", ".", "..") for s in raw) or len(segments) != len(raw)
    if bad:
        raise HarnessError(
            f"refusing hub file name {printable(name)}",
            "hub file names must be relative paths without '..', '\\', '%', NUL or control "
            "characters",
            exit_code=2,
        )
    return name


def safe_join(base: Path, rel: str) -> Path:
    """Join and prove the result stays under base (symlinks resolved), or refuse."""
    validate_hub_filename(rel)
    base_resolved = base.resolve()
    target = (base_resolved / rel).resolve()
    if target != base_resolved and base_resolved not in target.parents:
        raise HarnessError(
            f"path {printable(rel)} escapes {base}",
            "remove the symbolic link or the '..' that leads outside the models directory",
            exit_code=2,
        )
    return target


def resolve_pool_root(arg: str | os.PathLike[str] | None = None) -> Path:
    """--pool-root wins, then $LLORCH_POOL_ROOT, then the current directory (as in Rust)."""
    raw = arg if arg not in (None, "") else os.environ.get(POOL_ROOT_ENV) or os.getcwd()
    root = Path(raw).expanduser()
    if root.exists() and not root.is_dir():
        raise HarnessError(f"pool root {root} is not a directory", "pass --pool-root DIR")
    return root.resolve()


@dataclass(frozen=True)
class PoolPaths:
    """The fixed layout the Rust llorch-pool shares: .test-models/ and .runtime/workers/."""

    root: Path

    @classmethod
    def at(cls, root: Path | str | None = None) -> PoolPaths:
        return cls(resolve_pool_root(root))

    @property
    def models_dir(self) -> Path:
        return self.root / MODELS_DIRNAME

    @property
    def catalog_path(self) -> Path:
        return self.models_dir / CATALOG_FILENAME

    @property
    def runtime_dir(self) -> Path:
        return self.root / RUNTIME_DIRNAME

    @property
    def workers_dir(self) -> Path:
        return self.runtime_dir / "workers"

    def model_dir(self, model_id: str) -> Path:
        return self.models_dir / validate_model_id(model_id)

    def writable_dir(self, path: Path) -> Path:
        """Create `path` (a directory under the pool root) after proving that no component
        of it is a symbolic link; checked again after creation (someone may race us)."""
        refuse_symlinks(self.root, path)
        path.mkdir(parents=True, exist_ok=True)
        return refuse_symlinks(self.root, path)

    def relative(self, path: Path) -> str:
        """Paths in the catalog are pool-relative, as CP2/CP3 write them."""
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def absolute(self, stored: str) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self.root / p
