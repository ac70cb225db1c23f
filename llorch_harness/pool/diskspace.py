"""Free space for a model download: what it still needs, what the disk has, the margin.

Why apart from the download: a 14 GB model that fills a pool's disk halfway through
leaves the pool unable to write its catalog, its worker records or its logs, so the
download asks first, after the hub listing is known and before any byte is fetched. The
rules are plain functions (sizes in, a number or a message out) so they can be tested
without a full disk.

What a download still needs, file by file: the listed size minus the bytes already at
the file's target (a file kept as verified needs nothing; a file that is replaced is
deleted just before its replacement arrives, so only the growth counts, never less
than 0). From that sum the bytes of huggingface_hub's `*.incomplete` partial files are
taken off: the download deletes them all before it fetches anything (they are not
resumed across runs), so their space is free again by then.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from llorch_harness.errors import HarnessError, LabFailure
from llorch_harness.pool.modelfiles import HF_DOWNLOAD_SUBDIR

GIB = 1024**3
DEFAULT_KEEP_FREE = 1 * GIB  # a pool must still write its catalog, records and logs
_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2,
          "g": GIB, "gib": GIB, "t": 1024**4, "tib": 1024**4}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
SIZE_FORMS = "bytes, or a number with K, M, G or T (powers of 1024, e.g. 500M, 5G, 1.5GiB)"


def parse_size(text: str) -> int:
    """`5G`, `500M`, `1.5GiB`, `1048576` -> bytes (binary units, as `df -h` shows them).

    Decimal `GB`/`MB` are refused rather than guessed: 1 GB and 1 GiB differ by 7 %."""
    match = _SIZE_RE.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in _UNITS:
        raise ValueError(f"not a size: {text!r} (give {SIZE_FORMS})")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_size(n_bytes: int) -> str:
    """Binary units with two decimals, like the free space `df -h` reports."""
    for unit, scale in (("TiB", 1024**4), ("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{int(n_bytes)} B"


def existing_ancestor(path: Path) -> Path:
    """`path` itself or its nearest existing parent: the filesystem that will hold it."""
    current = Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem that holds `path`."""
    return shutil.disk_usage(existing_ancestor(path)).free


def _regular_size(path: Path) -> int:
    """Size of a regular file (never through a link), 0 for anything else or nothing."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def partial_bytes(model_dir: Path) -> int:
    """Bytes in huggingface_hub's `*.incomplete` files under the model's `.cache`."""
    base = model_dir / HF_DOWNLOAD_SUBDIR
    if not os.path.isdir(base) or os.path.islink(base):
        return 0
    total = 0
    for dirpath, _dirnames, filenames in os.walk(base, followlinks=False):
        total += sum(_regular_size(Path(dirpath) / n) for n in filenames
                     if n.endswith(".incomplete"))
    return total


def needed_bytes(model_dir: Path, files: Iterable[tuple[str, int]]) -> int:
    """What fetching `files` (name, listed size) into `model_dir` adds to the disk."""
    growth = sum(max(size - _regular_size(model_dir / name), 0) for name, size in files)
    return max(growth - partial_bytes(model_dir), 0)


def shortfall(needed: int, free: int, keep_free: int) -> bool:
    """True when writing `needed` bytes would leave less than `keep_free` bytes free."""
    return needed > 0 and needed > free - keep_free


def space_error(model_id: str, model_dir: Path, needed: int, free: int,
                keep_free: int) -> HarnessError:
    margin = f" + {format_size(keep_free)} kept free (--keep-free)" if keep_free else ""
    return LabFailure(  # the pool's disk, not the worker: could not check, never FAIL
        "disk full",
        f"not enough disk space for {model_id}: needs {format_size(needed)}{margin}, "
        f"{format_size(free)} free in {model_dir}",
        "free space, or pass --pool-root on a larger disk; nothing was downloaded",
    )


def check_space(model_id: str, model_dir: Path, files: Iterable[tuple[str, int]],
                keep_free: int) -> tuple[int, int]:
    """(needed, free) when the download fits with `keep_free` to spare; else one error."""
    needed = needed_bytes(model_dir, files)
    free = free_bytes(model_dir)
    if shortfall(needed, free, keep_free):
        raise space_error(model_id, model_dir, needed, free, keep_free)
    return needed, free
