"""Verified model downloads into the pool's catalog (`llorch-pool models download|verify`).

Why this shape: huggingface_hub only checks sizes while downloading, and a `local_dir`
download trusts its own `.cache` bookkeeping on the next run. A pool that promises
verified weights therefore lists the repo at one commit itself, refuses unsafe names
before writing anything, downloads file by file, hashes every file against the hub's
listing (sha256 of LFS files, git blob sha1 of the rest), and only then records
`downloaded: true` with the per-file hashes, so `verify` can re-check offline.

One download per model at a time, across processes (`.test-models/.locks/ID.lock`);
the catalog itself is only ever touched through `catalog.update_catalog`.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from filelock import FileLock, Timeout

from llorch_harness import redaction
from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import git_blob_sha1_file, sha256_file
from llorch_harness.pool import catalog as cat
from llorch_harness.pool import hubdeadline
from llorch_harness.pool.hfcli import DEFAULT_PATTERNS
from llorch_harness.pool.paths import (
    PoolPaths,
    refuse_symlinks,
    safe_join,
    validate_hub_filename,
    validate_model_id,
    validate_repo_id,
)
from llorch_harness.pool.progress import progress_class
from llorch_harness.pool.units import format_gb, human_bytes

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
LOCKS_DIRNAME = ".locks"
MODEL_LOCK_TIMEOUT_S = 6 * 3600.0  # a 15 GB model on a slow link; a dead holder frees it anyway
SIZE_GB_DECIMALS = 6  # kB resolution: exact enough for tiny models, no float noise for big ones
HF_DOWNLOAD_SUBDIR = Path(".cache") / "huggingface" / "download"
_SHA1_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RemoteFile:
    """One file of the hub listing, reduced to what verification needs."""

    path: str
    size: int
    git_sha1: str
    sha256: str | None = None  # set for LFS files (the tree's lfs.oid)

    def record(self) -> dict[str, Any]:
        """What the catalog keeps per file: size plus the hash `verify` checks."""
        if self.sha256:
            return {"size": self.size, "sha256": self.sha256}
        return {"size": self.size, "git_sha1": self.git_sha1}


@dataclass
class DownloadResult:
    model_id: str
    path: Path
    repo: str
    revision: str
    size_bytes: int
    size_gb: float
    files: dict[str, dict[str, Any]]
    already_downloaded: bool = False
    fetched: list[str] = field(default_factory=list)


@dataclass
class VerifyResult:
    model_id: str
    path: Path
    ok: bool
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- pure helpers


def scrub(text: str, token: str | None) -> str:
    """Text we print, through the one redaction (redaction.py), the explicit token included."""
    return redaction.redact(text, extra=[token])


def public_endpoint(url: str) -> str:
    """The endpoint as recorded in the catalog and printed: no user:password, query or
    fragment. Never raises: an unparseable URL is shown redacted as text."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return redaction.redact(str(url), values=())
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def resolve_endpoint(endpoint: str | None) -> str:
    """Explicit argument, else $HF_ENDPOINT read now (huggingface_hub reads it only at import)."""
    raw = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    problem = None
    try:  # `http://[::1` and `ftp://h:99999` raise here: one usage line, not a traceback
        raw.strip().encode("utf-8")
        parts = urlsplit(raw.strip())
        _ = parts.port
    except ValueError as exc:  # UnicodeEncodeError included
        problem = str(exc) if not isinstance(exc, UnicodeError) else "not UTF-8 text"
    else:
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = "not http(s)://HOST[:PORT]"
        elif any(c.isspace() or not c.isprintable() for c in raw.strip()):
            problem = "it holds white space or control characters"
    if problem is not None:
        shown = public_endpoint(raw) if problem != "not UTF-8 text" else ascii(raw)
        raise HarnessError(
            f"invalid hub endpoint {shown!r}: {problem}",
            "set HF_ENDPOINT to http(s)://HOST[:PORT], or unset it for huggingface.co",
            exit_code=2,
        )
    return raw.strip().rstrip("/")


def resolve_token(token: str | None) -> str | None:
    """Explicit argument, else $HF_TOKEN read now; None lets huggingface_hub use a saved login."""
    return token or os.environ.get("HF_TOKEN") or None


def matches_patterns(path: str, patterns: Sequence[str] = DEFAULT_PATTERNS) -> bool:
    """fnmatchcase like huggingface_hub: `*` crosses `/`, so `*.json` matches `a/b.json`."""
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def select_files(
    listing: Iterable[RemoteFile], model_dir: Path, patterns: Sequence[str] = DEFAULT_PATTERNS,
) -> list[RemoteFile]:
    """Files to fetch, every name proven safe before anything is written.

    Raises HarnessError (exit 2) on a name with `..`, an absolute path, a backslash, NUL
    or control characters, or one that escapes `model_dir` through a symlink; on a
    listing hash that is not hex (it would make verification meaningless); and when no
    file matches (the repo is not a safetensors model).
    """
    chosen: list[RemoteFile] = []
    seen: set[str] = set()
    for f in listing:
        if not isinstance(f.path, str) or not matches_patterns(f.path, patterns):
            continue
        validate_hub_filename(f.path)
        safe_join(model_dir, f.path)
        if f.path in seen:
            raise HarnessError(f"hub listing names {f.path!r} twice", "check the hub", 2)
        if isinstance(f.size, bool) or not isinstance(f.size, int) or f.size < 0:
            raise HarnessError(f"hub listing gives {f.path!r} an invalid size {f.size!r}",
                               "check the hub", 2)
        if not _SHA1_RE.fullmatch(f.git_sha1 or "") or (
            f.sha256 is not None and not _SHA256_RE.fullmatch(f.sha256)
        ):
            raise HarnessError(f"hub listing gives {f.path!r} no valid hash",
                               "the hub must list a git sha1 oid, and lfs.oid for LFS files", 2)
        seen.add(f.path)
        chosen.append(f)
    if not any(f.path.endswith(".safetensors") for f in chosen):
        raise HarnessError(
            "the hub repo has no *.safetensors file",
            f"the harness downloads {', '.join(patterns)}; pick a safetensors repo", 2,
        )
    return sorted(chosen, key=lambda f: f.path)


def check_file(path: Path, expected: dict[str, Any] | RemoteFile) -> str | None:
    """None if the file matches size and hash, else a short reason."""
    rec = expected.record() if isinstance(expected, RemoteFile) else expected
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if not path.is_file():
        return "not a regular file"
    if size != rec.get("size"):
        return f"size {size} bytes, expected {rec.get('size')}"
    if rec.get("sha256"):
        got = sha256_file(path)
        if got != rec["sha256"]:
            return f"sha256 {got[:12]}…, expected {str(rec['sha256'])[:12]}…"
    elif rec.get("git_sha1"):
        got = git_blob_sha1_file(path)
        if got != rec["git_sha1"]:
            return f"git sha1 {got[:12]}…, expected {str(rec['git_sha1'])[:12]}…"
    else:
        return "no recorded hash"
    return None


def size_gb(n_bytes: int) -> float:
    return round(n_bytes / 1e9, SIZE_GB_DECIMALS)


# --------------------------------------------------------------------------- local state


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


def _recorded_files(entry: cat.ModelEntry) -> dict[str, dict[str, Any]] | None:
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
    files = _recorded_files(entry)
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


def _set_downloaded(paths: PoolPaths, entry: cat.ModelEntry, value: bool,
                    metadata: dict[str, Any] | None = None, size: float | None = None) -> None:
    def change(catalog: cat.Catalog) -> None:
        current = catalog.find(entry.id) or entry  # re-register if unregistered meanwhile
        current.downloaded = value
        if metadata is not None:
            current.metadata = metadata
        if size is not None:
            current.size_gb = size
        catalog.upsert(current)

    cat.update_catalog(paths, change)


# --------------------------------------------------------------------------- hub access


def _hub_error(model_id: str, what: str, exc: BaseException, token: str | None) -> HarnessError:
    text = str(exc).strip().splitlines()
    detail = scrub(text[0] if text else "", token)[:300]
    name = type(exc).__name__
    return HarnessError(
        f"download of {model_id} failed while {what}: {name}" + (f": {detail}" if detail else ""),
        f"nothing unverified was recorded; fix the cause, then run: "
        f"llorch-pool models download {model_id}",
    )


def fetch_listing(repo: str, revision: str, endpoint: str, token: str | None
                  ) -> tuple[str, list[RemoteFile]]:
    """Resolve the revision to a commit sha, then list the tree at that exact commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint, token=token)
    info = api.model_info(repo, revision=revision)
    sha = info.sha or ""
    if not _SHA1_RE.fullmatch(sha):
        raise ValueError(f"hub answered revision {revision!r} with commit {sha!r}")
    listing: list[RemoteFile] = []
    for item in api.list_repo_tree(repo, recursive=True, expand=False, revision=sha):
        if not isinstance(item, RepoFile):
            continue
        lfs = getattr(item, "lfs", None)
        listing.append(RemoteFile(
            path=item.path, size=item.size, git_sha1=item.blob_id,
            sha256=lfs.sha256 if lfs is not None else None,
        ))
    return sha, listing


def _fetch_file(repo: str, sha: str, f: RemoteFile, model_dir: Path, endpoint: str,
                token: str | None, out: TextIO, force: bool) -> None:
    from huggingface_hub import hf_hub_download

    hf_hub_download(
        repo, f.path, revision=sha, local_dir=model_dir, endpoint=endpoint, token=token,
        force_download=force, tqdm_class=progress_class(f.path, out),
    )


# --------------------------------------------------------------------------- public API


def _print(out: TextIO, text: str) -> None:
    print(text, file=out, flush=True)


def download_model(
    paths: PoolPaths,
    model_id: str,
    *,
    force: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    out: TextIO | None = None,
    stall_timeout: float = hubdeadline.DEFAULT_STALL_S,
) -> DownloadResult:
    """Download, verify, record. Already verified (and not `force`): no network at all.

    `stall_timeout`: every hub answer must complete, and every file must keep delivering
    (hubdeadline.STALL_MIN_BYTES), within that many seconds; else one error line, and the
    model lock is released (issue 20 #11)."""
    out = out if out is not None else sys.stdout
    if not (isinstance(stall_timeout, int | float) and math.isfinite(stall_timeout)
            and stall_timeout > 0):
        raise HarnessError(f"stall timeout {stall_timeout!r} is not a positive number",
                           "pass --stall-timeout SECONDS", exit_code=2)
    cat.read_catalog(paths)  # an unparseable catalog stops us before anything else
    entry = cat.lookup_or_register(paths, model_id)
    if not force and quick_check(paths, entry):
        return _already(paths, entry, out)

    endpoint_url = resolve_endpoint(endpoint)
    tok = resolve_token(token)
    validate_repo_id(entry.repo)
    check_write_targets(paths, model_dir_for(paths, entry))  # before the lock file is made
    with model_lock(paths, model_id, out):
        entry = cat.read_catalog(paths).find(model_id) or entry
        if not force and quick_check(paths, entry):
            return _already(paths, entry, out)  # another process finished it while we waited
        repo = validate_repo_id(entry.repo)
        with hubdeadline.hub_deadlines(stall_timeout):
            return _download_locked(paths, entry, repo, endpoint_url, tok, force, out)


def _already(paths: PoolPaths, entry: cat.ModelEntry, out: TextIO) -> DownloadResult:
    _print(out, f"✅ Model {entry.id} already downloaded")
    files = _recorded_files(entry) or {}
    total = sum(int(v.get("size", 0)) for v in files.values())
    return DownloadResult(
        model_id=entry.id, path=model_dir_for(paths, entry), repo=entry.repo,
        revision=str(entry.metadata.get("revision", "")), size_bytes=total,
        size_gb=entry.size_gb, files=files, already_downloaded=True,
    )


def _download_locked(paths: PoolPaths, entry: cat.ModelEntry, repo: str, endpoint: str,
                     token: str | None, force: bool, out: TextIO) -> DownloadResult:
    model_id = entry.id
    model_dir = model_dir_for(paths, entry)
    _print(out, f"📥 Downloading {entry.name} from {repo}")
    _print(out, f"   Target: {paths.relative(model_dir)}")
    try:
        sha, listing = fetch_listing(repo, DEFAULT_REVISION, endpoint, token)
    except HarnessError:
        raise
    except KeyboardInterrupt as exc:
        raise _interrupted(model_id) from exc
    except Exception as exc:  # network, 4xx/5xx, bad JSON: nothing was written
        raise _hub_error(model_id, f"listing {repo} at {public_endpoint(endpoint)}", exc,
                         token) from exc
    files = select_files(listing, model_dir)  # refuses unsafe names before any write
    check_write_targets(paths, model_dir, [f.path for f in files])  # and symlinks

    if entry.downloaded:
        _set_downloaded(paths, entry, False)  # never true while files may change
    paths.writable_dir(model_dir)
    remove_partials(model_dir)
    fetched: list[str] = []
    current = ""
    try:
        for f in files:
            current = f.path
            target = safe_join(model_dir, f.path)
            if not force and target.is_file() and check_file(target, f) is None:
                continue  # kept from an earlier, interrupted run: already verified now
            discard_file(model_dir, f.path)
            _fetch_file(repo, sha, f, model_dir, endpoint, token, out, force)
            problem = check_file(target, f)
            if problem is not None:
                discard_file(model_dir, f.path)
                raise HarnessError(
                    f"verification failed for {model_id}/{f.path}: {problem}; "
                    "the file was deleted",
                    f"the hub or the network corrupted it; run: llorch-pool models download "
                    f"{model_id} (again)",
                )
            fetched.append(f.path)
    except HarnessError:
        remove_partials(model_dir)
        raise
    except KeyboardInterrupt as exc:
        remove_partials(model_dir)
        raise _interrupted(model_id) from exc
    except OSError as exc:
        remove_partials(model_dir)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            try:
                free = f"{human_bytes(shutil.disk_usage(model_dir).free)} free"
            except OSError:
                free = "free space unknown"
            raise HarnessError(
                f"disk full while downloading {model_id}/{current} to {model_dir} ({free}; "
                f"the model needs {human_bytes(sum(f.size for f in files))})",
                f"free space, then run: llorch-pool models download {model_id}",
            ) from exc
        raise _hub_error(model_id, f"fetching {current}", exc, token) from exc
    except Exception as exc:
        remove_partials(model_dir)
        raise _hub_error(model_id, f"fetching {current}", exc, token) from exc

    total = sum(f.size for f in files)
    metadata = dict(entry.metadata)
    metadata.update({
        "repo": repo,
        "revision": sha,
        "endpoint": public_endpoint(endpoint),
        "files": {f.path: f.record() for f in files},
        "size_bytes": total,
        "verified_at": cat.utc_now(),
    })
    gb = size_gb(total)
    _set_downloaded(paths, entry, True, metadata=metadata, size=gb)
    _print(out, f"✅ Model {model_id} downloaded successfully ({format_gb(gb)}, "
                f"{len(files)} files verified)")
    return DownloadResult(
        model_id=model_id, path=model_dir, repo=repo, revision=sha, size_bytes=total,
        size_gb=gb, files=metadata["files"], fetched=fetched,
    )


def _interrupted(model_id: str) -> HarnessError:
    return HarnessError(
        f"download of {model_id} interrupted; the entry stays downloaded: false",
        f"run: llorch-pool models download {model_id} (verified files are kept)",
        exit_code=130,
    )


def verify_model(
    paths: PoolPaths, model_id: str, *, out: TextIO | None = None, raise_on_failure: bool = True,
) -> VerifyResult:
    """Re-hash every recorded file offline. A mismatch marks the entry `downloaded: false`."""
    out = out if out is not None else sys.stdout
    catalog = cat.read_catalog(paths)
    validate_model_id(model_id)
    entry = catalog.find(model_id)
    if entry is None:
        raise HarnessError(f"model {model_id!r} is not in the catalog",
                           cat.known_ids_hint(catalog), 2)
    files = _recorded_files(entry)
    if files is None:
        raise HarnessError(
            f"model {model_id} has no recorded file hashes to verify against",
            f"run: llorch-pool models download {model_id}",
        )
    model_dir = model_dir_for(paths, entry)
    with model_lock(paths, model_id, out):  # never hash files a download is replacing
        entry = cat.read_catalog(paths).find(model_id) or entry
        files = _recorded_files(entry) or files
        return _verify_locked(paths, entry, files, model_dir, out, raise_on_failure)


def _verify_locked(paths: PoolPaths, entry: cat.ModelEntry, files: dict[str, dict[str, Any]],
                   model_dir: Path, out: TextIO, raise_on_failure: bool) -> VerifyResult:
    model_id = entry.id
    result = VerifyResult(model_id=model_id, path=model_dir, ok=True)
    started = time.monotonic()
    for name in sorted(files):
        problem = check_file(safe_join(model_dir, name), files[name])
        result.checked.append(name)
        if problem is not None:
            result.problems.append(f"{name}: {problem}")
    if not entry.downloaded:
        result.problems.append("catalog entry says downloaded: false")
    result.ok = not result.problems
    if result.ok:
        _print(out, f"✅ Model {model_id} verified: {len(files)} files match the recorded "
                    f"hashes ({time.monotonic() - started:.1f} s)")
        return result
    if entry.downloaded:
        _set_downloaded(paths, entry, False)
    if raise_on_failure:
        raise HarnessError(
            f"model {model_id} failed verification: {'; '.join(result.problems)}",
            f"the entry is downloaded: false now; run: llorch-pool models download {model_id}",
        )
    return result
