"""Verified model downloads into the pool's catalog (`llorch-pool models download|verify`).

Why this shape: huggingface_hub only checks sizes while downloading, and a `local_dir`
download trusts its own `.cache` bookkeeping on the next run. A pool that promises
verified weights therefore lists the repo at one commit itself, refuses unsafe names
before writing anything, downloads file by file, hashes every file against the hub's
listing (sha256 of LFS files, git blob sha1 of the rest), and only then records
`downloaded: true` with the per-file hashes, so `verify` can re-check offline.

One download per model at a time, across processes (`.test-models/.locks/ID.lock`);
the catalog itself is only ever touched through `catalog.update_catalog`. The listing's
rules live in `hubfiles`, the model's directory and lock in `modelfiles`.
"""

from __future__ import annotations

import errno
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from llorch_harness.choices import UnknownName
from llorch_harness.errors import HarnessError, LabFailure
from llorch_harness.labretry import retry_once
from llorch_harness.pool import catalog as cat
from llorch_harness.pool import diskspace, hubdeadline
from llorch_harness.pool.hubfailure import hub_cause
from llorch_harness.pool.hubfiles import (
    DEFAULT_ENDPOINT,
    SHA1_RE,
    RemoteFile,
    check_file,
    matches_patterns,
    public_endpoint,
    resolve_endpoint,
    resolve_token,
    scrub,
    select_files,
    size_gb,
)
from llorch_harness.pool.modelfiles import (
    HF_DOWNLOAD_SUBDIR,
    LOCKS_DIRNAME,
    MODEL_LOCK_TIMEOUT_S,
    check_write_targets,
    discard_file,
    model_dir_for,
    model_lock,
    model_lock_path,
    quick_check,
    recorded_files,
    remove_partials,
    set_downloaded,
    write_targets,
)
from llorch_harness.pool.paths import PoolPaths, safe_join, validate_model_id, validate_repo_id
from llorch_harness.pool.progress import progress_class
from llorch_harness.pool.units import format_gb, human_bytes

__all__ = [  # the listing's rules live in hubfiles, the model's files in modelfiles
    "DEFAULT_ENDPOINT", "DEFAULT_REVISION", "HF_DOWNLOAD_SUBDIR", "LOCKS_DIRNAME",
    "MODEL_LOCK_TIMEOUT_S", "DownloadResult", "RemoteFile", "VerifyResult", "check_file",
    "check_write_targets", "discard_file", "download_model", "fetch_listing",
    "matches_patterns", "model_dir_for", "model_lock", "model_lock_path", "public_endpoint",
    "quick_check", "remove_partials", "resolve_endpoint", "resolve_token", "scrub",
    "select_files", "size_gb", "verify_model", "write_targets",
]

DEFAULT_REVISION = "main"


@dataclass
class DownloadResult:
    """What a download did: where the model lies, at which commit, which files it fetched."""

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
    """What `verify` found: every file checked, and each problem."""

    model_id: str
    path: Path
    ok: bool
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)



def _hub_error(model_id: str, what: str, exc: BaseException, token: str | None) -> HarnessError:
    text = str(exc).strip().splitlines()
    detail = scrub(text[0] if text else "", token)[:300]
    name = type(exc).__name__
    message = (f"download of {model_id} failed while {what}: {name}"
               + (f": {detail}" if detail else ""))
    hint = (f"nothing unverified was recorded; fix the cause, then run: "
            f"llorch-pool models download {model_id}")
    cause = hub_cause(exc)
    if cause is not None:  # the hub's availability, not the model: the lab's failure
        return LabFailure(cause[0], message, hint, transient=cause[1])
    return HarnessError(message, hint)


def _hub_call(model_id: str, what: str, token: str | None, fn: Any) -> Any:
    """`fn()` with the hub's unavailability as a LabFailure, retried once if transient."""
    def once() -> Any:
        try:
            return fn()
        except HarnessError:
            raise
        except Exception as exc:
            err = _hub_error(model_id, what, exc, token)
            if isinstance(err, LabFailure):
                raise err from exc
            raise
    return retry_once(once, f"{model_id}: {what}")


def fetch_listing(repo: str, revision: str, endpoint: str, token: str | None
                  ) -> tuple[str, list[RemoteFile]]:
    """Resolve the revision to a commit sha, then list the tree at that exact commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint, token=token)
    info = api.model_info(repo, revision=revision)
    sha = info.sha or ""
    if not SHA1_RE.fullmatch(sha):
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
    keep_free: int = diskspace.DEFAULT_KEEP_FREE,
) -> DownloadResult:
    """Download, verify, record. Already verified (and not `force`): no network at all.

    `stall_timeout`: every hub answer must complete, and every file must keep delivering
    (hubdeadline.STALL_MIN_BYTES), within that many seconds; else one error line, and the
    model lock is released (issue 20 #11). `keep_free`: bytes that must stay free on the
    model's filesystem after the download; checked once the listing is known, before any
    byte is fetched or the catalog changes (diskspace)."""
    out = out if out is not None else sys.stdout
    if not (isinstance(stall_timeout, int | float) and math.isfinite(stall_timeout)
            and stall_timeout > 0):
        raise HarnessError(f"stall timeout {stall_timeout!r} is not a positive number",
                           "pass --stall-timeout SECONDS", exit_code=2)
    if isinstance(keep_free, bool) or not isinstance(keep_free, int) or keep_free < 0:
        raise HarnessError(f"keep-free {keep_free!r} is not a size in bytes (0 or more)",
                           f"pass --keep-free SIZE: {diskspace.SIZE_FORMS}", exit_code=2)
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
            return _download_locked(paths, entry, repo, endpoint_url, tok, force, out,
                                    keep_free)


def _already(paths: PoolPaths, entry: cat.ModelEntry, out: TextIO) -> DownloadResult:
    _print(out, f"✅ Model {entry.id} already downloaded")
    files = recorded_files(entry) or {}
    total = sum(int(v.get("size", 0)) for v in files.values())
    return DownloadResult(
        model_id=entry.id, path=model_dir_for(paths, entry), repo=entry.repo,
        revision=str(entry.metadata.get("revision", "")), size_bytes=total,
        size_gb=entry.size_gb, files=files, already_downloaded=True,
    )



def _download_locked(paths: PoolPaths, entry: cat.ModelEntry, repo: str, endpoint: str,
                     token: str | None, force: bool, out: TextIO,
                     keep_free: int) -> DownloadResult:
    model_id = entry.id
    model_dir = model_dir_for(paths, entry)
    _print(out, f"📥 Downloading {entry.name} from {repo}")
    _print(out, f"   Target: {paths.relative(model_dir)}")
    sha, files = _listed_files(model_id, repo, endpoint, token, model_dir)
    check_write_targets(paths, model_dir, [f.path for f in files])  # and symlinks
    needed, free = diskspace.check_space(model_id, model_dir, [(f.path, f.size) for f in files],
                                         keep_free)  # before any write: a refusal changes nothing
    _print(out, f"   Disk: needs {diskspace.format_size(needed)}, "
                f"{diskspace.format_size(free)} free (keeps {diskspace.format_size(keep_free)})")
    if entry.downloaded:
        set_downloaded(paths, entry, False)  # never true while files may change
    paths.writable_dir(model_dir)
    remove_partials(model_dir)
    fetched = _fetch_all(model_id, repo, sha, files, model_dir, endpoint, token, out, force)
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
    set_downloaded(paths, entry, True, metadata=metadata, size=gb)
    _print(out, f"✅ Model {model_id} downloaded successfully ({format_gb(gb)}, "
                f"{len(files)} files verified)")
    return DownloadResult(
        model_id=model_id, path=model_dir, repo=repo, revision=sha, size_bytes=total,
        size_gb=gb, files=metadata["files"], fetched=fetched,
    )


def _listed_files(model_id: str, repo: str, endpoint: str, token: str | None,
                  model_dir: Path) -> tuple[str, list[RemoteFile]]:
    """The commit and the files to fetch; every name proven safe before any write."""
    try:
        sha, listing = _hub_call(
            model_id, f"listing {repo} at {public_endpoint(endpoint)}", token,
            lambda: fetch_listing(repo, DEFAULT_REVISION, endpoint, token))
    except HarnessError:
        raise
    except KeyboardInterrupt as exc:
        raise _interrupted(model_id) from exc
    except Exception as exc:  # network, 4xx/5xx, bad JSON: nothing was written
        raise _hub_error(model_id, f"listing {repo} at {public_endpoint(endpoint)}", exc,
                         token) from exc
    return sha, select_files(listing, model_dir)


def _fetch_all(model_id: str, repo: str, sha: str, files: list[RemoteFile], model_dir: Path,
               endpoint: str, token: str | None, out: TextIO, force: bool) -> list[str]:
    """Fetch and verify each file not already there and verified; -> the fetched paths.

    Any failure removes huggingface_hub's partial files and becomes one HarnessError line.
    """
    fetched: list[str] = []
    current = ""
    try:
        for f in files:
            current = f.path
            target = safe_join(model_dir, f.path)
            if not force and target.is_file() and check_file(target, f) is None:
                continue  # kept from an earlier, interrupted run: already verified now
            discard_file(model_dir, f.path)
            _hub_call(model_id, f"fetching {f.path}", token,
                      lambda f=f: _fetch_file(repo, sha, f, model_dir, endpoint, token, out,
                                              force))
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
    except (KeyboardInterrupt, Exception) as exc:
        remove_partials(model_dir)
        raise _fetch_failure(exc, model_id, current, files, model_dir, token) from exc
    return fetched


def _fetch_failure(exc: BaseException, model_id: str, current: str, files: list[RemoteFile],
                   model_dir: Path, token: str | None) -> HarnessError:
    """The one error line for a failed fetch: interrupted, disk full, or the hub's fault."""
    if isinstance(exc, KeyboardInterrupt):
        return _interrupted(model_id)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{human_bytes(shutil.disk_usage(model_dir).free)} free"
        except OSError:
            free = "free space unknown"
        return LabFailure(
            "disk full",
            f"disk full while downloading {model_id}/{current} to {model_dir} ({free}; "
            f"the model needs {human_bytes(sum(f.size for f in files))})",
            f"free space, then run: llorch-pool models download {model_id}",
        )
    return _hub_error(model_id, f"fetching {current}", exc, token)


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
    if entry is None and model_id in cat.known_models():
        raise HarnessError(f"model {model_id} is not downloaded in this pool ({paths.root})",
                           f"run: llorch-pool models download {model_id}", 2)
    if entry is None:
        raise UnknownName("model id", model_id, [m.id for m in catalog.models],
                          extra_hint="verify takes an id of this pool's catalog")
    files = recorded_files(entry)
    if files is None:
        raise HarnessError(
            f"model {model_id} has no recorded file hashes to verify against",
            f"run: llorch-pool models download {model_id}",
        )
    model_dir = model_dir_for(paths, entry)
    with model_lock(paths, model_id, out):  # never hash files a download is replacing
        entry = cat.read_catalog(paths).find(model_id) or entry
        files = recorded_files(entry) or files
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
        set_downloaded(paths, entry, False)
    if raise_on_failure:
        raise HarnessError(
            f"model {model_id} failed verification: {'; '.join(result.problems)}",
            f"the entry is downloaded: false now; run: llorch-pool models download {model_id}",
        )
    return result
