"""A model's files in the pool: its directory, its lock, what a download may write there.

Why apart from the download: `download` and `verify` both need the model's directory
(inside the pool root, never through a symlink), one lock per model across processes,
and the catalog's record of which files were verified; so do the CLI's listings.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from filelock import FileLock, Timeout

from llorch_harness.errors import HarnessError
from llorch_harness.pool import catalog as cat
from llorch_harness.pool.paths import PoolPaths, refuse_symlinks, safe_join

LOCKS_DIRNAME = ".locks"
MODEL_LOCK_TIMEOUT_S = 6 * 3600.0  # a 15 GB model on a slow link; a dead holder frees it anyway
HF_DOWNLOAD_SUBDIR = Path(".cache") / "huggingface" / "download"


def model_dir_for(paths: PoolPaths, entry: cat.ModelEntry) -> Path:
    """The entry's `path` (its directory if it names a .safetensors file), inside the pool root."""
    stored = entry.path
    if stored.endswith(".safetensors"):
        stored = Path(stored).parent.as_posix()
    root = paths.root.resolve()
    if Path(stored).is_absolute():
        target = Path(stored).resolve()
        if target != root and root not in target.parents:
            raise HarnessError(
                f"model {entry.id!r} has path {stored!r} outside the pool root {root}",
                f"set its path to .test-models/{entry.id}", 2,
            )
        return target
    return safe_join(root, stored)


def recorded_files(entry: cat.ModelEntry) -> dict[str, dict[str, Any]] | None:
    """The catalog's per-file sizes and hashes, when it holds a usable record."""
    files = entry.metadata.get("files")
    if not isinstance(files, dict) or not files:
        return None
    if not all(isinstance(k, str) and isinstance(v, dict) for k, v in files.items()):
        return None
    return files


def quick_check(paths: PoolPaths, entry: cat.ModelEntry) -> bool:
    """Downloaded and every recorded file present with its recorded size (no hashing).

    Hashing is `verify`'s job: the no-op rerun must take well under a second on a 1 GB
    model, and files only change behind our back if someone edits them.
    """
    files = recorded_files(entry)
    if not entry.downloaded or files is None:
        return False
    try:
        base = model_dir_for(paths, entry)
        for name, rec in files.items():
            p = safe_join(base, name)
            if not p.is_file() or p.stat().st_size != rec.get("size"):
                return False
    except (HarnessError, OSError):
        return False
    return True


def model_lock_path(paths: PoolPaths, model_id: str) -> Path:
    return paths.models_dir / LOCKS_DIRNAME / f"{model_id}.lock"


def write_targets(model_dir: Path, names: Iterable[str] = ()) -> list[Path]:
    """Every path a download writes or deletes in `model_dir`: the files, and
    huggingface_hub's bookkeeping under `.cache/huggingface` (locks, metadata, partials)."""
    meta = model_dir / HF_DOWNLOAD_SUBDIR
    out = [model_dir, meta, meta.parent / ".gitignore", meta.parent / "CACHEDIR.TAG"]
    for name in names:
        out += [model_dir / name, meta / f"{name}.metadata", meta / f"{name}.lock"]
    return out


def check_write_targets(paths: PoolPaths, model_dir: Path, names: Iterable[str] = ()) -> None:
    """Refuse (exit 2, nothing written) if any existing component of a path the download
    would write or delete is a symbolic link: a `.cache` link in the model directory would
    otherwise put lock and metadata files outside the pool root and delete files there."""
    for target in write_targets(model_dir, names):
        refuse_symlinks(paths.root, target)


@contextlib.contextmanager
def model_lock(paths: PoolPaths, model_id: str, out: TextIO,
               timeout: float = MODEL_LOCK_TIMEOUT_S) -> Iterator[None]:
    """One downloader per model; the others say that they wait, then wait."""
    lock_path = model_lock_path(paths, model_id)
    paths.writable_dir(lock_path.parent)
    refuse_symlinks(paths.root, lock_path)
    lock = FileLock(str(lock_path), timeout=timeout)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"⏳ Another process is downloading {model_id}; waiting for it "
              f"(lock {paths.relative(lock_path)})", file=out, flush=True)
        try:
            lock.acquire(timeout=timeout)
        except Timeout as exc:
            raise HarnessError(
                f"gave up after {timeout:.0f} s waiting for another download of {model_id}",
                f"if no llorch-pool download is running, delete {lock_path} and retry",
            ) from exc
    try:
        yield
    finally:
        lock.release()


def remove_partials(model_dir: Path) -> list[Path]:
    """Delete huggingface_hub's `*.incomplete` temp files (left behind by a kill).

    Never through a symbolic link: a linked `.cache`, `huggingface` or `download` directory
    is refused, a linked subdirectory is not entered, and a linked `*.incomplete` entry is
    removed as a link (its target stays)."""
    base = model_dir / HF_DOWNLOAD_SUBDIR
    refuse_symlinks(model_dir, base)
    removed: list[Path] = []
    if not os.path.isdir(base) or os.path.islink(base):
        return removed
    for dirpath, _dirnames, filenames in os.walk(base, followlinks=False):
        for name in filenames:
            if not name.endswith(".incomplete"):
                continue
            p = Path(dirpath) / name
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def discard_file(model_dir: Path, name: str) -> None:
    """Remove a file and huggingface_hub's note about it, so the next run fetches it anew."""
    for p in (model_dir / name, model_dir / HF_DOWNLOAD_SUBDIR / f"{name}.metadata"):
        refuse_symlinks(model_dir, p.parent)
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def set_downloaded(paths: PoolPaths, entry: cat.ModelEntry, value: bool,
                    metadata: dict[str, Any] | None = None, size: float | None = None) -> None:
    """Set the entry's `downloaded` (and its metadata and size) under the catalog lock."""

    def change(catalog: cat.Catalog) -> None:
        current = catalog.find(entry.id) or entry  # re-register if unregistered meanwhile
        current.downloaded = value
        if metadata is not None:
            current.metadata = metadata
        if size is not None:
            current.size_gb = size
        catalog.upsert(current)

    cat.update_catalog(paths, change)
