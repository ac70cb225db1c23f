"""Atomic writes and content hashes: nothing half-written is ever taken for whole."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from llorch_harness.errors import HarnessError

_CHUNK = 4 * 1024 * 1024


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file beside the target, fsync, rename: readers see the old or new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1_file(path: Path) -> str:
    """The hub lists non-LFS files by their git blob id, so that is what we verify against."""
    size = path.stat().st_size
    h = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- reading

TAIL_WINDOW = 256 * 1024  # a log tail reads at most this much from the end: linear always


def file_kind(mode: int) -> str:
    """What a stat mode names, in words for an error message."""
    for test, words in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return words
    return "not a regular file"


def refuse_non_regular_target(path: Path, what: str, hint: str) -> None:
    """A file we are about to write must be absent or a regular file: a FIFO, device or
    directory at the target is refused (exit 2) naming `what` it is for, before any work."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HarnessError(f"{what} {path}: {exc.strerror or exc}", hint, 2) from None
    if not stat.S_ISREG(st.st_mode):
        raise HarnessError(f"{what} {path} is {file_kind(st.st_mode)}, not a file", hint, 2)


class NotRegularFileError(HarnessError):
    """A path the harness reads (catalog, record, log, result) that is not a regular file.

    Why: opening a FIFO for reading blocks until a writer comes, a device may never end;
    either would hang a command that only meant to read a small file.
    """

    def __init__(self, path: Path | str, kind: str, what: str = "file",
                 hint: str | None = None) -> None:
        super().__init__(f"{what} {path} is {kind}, not a regular file",
                         hint or "move it aside; only a regular file is read there")
        self.path = Path(path)
        self.kind = kind


def open_regular(path: Path | str, what: str = "file", hint: str | None = None) -> BinaryIO:
    """Open `path` for reading only if it is (or a symlink resolves to) a regular file.

    Checked with stat before opening (opening a device can have effects of its own), and
    again with fstat on the opened descriptor, opened O_NONBLOCK so that a FIFO swapped in
    between the two never blocks. FileNotFoundError passes through unchanged.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(path, file_kind(st.st_mode), what, hint)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(path, file_kind(st.st_mode), what, hint)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: Path | str, what: str = "file", hint: str | None = None,
                       limit: int | None = None) -> bytes:
    """The whole file (at most `limit` bytes), refusing anything but a regular file."""
    with open_regular(path, what, hint) as fh:
        return fh.read() if limit is None else fh.read(limit)


def read_regular_text(path: Path | str, what: str = "file", hint: str | None = None) -> str:
    """UTF-8 text of a regular file (UnicodeDecodeError for other bytes)."""
    return read_regular_bytes(path, what, hint).decode("utf-8")


def tail_text(path: Path | str, n: int, window: int = TAIL_WINDOW, what: str = "log",
              end: int | None = None) -> str:
    """The last `n` lines, reading at most `window` bytes from the end: linear in the window,
    whatever the file's size or line lengths. Lines end at `\\n`, `\\r\\n` or a bare `\\r`
    (a progress bar redrawn with `\\r` is a log without newlines). A line cut by the window
    start is dropped unless it is all there is. `end`: the tail up to that offset (a
    follower that reads on from there then loses and repeats no line). Missing file: "".
    Not a regular file: NotRegularFileError."""
    if n <= 0:
        return ""
    try:
        with open_regular(path, what) as fh:
            size = fh.seek(0, os.SEEK_END)
            end = size if end is None else min(end, size)
            start = max(0, end - window)
            fh.seek(start)
            data = fh.read(end - start)
    except FileNotFoundError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and len(lines) > 1:
        lines = lines[1:]
    return "\n".join(lines[-n:])


def loads_json_strict(text: str) -> Any:
    """json.loads that also refuses text JSON can escape but UTF-8 cannot hold.

    `"\\ud800"` (a lone surrogate) parses in Python but cannot be printed, written back
    as UTF-8, or read by serde_json (the Rust llorch-pool): a file holding one is refused
    as a whole with a ValueError naming the problem.
    """
    obj = json.loads(text)
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end] if isinstance(exc.object, str) else "?"
        raise ValueError(
            f"holds {bad.encode('unicode_escape').decode('ascii')!s}, a lone surrogate "
            "escape that is not valid Unicode"
        ) from None
    return obj


# --------------------------------------------------------------------------- symlinks


def first_symlink(base: Path, path: Path) -> Path | None:
    """The first existing component of `path` below `base` that is a symbolic link, else None.

    Why: a symlinked directory under the pool root (`.cache` in a model directory, `.locks`,
    `.runtime/workers`) would send writes and deletions outside it. Components that do not
    exist yet are fine (they are created as real directories); `base` itself is trusted
    (the pool root is resolved when chosen). A `path` outside `base` counts as its own link.
    """
    try:
        rel = Path(os.path.normpath(path)).relative_to(os.path.normpath(base))
    except ValueError:
        return Path(path)
    current = Path(os.path.normpath(base))
    for part in rel.parts:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return current
    return None
