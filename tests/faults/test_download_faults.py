"""Item 4: downloads through the real huggingface_hub client against a faulty local hub.

Dropped connections (3 per file, resumed at 10 MiB boundaries for the 40 MiB weights),
same-size corruption served by the hub and written on disk after download, SIGKILL of
`llorch-pool models download` mid-transfer, and a full disk (a real tmpfs pool root).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llorch_harness.errors import HarnessError
from llorch_harness.lab.hub import LocalHub
from llorch_harness.lab.tinymodel import TINY_QWEN_REPO, build_tiny_model
from llorch_harness.pool import catalog as cat
from llorch_harness.pool import download as dl
from llorch_harness.pool.paths import PoolPaths

from .common import ANTI_HANG_S, LLORCH_POOL, clean_env, count, figure, wait_for

MIB = 1 << 20
BIG_REPO = "fault-org/big"
BIG_ID = "big"
BIG_WEIGHTS = "model.safetensors"
BIG_SIZE = 40 * MIB  # four 10 MiB resume blocks: three drops, each resumed with a Range
TINY_ID = "tiny-qwen"


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faulthub")
    build_tiny_model(root / TINY_QWEN_REPO)
    big = root / BIG_REPO
    big.mkdir(parents=True)
    tiny = root / TINY_QWEN_REPO
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(tiny / name, big / name)
    (big / BIG_WEIGHTS).write_bytes(random.Random(4).randbytes(BIG_SIZE))
    return root


@pytest.fixture
def hub(hub_root: Path) -> Iterator[LocalHub]:
    with LocalHub(hub_root) as h:
        h.prime()
        yield h


@pytest.fixture
def pool(tmp_path: Path) -> PoolPaths:
    paths = PoolPaths.at(tmp_path / "pool")
    cat.register_model(paths, BIG_ID, name="Big", repo=BIG_REPO, architecture="qwen")
    return paths


def env_for(hub: LocalHub, tmp: Path) -> dict[str, str]:
    return clean_env(HF_ENDPOINT=hub.url, HF_HOME=str(tmp / "hf-home"))


def pool_cli(pool: PoolPaths, env: dict[str, str], *args: str
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LLORCH_POOL), "models", *args, "--pool-root", str(pool.root)],
                          env=env, capture_output=True, text=True, timeout=ANTI_HANG_S,
                          check=False, stdin=subprocess.DEVNULL)


def entry(pool: PoolPaths, model_id: str) -> dict:
    data = json.loads(pool.catalog_path.read_text())
    return next(m for m in data["models"] if m["id"] == model_id)


def repo_files(hub_root: Path, repo: str) -> dict[str, bytes]:
    base = hub_root / repo
    return {p.name: p.read_bytes() for p in sorted(base.iterdir()) if p.is_file()
            and dl.matches_patterns(p.name)}


def temp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")
                  if p.name.endswith((".incomplete", ".tmp")) and p.is_file())


def unexpected_files(pool: PoolPaths, model_id: str, names: list[str]) -> list[str]:
    """Everything in the pool that a clean, finished download would not leave there."""
    allowed = {".test-models/catalog.json", ".test-models/catalog.json.lock",
               f".test-models/.locks/{model_id}.lock"}
    base = f".test-models/{model_id}"
    hfdir = f"{base}/.cache/huggingface"
    allowed |= {f"{hfdir}/.gitignore", f"{hfdir}/CACHEDIR.TAG"}
    for n in names:
        allowed |= {f"{base}/{n}", f"{hfdir}/download/{n}.lock",
                    f"{hfdir}/download/{n}.metadata"}
    found = {p.relative_to(pool.root).as_posix() for p in pool.root.rglob("*") if p.is_file()}
    return sorted(found - allowed)


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, r.stderr
    return lines[0]


# --------------------------------------------------------------------------- drops


def test_three_dropped_connections_per_file_still_complete(
        hub: LocalHub, hub_root: Path, pool: PoolPaths, tmp_path: Path) -> None:
    files = repo_files(hub_root, BIG_REPO)
    for name, data in files.items():
        cut = 11 * MIB if len(data) > 10 * MIB else max(1, len(data) // 2)
        hub.faults.drop_after(name, cut, times=3)
    r = pool_cli(pool, env_for(hub, tmp_path), "download", BIG_ID)
    assert r.returncode == 0, r.stderr[-2000:]
    gets = [q for q in hub.requests if q.route == "resolve" and q.method == "GET"]
    per_file = {}
    for name, data in files.items():
        mine = [q for q in gets if q.file == name]
        drops = [q for q in mine if q.fault == "drop_after" and q.bytes_sent < len(data)]
        assert len(drops) == 3, (name, [(q.status, q.range, q.bytes_sent) for q in mine])
        assert (pool.models_dir / BIG_ID / name).read_bytes() == data
        per_file[name] = {"requests": len(mine), "drops": len(drops),
                          "bytes_sent": sum(q.bytes_sent for q in mine)}
    big = [q for q in gets if q.file == BIG_WEIGHTS]
    resumed = [q for q in big if q.status == 206]
    assert len(resumed) >= 3  # resumed with a Range, not restarted
    assert per_file[BIG_WEIGHTS]["bytes_sent"] < 1.5 * BIG_SIZE
    e = entry(pool, BIG_ID)
    assert e["downloaded"] is True
    assert e["metadata"]["files"][BIG_WEIGHTS]["sha256"] == hashlib.sha256(
        files[BIG_WEIGHTS]).hexdigest()
    assert dl.verify_model(pool, BIG_ID, out=io.StringIO()).ok
    assert temp_files(pool.root) == []
    assert unexpected_files(pool, BIG_ID, list(files)) == []
    figure("download_drops", files=len(files), drops_per_file=3,
           drops_total=sum(v["drops"] for v in per_file.values()),
           weights_resumed_requests=len(resumed),
           weights_bytes_sent=per_file[BIG_WEIGHTS]["bytes_sent"], weights_size=BIG_SIZE,
           completed=True)


# --------------------------------------------------------------------------- corruption


def _mutate(data: bytes, rng: random.Random, k: int) -> tuple[bytes, str]:
    """A same-size change that certainly alters the content (XOR, never a no-op)."""
    buf = bytearray(data)
    kind = k % 5
    if kind == 0:
        off = rng.randrange(len(buf))
        buf[off] ^= 1 << rng.randrange(8)
        return bytes(buf), f"bit flip at {off}"
    if kind == 1:
        buf[0] ^= 0xFF
        return bytes(buf), "first byte"
    if kind == 2:
        buf[-1] ^= 0x01
        return bytes(buf), "last byte"
    n = min(len(buf), rng.randint(2, 4096))
    off = rng.randrange(len(buf) - n + 1)
    for i in range(off, off + n):
        buf[i] ^= 0x5A if kind == 3 else 0xFF
    return bytes(buf), f"{n} bytes at {off}"


def test_same_size_corruptions_all_detected(hub: LocalHub, hub_root: Path, pool: PoolPaths,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    n_hub, n_disk = count("hub_corruptions"), count("disk_corruptions")
    files = repo_files(hub_root, TINY_QWEN_REPO)
    names = sorted(files)
    out = io.StringIO()
    detected_hub = 0
    for i in range(n_hub):  # served corrupted by the hub: the download path must refuse it
        name = names[i % len(names)]
        hub.faults.clear()
        hub.faults.corrupt(name, times=1)
        with pytest.raises(HarnessError) as info:
            dl.download_model(pool, TINY_ID, force=True, out=out)
        msg = info.value.one_line()
        assert "verification failed" in msg and name in msg, msg
        assert entry(pool, TINY_ID)["downloaded"] is False
        assert not (pool.models_dir / TINY_ID / name).exists()  # deleted, never kept
        assert temp_files(pool.root) == []
        detected_hub += 1
    hub.faults.clear()
    dl.download_model(pool, TINY_ID, out=out)
    assert entry(pool, TINY_ID)["downloaded"] is True

    rng = random.Random(11)
    detected_disk = 0
    cli_checked = 0
    mdir = pool.models_dir / TINY_ID
    for k in range(n_disk):  # written on disk after a verified download: verify must see it
        name = names[k % len(names)]
        path = mdir / name
        good = path.read_bytes()
        bad, how = _mutate(good, rng, k)
        assert len(bad) == len(good) and bad != good
        path.write_bytes(bad)
        if k % 10 == 0:  # now and then through the CLI: one line, non-zero, no traceback
            r = pool_cli(pool, clean_env(HF_ENDPOINT=hub.url), "verify", TINY_ID)
            assert r.returncode != 0
            line = one_error_line(r)
            assert name in line and "failed verification" in line, line
            cli_checked += 1
        else:
            res = dl.verify_model(pool, TINY_ID, out=out, raise_on_failure=False)
            assert not res.ok and any(p.startswith(f"{name}:") for p in res.problems), (how, res)
        assert entry(pool, TINY_ID)["downloaded"] is False
        detected_disk += 1
        path.write_bytes(good)  # restore, and mark it verified again for the next round
        assert dl.verify_model(pool, TINY_ID, out=out, raise_on_failure=False).problems == [
            "catalog entry says downloaded: false"]
        dl.download_model(pool, TINY_ID, out=out)  # re-verifies the kept files, no fetch
        assert entry(pool, TINY_ID)["downloaded"] is True
    figure("download_corruption", injected=n_hub + n_disk, detected=detected_hub + detected_disk,
           hub_served=n_hub, hub_detected=detected_hub, on_disk=n_disk,
           disk_detected=detected_disk, via_cli=cli_checked)


# --------------------------------------------------------------------------- SIGKILL


def test_sigkill_mid_download_then_rerun_completes(hub: LocalHub, hub_root: Path,
                                                   pool: PoolPaths, tmp_path: Path) -> None:
    cycles = count("download_kills")
    env = env_for(hub, tmp_path)
    files = repo_files(hub_root, BIG_REPO)
    mdir = pool.models_dir / BIG_ID
    phases = ("weights", "first-file", "force-weights")
    seen: list[str] = []
    leftovers_after_kill = 0
    for cycle in range(cycles):
        phase = phases[cycle % len(phases)]
        hub.faults.clear()
        if phase == "weights" and mdir.exists():  # a fresh pool again
            shutil.rmtree(mdir)
            cat.unregister_model(pool, BIG_ID)
            cat.register_model(pool, BIG_ID, name="Big", repo=BIG_REPO, architecture="qwen")
        if phase != "weights":  # a verified model being re-fetched must not stay true
            pool_cli(pool, env, "download", BIG_ID)
            assert entry(pool, BIG_ID)["downloaded"] is True
        hub.clear_requests()
        if phase == "first-file":
            hub.faults.stall("config.json", seconds=60, after_bytes=100)
        else:
            hub.faults.stall(BIG_WEIGHTS, seconds=60, after_bytes=15 * MIB)
        argv = [str(LLORCH_POOL), "models", "download", BIG_ID, "--pool-root", str(pool.root)]
        if phase != "weights":
            argv.append("--force")
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            def stalled(p: subprocess.Popen[bytes] = p) -> bool:
                hit = [q for q in hub.requests if q.fault == "stall"]
                return bool(hit) and hit[0].bytes_sent > 0 or p.poll() is not None

            wait_for(stalled, ANTI_HANG_S, f"the {phase} download to reach the stall")
            if phase != "first-file":  # 10 MiB already flushed into the .incomplete file
                wait_for(lambda p=p: any(f.stat().st_size >= 10 * MIB
                                         for f in mdir.rglob("*.incomplete")) or
                         p.poll() is not None, ANTI_HANG_S, "a 10 MiB .incomplete file")
            assert p.poll() is None, "the download ended before it could be killed"
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=ANTI_HANG_S)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        seen.append(phase)
        cat.Catalog.load(pool.catalog_path)  # whole and parseable
        assert entry(pool, BIG_ID)["downloaded"] is False  # nothing unverified marked true
        leftovers_after_kill += len(temp_files(pool.root))

        hub.faults.clear()
        r = pool_cli(pool, env, "download", BIG_ID)
        assert r.returncode == 0, r.stderr[-2000:]
        assert entry(pool, BIG_ID)["downloaded"] is True
        assert (mdir / BIG_WEIGHTS).read_bytes() == files[BIG_WEIGHTS]
        assert temp_files(pool.root) == []
        assert unexpected_files(pool, BIG_ID, list(files)) == []
        v = pool_cli(pool, env, "verify", BIG_ID)
        assert v.returncode == 0, v.stderr
    figure("download_sigkill", kills=cycles, phases=seen,
           temp_files_left_by_kills=leftovers_after_kill, temp_files_after_rerun=0,
           reruns_completed=cycles, unverified_marked_downloaded=0)


# --------------------------------------------------------------------------- full disk


def _tmpfs(tmp_path: Path, mib: int) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30,
                       capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs: the weights (40 MiB) cannot fit."""
    yield from _tmpfs(tmp_path, 8)


@pytest.fixture
def roomy_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 48 MiB tmpfs: the weights fit when the download starts."""
    yield from _tmpfs(tmp_path, 48)


def test_too_little_space_is_refused_before_any_byte(
        hub: LocalHub, small_fs: Path, tmp_path: Path) -> None:
    """The free-space check: the 40 MiB weights on an 8 MiB disk are refused up front, by
    name and figures; nothing fetched, the catalog as it was."""
    pool = PoolPaths.at(small_fs / "pool")
    cat.register_model(pool, BIG_ID, name="Big", repo=BIG_REPO, architecture="qwen")
    before = pool.catalog_path.read_bytes()
    r = pool_cli(pool, env_for(hub, tmp_path), "download", BIG_ID)
    assert r.returncode != 0
    line = one_error_line(r)
    assert "not enough disk space" in line and BIG_ID in line and "free" in line, line
    assert pool.catalog_path.read_bytes() == before
    assert temp_files(pool.root) == []
    assert not any(rec.file == BIG_WEIGHTS for rec in hub.requests if rec.method == "GET")
    figure("download_no_space", tmpfs_bytes=8 * MIB, weights_bytes=BIG_SIZE,
           message=line, catalog_unchanged=True, temp_files_left=0)


def test_full_disk_fails_clearly_and_leaves_catalog_untouched(
        hub: LocalHub, roomy_fs: Path, tmp_path: Path) -> None:
    """The disk fills up while the weights arrive (another writer takes the space after the
    check passed): one line naming the disk, the catalog untouched, no partial file left."""
    pool = PoolPaths.at(roomy_fs / "pool")
    cat.register_model(pool, BIG_ID, name="Big", repo=BIG_REPO, architecture="qwen")
    before = pool.catalog_path.read_bytes()
    hub.faults.stall(BIG_WEIGHTS, seconds=3.0, after_bytes=MIB)
    argv = [str(LLORCH_POOL), "models", "download", BIG_ID, "--keep-free", "0",
            "--pool-root", str(pool.root)]
    proc = subprocess.Popen(argv, env=env_for(hub, tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(rec.file == BIG_WEIGHTS for rec in hub.requests), 60,
                 "the weights' GET")
        with contextlib.suppress(OSError), open(roomy_fs / "filler", "wb") as fh:
            while True:  # the other writer: everything that is left
                fh.write(b"\0" * MIB)
                fh.flush()
        out, err = proc.communicate(timeout=ANTI_HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    r = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    assert r.returncode != 0
    line = one_error_line(r)
    assert "disk full" in line and BIG_ID in line and "free space" in line, line
    assert pool.catalog_path.read_bytes() == before
    assert temp_files(pool.root) == []
    figure("download_full_disk", tmpfs_bytes=48 * MIB, weights_bytes=BIG_SIZE,
           message=line, catalog_unchanged=True, temp_files_left=0)


def test_full_disk_while_writing_catalog_gives_one_line(small_fs: Path) -> None:
    """ENOSPC while the catalog itself is written: one error line, the old file whole."""
    pool = PoolPaths.at(small_fs / "pool")
    cat.register_model(pool, BIG_ID, name="Big", repo=BIG_REPO, architecture="qwen")
    before = pool.catalog_path.read_bytes()
    with open(small_fs / "filler", "wb", buffering=0) as fh, contextlib.suppress(OSError):
        for _ in range(64):
            fh.write(b"\0" * MIB)
    t0 = time.monotonic()
    r = subprocess.run([str(LLORCH_POOL), "models", "register", "mine", "--name", "Mine",
                        "--repo", "org/mine", "--architecture", "qwen", "--pool-root",
                        str(pool.root)], env=clean_env(), capture_output=True, text=True,
                       timeout=ANTI_HANG_S, check=False, stdin=subprocess.DEVNULL)
    assert time.monotonic() - t0 < ANTI_HANG_S
    assert pool.catalog_path.read_bytes() == before  # atomic write: the old file stays whole
    assert temp_files(pool.root) == []
    assert r.returncode != 0
    one_error_line(r)
