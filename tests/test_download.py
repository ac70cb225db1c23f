"""Verified downloads through the real huggingface_hub client against a real local hub.

Why: `llorch-pool models download` is what every pool runs first in CP3; these tests
prove the promises in docs/downloads.md across real sockets and real processes:
verified or not recorded, no weight bytes on a rerun, one download under concurrency,
clean failure on corruption, 5xx, interruption and bad input.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from llorch_harness.errors import HarnessError
from llorch_harness.lab.hub import LocalHub, build_embedded_hub_root
from llorch_harness.lab.tinymodel import TINY_QWEN_REPO
from llorch_harness.pool import download as dl
from llorch_harness.pool.hfcli import (
    DEFAULT_PATTERNS,
    check_hf_cli,
    find_hf_cli,
    hf_download_command,
)
from llorch_harness.pool.paths import PoolPaths
from llorch_harness.pool.progress import BarProgress, PlainProgress, progress_class

LLORCH_POOL = Path(sys.executable).parent / "llorch-pool"
MODEL = "tiny-qwen"
WEIGHTS = "model.safetensors"
TOKEN = "hf_TESTtokenNEVERprinted0123456789"
RUN_TIMEOUT = 180  # anti-hang only


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_embedded_hub_root(tmp_path_factory.mktemp("hubroot"))


@pytest.fixture
def hub(hub_root: Path) -> Iterator[LocalHub]:
    with LocalHub(hub_root) as h:
        yield h


@pytest.fixture
def pool(tmp_path: Path) -> PoolPaths:
    return PoolPaths.at(tmp_path / "pool")


def hub_client_env(hub_url: str, tmp_path: Path) -> dict[str, str]:
    """A clean client environment: the hub at `hub_url`, no saved login, no user cache."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("HF_", "HUGGING", "LLORCH_POOL_ROOT"))}
    e.update({
        "HF_ENDPOINT": hub_url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "NO_COLOR": "1",
    })
    return e


@pytest.fixture
def env(hub: LocalHub, tmp_path: Path) -> dict[str, str]:
    return hub_client_env(hub.url, tmp_path)


def repo_files(hub_root: Path) -> dict[str, bytes]:
    base = hub_root / TINY_QWEN_REPO
    return {p.relative_to(base).as_posix(): p.read_bytes()
            for p in base.rglob("*") if p.is_file()
            and dl.matches_patterns(p.relative_to(base).as_posix())}


def pool_cli(pool: PoolPaths, env: dict[str, str], *args: str,
             timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LLORCH_POOL), "models", *args, "--pool-root", str(pool.root)],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL,
    )


def entry(pool: PoolPaths) -> dict:
    data = json.loads(pool.catalog_path.read_text())
    return next(m for m in data["models"] if m["id"] == MODEL)


def leftovers(pool: PoolPaths) -> list[Path]:
    return list(pool.models_dir.rglob("*.incomplete"))


def model_dir(pool: PoolPaths) -> Path:
    return pool.models_dir / MODEL


def download_ok(pool: PoolPaths, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    r = pool_cli(pool, env, "download", MODEL)
    assert r.returncode == 0, r.stderr
    return r


# --------------------------------------------------------------------------- happy path


def test_download_verifies_and_records(hub: LocalHub, hub_root: Path, pool: PoolPaths,
                                       env: dict[str, str]) -> None:
    r = download_ok(pool, env)
    out = r.stdout
    assert f"📥 Downloading Tiny Qwen2 (embedded test model) from {TINY_QWEN_REPO}" in out
    assert f"   Target: .test-models/{MODEL}" in out
    assert f"✅ Model {MODEL} downloaded successfully" in out
    assert f"Downloaded {WEIGHTS}" in out  # plain progress lines: stdout is not a terminal

    expected = repo_files(hub_root)
    assert set(expected) == {"config.json", "generation_config.json", WEIGHTS,
                             "tokenizer.json", "tokenizer_config.json"}
    e = entry(pool)
    total = sum(len(b) for b in expected.values())
    assert e["downloaded"] is True
    assert e["path"] == f".test-models/{MODEL}"
    assert e["size_gb"] == round(total / 1e9, 6) and e["size_gb"] > 0
    md = e["metadata"]
    assert md["repo"] == TINY_QWEN_REPO
    assert md["revision"] == hub.repo_sha(TINY_QWEN_REPO)
    assert md["endpoint"] == hub.url
    assert md["size_bytes"] == total and md["verified_at"]
    for name, data in expected.items():
        assert (model_dir(pool) / name).read_bytes() == data
        rec = md["files"][name]
        assert rec["size"] == len(data)
        if name.endswith(".safetensors"):
            assert rec["sha256"] == hashlib.sha256(data).hexdigest()
        else:
            blob = b"blob %d\0" % len(data) + data
            assert rec["git_sha1"] == hashlib.sha1(blob).hexdigest()
    assert hub.weight_bytes_sent() == len(expected[WEIGHTS])
    assert not leftovers(pool)

    listing = pool_cli(pool, env, "list", "--json")
    row = next(x for x in json.loads(listing.stdout) if x["id"] == MODEL)
    assert row["downloaded"] is True and row["registered"] is True


def test_second_run_is_a_no_op_without_network(hub: LocalHub, pool: PoolPaths,
                                               env: dict[str, str]) -> None:
    download_ok(pool, env)
    before = pool.catalog_path.read_bytes()
    hub.clear_requests()
    r = download_ok(pool, env)
    assert f"✅ Model {MODEL} already downloaded" in r.stdout
    assert "📥" not in r.stdout
    assert hub.weight_bytes_sent() == 0
    assert hub.requests == []  # not even a listing
    assert pool.catalog_path.read_bytes() == before


def test_force_downloads_again(hub: LocalHub, hub_root: Path, pool: PoolPaths,
                               env: dict[str, str]) -> None:
    download_ok(pool, env)
    hub.clear_requests()
    r = pool_cli(pool, env, "download", MODEL, "--force")
    assert r.returncode == 0, r.stderr
    assert "downloaded successfully" in r.stdout
    assert hub.weight_bytes_sent() == len(repo_files(hub_root)[WEIGHTS])
    assert entry(pool)["downloaded"] is True


def test_in_process_api_and_tokens_from_env_at_call_time(
        hub: LocalHub, pool: PoolPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_ENDPOINT set after huggingface_hub was imported still wins (read at call time)."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = io.StringIO()
    res = dl.download_model(pool, MODEL, out=out)
    assert res.already_downloaded is False
    assert WEIGHTS in res.fetched and res.size_bytes > 0
    assert res.revision == hub.repo_sha(TINY_QWEN_REPO)
    again = dl.download_model(pool, MODEL, out=out)
    assert again.already_downloaded is True and again.files == res.files
    assert TOKEN not in out.getvalue()
    assert TOKEN not in pool.catalog_path.read_text()
    v = dl.verify_model(pool, MODEL, out=out)
    assert v.ok and sorted(v.checked) == sorted(res.files)


# --------------------------------------------------------------------------- faults


def test_dropped_connection_mid_file_still_completes(hub: LocalHub, hub_root: Path,
                                                     pool: PoolPaths,
                                                     env: dict[str, str]) -> None:
    size = len(repo_files(hub_root)[WEIGHTS])
    hub.faults.drop_after(WEIGHTS, size // 3)
    r = download_ok(pool, env)
    dropped = [q for q in hub.requests if q.file == WEIGHTS and q.fault == "drop_after"]
    assert dropped and dropped[0].bytes_sent < size  # the fault really hit the client
    assert entry(pool)["downloaded"] is True
    assert "downloaded successfully" in r.stdout
    assert not leftovers(pool)


def test_same_size_corruption_fails_and_removes_the_file(hub: LocalHub, pool: PoolPaths,
                                                         env: dict[str, str]) -> None:
    hub.faults.corrupt(WEIGHTS)
    r = pool_cli(pool, env, "download", MODEL)
    assert r.returncode != 0
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "verification failed" in err and WEIGHTS in err and "sha256" in err
    assert f"llorch-pool models download {MODEL}" in err
    assert "Traceback" not in r.stderr
    assert entry(pool)["downloaded"] is False
    assert not (model_dir(pool) / WEIGHTS).exists()
    assert not leftovers(pool)

    hub.faults.clear()
    hub.clear_requests()
    download_ok(pool, env)  # the rerun fetches the weights anew
    assert hub.weight_bytes_sent() > 0
    assert entry(pool)["downloaded"] is True


def test_5xx_gives_clear_error_and_keeps_downloaded_false(hub: LocalHub, pool: PoolPaths,
                                                          env: dict[str, str]) -> None:
    env["HF_TOKEN"] = TOKEN
    hub.faults.fail_5xx(503, times=None)
    r = pool_cli(pool, env, "download", MODEL)
    assert r.returncode != 0
    assert "503" in r.stderr and "failed" in r.stderr
    assert f"run: llorch-pool models download {MODEL}" in r.stderr
    assert "Traceback" not in r.stderr
    assert TOKEN not in r.stderr + r.stdout
    assert entry(pool)["downloaded"] is False
    assert not (model_dir(pool) / WEIGHTS).exists()


def test_missing_file_fails_then_rerun_fetches_only_what_is_missing(
        hub: LocalHub, hub_root: Path, pool: PoolPaths, env: dict[str, str]) -> None:
    hub.faults.not_found(WEIGHTS, "EntryNotFound")
    r = pool_cli(pool, env, "download", MODEL)
    assert r.returncode != 0 and WEIGHTS in r.stderr
    assert entry(pool)["downloaded"] is False
    assert (model_dir(pool) / "config.json").is_file()  # fetched before the failure

    hub.faults.clear()
    hub.clear_requests()
    download_ok(pool, env)
    fetched = {q.file for q in hub.requests if q.route == "resolve" and q.method == "GET"}
    # files go in sorted order: the two before the weights were kept and re-verified
    assert fetched == {WEIGHTS, "tokenizer.json", "tokenizer_config.json"}
    assert hub.weight_bytes_sent() == len(repo_files(hub_root)[WEIGHTS])
    assert entry(pool)["downloaded"] is True


def test_interrupt_leaves_nothing_half_written(hub: LocalHub, pool: PoolPaths,
                                              env: dict[str, str]) -> None:
    hub.faults.stall(WEIGHTS, seconds=30, after_bytes=1000)
    proc = subprocess.Popen(
        [str(LLORCH_POOL), "models", "download", MODEL, "--pool-root", str(pool.root)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not leftovers(pool):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "download of the weights never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and f"llorch-pool models download {MODEL}" in err
    assert entry(pool)["downloaded"] is False
    assert not leftovers(pool)
    assert not (model_dir(pool) / WEIGHTS).exists()
    hub.faults.clear()
    download_ok(pool, env)


# --------------------------------------------------------------------------- bad input


def test_unknown_id_lists_known_ids(hub: LocalHub, pool: PoolPaths,
                                    env: dict[str, str]) -> None:
    r = pool_cli(pool, env, "download", "no-such-model")
    assert r.returncode == 10  # choices.EXIT_CODES["model id"]
    assert "unknown model id 'no-such-model'" in r.stderr
    for known in ("tiny-qwen", "qwen-0.5b", "tinyllama", "phi3", "mistral"):
        assert known in r.stderr
    assert not pool.catalog_path.exists()
    assert hub.requests == []


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "x" * 4096, "-rf"])
def test_bad_model_id_refused(hub: LocalHub, pool: PoolPaths, env: dict[str, str],
                              bad: str) -> None:
    r = subprocess.run(
        [str(LLORCH_POOL), "models", "download", "--pool-root", str(pool.root), "--", bad],
        env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert not pool.root.exists() or not any(pool.root.rglob("catalog.json"))
    assert hub.requests == []


def test_unparseable_catalog_is_left_unchanged(hub: LocalHub, pool: PoolPaths,
                                               env: dict[str, str]) -> None:
    pool.models_dir.mkdir(parents=True)
    garbage = b'{"version": "1.0", "models": [ \x00 oops'
    pool.catalog_path.write_bytes(garbage)
    for args in (("download", MODEL), ("download", MODEL, "--force"), ("verify", MODEL)):
        r = pool_cli(pool, env, *args)
        assert r.returncode != 0
        assert str(pool.catalog_path) in r.stderr and "cannot parse catalog" in r.stderr
        assert pool.catalog_path.read_bytes() == garbage
    assert hub.requests == []
    assert not model_dir(pool).exists()


def _listing(*names: str) -> list[dl.RemoteFile]:
    return [dl.RemoteFile(n, 10, "a" * 40, "b" * 64 if n.endswith(".safetensors") else None)
            for n in names]


@pytest.mark.parametrize("evil", [
    "../evil.json", "/etc/evil.json", "sub/../../evil.json", "a\\..\\evil.json",
    "nul\x00.json", "ctl\x1b.json", "C:/evil.json", "%2e%2e/evil.json", "sub//x.json",
])
def test_malicious_listing_refused_before_any_write(tmp_path: Path, evil: str) -> None:
    target = tmp_path / "models" / "m"
    with pytest.raises(HarnessError) as info:
        dl.select_files(_listing("model.safetensors", evil), target)
    assert info.value.exit_code == 2
    assert "refusing hub file name" in info.value.message or "escapes" in info.value.message
    assert not (tmp_path / "models").exists()


def test_listing_escaping_through_symlink_refused(tmp_path: Path) -> None:
    target = tmp_path / "m"
    target.mkdir()
    (tmp_path / "outside").mkdir()
    (target / "sub").symlink_to(tmp_path / "outside")
    with pytest.raises(HarnessError, match="escapes"):
        dl.select_files(_listing("model.safetensors", "sub/x.json"), target)
    assert list((tmp_path / "outside").iterdir()) == []


def test_listing_filter_matches_hf_patterns(tmp_path: Path) -> None:
    names = ["model.safetensors", "README.md", "config.json", "onnx/model.json",
             "tokenizer.model", "sub/tokenizer.model", "pytorch_model.bin", "merges.txt"]
    chosen = [f.path for f in dl.select_files(_listing(*names), tmp_path)]
    assert chosen == ["config.json", "model.safetensors", "onnx/model.json", "tokenizer.model"]


def test_listing_without_hashes_or_weights_refused(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="no valid hash"):
        dl.select_files([dl.RemoteFile("model.safetensors", 1, "zz", None)], tmp_path)
    with pytest.raises(HarnessError, match=r"no \*\.safetensors"):
        dl.select_files(_listing("config.json"), tmp_path)


def test_endpoint_and_token_handling(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dl.public_endpoint("https://user:pw@hub.lan:8443/mirror/?t=x#f") == \
        "https://hub.lan:8443/mirror"
    monkeypatch.setenv("HF_ENDPOINT", "http://10.0.0.5:9000/")
    assert dl.resolve_endpoint(None) == "http://10.0.0.5:9000"
    assert dl.resolve_endpoint("http://x:1") == "http://x:1"
    monkeypatch.setenv("HF_ENDPOINT", "ftp://nope")
    with pytest.raises(HarnessError, match="invalid hub endpoint"):
        dl.resolve_endpoint(None)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert dl.resolve_token(None) == TOKEN
    msg = dl.scrub(f"401 for url with Authorization: Bearer {TOKEN}", TOKEN)
    assert TOKEN not in msg and "***" in msg
    assert "hf_abcdefgh12345" not in dl.scrub("leak hf_abcdefgh12345", None)


# --------------------------------------------------------------------------- verify


def test_verify_detects_a_modified_file(hub: LocalHub, hub_root: Path, pool: PoolPaths,
                                        env: dict[str, str]) -> None:
    download_ok(pool, env)
    ok = pool_cli(pool, env, "verify", MODEL)
    assert ok.returncode == 0 and "verified" in ok.stdout, ok.stderr

    weights = model_dir(pool) / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only a hash can tell
    weights.write_bytes(bytes(data))
    hub.clear_requests()
    bad = pool_cli(pool, env, "verify", MODEL)
    assert bad.returncode != 0
    assert WEIGHTS in bad.stderr and "sha256" in bad.stderr
    assert hub.requests == []  # verify is offline
    assert entry(pool)["downloaded"] is False

    download_ok(pool, env)  # the rerun replaces just the bad file
    assert hub.weight_bytes_sent() == len(repo_files(hub_root)[WEIGHTS])
    assert pool_cli(pool, env, "verify", MODEL).returncode == 0


def test_verify_of_model_never_downloaded(pool: PoolPaths, env: dict[str, str]) -> None:
    r = pool_cli(pool, env, "verify", MODEL)
    assert r.returncode != 0 and "not downloaded in this pool" in r.stderr
    assert f"run: llorch-pool models download {MODEL}" in r.stderr
    pool_cli(pool, env, "register", "mine", "--name", "Mine", "--repo", "org/mine",
             "--architecture", "qwen")
    r = pool_cli(pool, env, "verify", "mine")
    assert r.returncode != 0 and "no recorded file hashes" in r.stderr


# --------------------------------------------------------------------------- concurrency


def test_four_processes_download_once(hub: LocalHub, hub_root: Path, pool: PoolPaths,
                                      env: dict[str, str], tmp_path: Path) -> None:
    """The test holds the model lock until all four wait on it, so the race is certain."""
    lock = FileLock(str(dl.model_lock_path(pool, MODEL)))
    dl.model_lock_path(pool, MODEL).parent.mkdir(parents=True)
    lock.acquire()
    procs: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    try:
        for i in range(4):
            out, err = tmp_path / f"out{i}", tmp_path / f"err{i}"
            with open(out, "wb") as fo, open(err, "wb") as fe:
                p = subprocess.Popen(
                    [str(LLORCH_POOL), "models", "download", MODEL, "--pool-root",
                     str(pool.root)], env=env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                )
            procs.append((p, out, err))
        deadline = time.monotonic() + 120
        while not all("waiting for it" in o.read_text(encoding="utf-8", errors="replace")
                      for _, o, _ in procs):
            assert all(p.poll() is None for p, _, _ in procs), [e.read_text() for *_, e in procs]
            assert time.monotonic() < deadline, "not every process reached the lock"
            time.sleep(0.05)
        lock.release()
        for p, _, _ in procs:
            p.wait(timeout=RUN_TIMEOUT)
    finally:
        if lock.is_locked:
            lock.release()
        for p, _, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outs = [o.read_text(encoding="utf-8") for _, o, _ in procs]
    assert [p.returncode for p, _, _ in procs] == [0, 0, 0, 0], [e.read_text() for *_, e in procs]
    assert sum("downloaded successfully" in o for o in outs) == 1
    assert sum(f"Model {MODEL} already downloaded" in o for o in outs) == 3
    assert hub.weight_bytes_sent() == len(repo_files(hub_root)[WEIGHTS])
    assert entry(pool)["downloaded"] is True


# --------------------------------------------------------------------------- hf CLI


def test_hf_cli_found_and_works() -> None:
    path = find_hf_cli()
    assert path is not None and path.name == "hf"
    status = check_hf_cli()
    assert status.ok, status.message
    assert status.version and status.version[0].isdigit()


def test_hf_download_command_shape(tmp_path: Path) -> None:
    cmd = hf_download_command("Qwen/Qwen2.5-0.5B-Instruct", tmp_path / "d")
    assert Path(cmd[0]).name == "hf" and "huggingface-cli" not in " ".join(cmd)
    assert cmd[1:3] == ["download", "Qwen/Qwen2.5-0.5B-Instruct"]
    includes = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--include"]
    assert includes == list(DEFAULT_PATTERNS)
    assert cmd[-4:] == ["--local-dir", str(tmp_path / "d"), "--format", "json"]
    with pytest.raises(HarnessError):
        hf_download_command("../evil", tmp_path)


def test_hf_download_against_local_hub(hub: LocalHub, hub_root: Path, tmp_path: Path,
                                       env: dict[str, str]) -> None:
    dest = tmp_path / "manual"
    r = subprocess.run(hf_download_command(TINY_QWEN_REPO, dest), env=env,
                       capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert Path(json.loads(r.stdout)["path"]).resolve() == dest.resolve()
    for name, data in repo_files(hub_root).items():
        assert (dest / name).read_bytes() == data


# --------------------------------------------------------------------------- progress


def test_plain_progress_lines() -> None:
    out = io.StringIO()
    cls = progress_class("model.safetensors", out, tty=False)
    assert issubclass(cls, PlainProgress)
    bar = cls(total=2_000_000_000, initial=0, unit="B", unit_scale=True, desc="x")
    bar.interval_s = 0.0
    bar.update(900_000_000)
    bar.update(-100_000_000)  # a restarted resume rolls the counter back
    bar.update(1_200_000_000)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "Downloading model.safetensors: 45% (0.90/2.00 GB)"
    assert lines[-1] == "Downloaded model.safetensors (2.00 GB)"


def test_bar_progress_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    cls = progress_class("model.safetensors", out)
    assert issubclass(cls, BarProgress)
    with cls(total=1000, initial=0, unit="B", unit_scale=True, desc="ignored") as bar:
        bar.update(1000)
    assert "Downloading model.safetensors" in out.getvalue() and "100%" in out.getvalue()


def test_disk_full_is_reported_and_cleaned_up(hub: LocalHub, pool: PoolPaths,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk cannot be made here without mounting; the write fails as it would."""
    real_fetch = dl._fetch_file

    def fetch(repo, sha, f, model_dir, *args, **kwargs):  # type: ignore[no-untyped-def]
        if f.path != WEIGHTS:
            return real_fetch(repo, sha, f, model_dir, *args, **kwargs)
        part = model_dir / dl.HF_DOWNLOAD_SUBDIR / f"{WEIGHTS}.abc.1234.incomplete"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl, "_fetch_file", fetch)
    with pytest.raises(HarnessError) as info:
        dl.download_model(pool, MODEL, endpoint=hub.url, out=io.StringIO())
    assert "disk full" in info.value.message and WEIGHTS in info.value.message
    assert f"llorch-pool models download {MODEL}" in (info.value.hint or "")
    assert entry(pool)["downloaded"] is False
    assert not leftovers(pool)


def test_rust_style_entry_without_hashes_is_verified_not_refetched(
        hub: LocalHub, hub_root: Path, pool: PoolPaths, env: dict[str, str]) -> None:
    """A catalog written by `hf download` + the Rust pool has no hashes: hash, don't fetch."""
    download_ok(pool, env)
    data = json.loads(pool.catalog_path.read_text())
    for m in data["models"]:
        m["metadata"] = {"repo": m["metadata"]["repo"]}
    pool.catalog_path.write_text(json.dumps(data))
    hub.clear_requests()
    r = download_ok(pool, env)
    assert "downloaded successfully" in r.stdout
    assert hub.weight_bytes_sent() == 0
    assert entry(pool)["metadata"]["files"][WEIGHTS]["size"] == len(
        repo_files(hub_root)[WEIGHTS])


@pytest.mark.parametrize("columns", [0, 100])
def test_progress_bar_on_a_real_terminal(hub: LocalHub, pool: PoolPaths, env: dict[str, str],
                                         columns: int) -> None:
    """stdout on a pty gets the CP3 tqdm bar (0 columns: a pty whose size nobody set)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    proc = subprocess.Popen(
        [str(LLORCH_POOL), "models", "download", MODEL, "--pool-root", str(pool.root)],
        env=env, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL,
    )
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=RUN_TIMEOUT)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = b"".join(chunks).decode("utf-8", errors="replace")
    assert proc.returncode == 0, text
    assert f"Downloading {WEIGHTS}: 100%|" in text
    assert f"Downloaded {WEIGHTS} (" not in text  # the plain lines are for pipes only
    assert "downloaded successfully" in text


# --------------------------------------------------------------------------- symlinks (issue 20 #7)


def test_cache_symlink_is_refused_before_anything_is_written(hub: LocalHub, pool: PoolPaths,
                                                             tmp_path: Path) -> None:
    """The issue's case: a `.cache` link in the model directory made a download write lock
    and metadata files outside the pool root and delete `*.incomplete` files there."""
    outside = tmp_path / "outside"
    (outside / "huggingface" / "download").mkdir(parents=True)
    victim = outside / "huggingface" / "download" / "victim.incomplete"
    victim.write_text("precious")
    md = pool.models_dir / "tiny-qwen"
    md.mkdir(parents=True)
    (md / ".cache").symlink_to(outside)
    with pytest.raises(HarnessError, match="symbolic link") as info:
        dl.download_model(pool, "tiny-qwen", endpoint=hub.url, out=io.StringIO())
    assert info.value.exit_code == 2 and str(md / ".cache") in info.value.message
    assert sorted(p.name for p in outside.rglob("*")) == ["download", "huggingface",
                                                           "victim.incomplete"]
    assert not (pool.models_dir / ".locks").exists()  # refused before the lock file
    assert [r for r in hub.requests if r.route == "resolve"] == []


def test_remove_partials_never_follows_a_link(tmp_path: Path) -> None:
    md = tmp_path / "m"
    base = md / dl.HF_DOWNLOAD_SUBDIR
    base.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.incomplete").write_text("x")
    (base / "sub").symlink_to(outside)  # a linked subdirectory is not entered
    (base / "own.incomplete").write_text("partial")
    (base / "link.incomplete").symlink_to(outside / "a.incomplete")  # removed as a link
    removed = sorted(p.name for p in dl.remove_partials(md))
    assert removed == ["link.incomplete", "own.incomplete"]
    assert (outside / "a.incomplete").read_text() == "x"
    link_md = tmp_path / "m2"
    link_md.mkdir()
    (link_md / ".cache").symlink_to(md / ".cache")
    with pytest.raises(HarnessError, match="symbolic link"):
        dl.remove_partials(link_md)


# --------------------------------------------------------------------------- issue 20


@pytest.mark.parametrize("value", ["http://[::1", "ftp://h:99999", "http://h:99999",
                                   "http://h:abc", "http://", "file:///x", "http://a b",
                                   "http://h\udce9/"])
def test_bad_hub_endpoint_is_one_usage_error(value: str) -> None:
    """Issue 20 #15: `HF_ENDPOINT='http://[::1'` gave a ValueError traceback."""
    with pytest.raises(HarnessError) as info:
        dl.resolve_endpoint(value)
    assert info.value.exit_code == 2 and "invalid hub endpoint" in info.value.one_line()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -5.0])
def test_stall_timeout_that_never_expires_is_refused(tmp_path: Path, value: float) -> None:
    with pytest.raises(HarnessError) as info:
        dl.download_model(PoolPaths.at(tmp_path / "pool"), "tiny-qwen",
                          endpoint="http://127.0.0.1:9", stall_timeout=value)
    assert info.value.exit_code == 2
