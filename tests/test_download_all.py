"""`llorch-pool models download --all` and the free-space check, against a real local hub.

Why: CP4 (WU4.1) downloads about 22 GB per pool, smallest first; these tests prove what
docs/downloads.md promises for it across the real CLI, the real HTTP hub and the real
disk: the order, the plan, one failure not stopping the rest, the resume after Ctrl-C,
the no-network rerun, and a refusal (before any byte) when the disk is too small. The
hub serves tiny models under CP4's real repo names, so the built-in ids work unchanged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from llorch_harness.cli import llorch_main, pool_main
from llorch_harness.cli.pool_commands import KEEP_FREE_DEFAULT
from llorch_harness.lab.hub import LocalHub, build_embedded_hub_root
from llorch_harness.lab.tinymodel import build_tiny_model
from llorch_harness.pool import catalog as cat
from llorch_harness.pool import diskspace as ds
from llorch_harness.pool import downloadall
from llorch_harness.pool.download import HF_DOWNLOAD_SUBDIR, matches_patterns, model_lock_path
from llorch_harness.pool.paths import PoolPaths
from tests.test_download import hub_client_env

LLORCH_POOL = Path(sys.executable).parent / "llorch-pool"
RUN_TIMEOUT = 240  # anti-hang only
CP4_ARCH = {"qwen-0.5b": "qwen2", "tinyllama": "llama", "phi3": "phi3", "mistral": "mistral"}
WEIGHTS = "model.safetensors"
BIG = "model-00002-of-00002.safetensors"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded tiny repos, plus a tiny model under each CP4 model's real repo name."""
    root = build_embedded_hub_root(tmp_path_factory.mktemp("cp4hub"))
    known = cat.known_models()
    for model_id, arch in CP4_ARCH.items():
        build_tiny_model(root / known[model_id].repo, architecture=arch)
    return root


@pytest.fixture
def hub(hub_root: Path) -> Iterator[LocalHub]:
    with LocalHub(hub_root) as h:
        yield h


@pytest.fixture
def pool(tmp_path: Path) -> PoolPaths:
    return PoolPaths.at(tmp_path / "pool")


@pytest.fixture
def env(hub: LocalHub, tmp_path: Path) -> dict[str, str]:
    return hub_client_env(hub.url, tmp_path)


def pool_cli(pool: PoolPaths, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LLORCH_POOL), "models", *args, "--pool-root", str(pool.root)], env=env,
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
        stdin=subprocess.DEVNULL,
    )


def repo_bytes(hub_root: Path, repo: str, only: str | None = None) -> int:
    """What a download of `repo` takes: the files matching the download patterns."""
    base = hub_root / repo
    names = [p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()]
    return sum((base / n).stat().st_size for n in names
               if matches_patterns(n) and (only is None or n == only))


def expected_order(hub_root: Path) -> list[str]:
    known = cat.known_models()
    return sorted(CP4_ARCH, key=lambda m: (repo_bytes(hub_root, known[m].repo), m))


def entries(pool: PoolPaths) -> dict[str, dict]:
    return {m["id"]: m for m in json.loads(pool.catalog_path.read_text())["models"]}


def weight_repos(hub: LocalHub) -> list[str]:
    """Repos whose weights the hub sent, in the order their first weight GET began."""
    seen: list[str] = []
    for q in hub.requests:
        if q.route == "resolve" and q.method == "GET" and q.lfs and q.repo not in seen:
            seen.append(str(q.repo))
    return seen


def plan_ids(stdout: str) -> list[str]:
    return re.findall(r"^  \d+\. (\S+)", stdout, flags=re.MULTILINE)


def repo_of(model_id: str) -> str:
    return cat.known_models()[model_id].repo


# --------------------------------------------------------------------------- --all


def test_all_downloads_smallest_first_then_reruns_without_network(
        hub: LocalHub, hub_root: Path, pool: PoolPaths, env: dict[str, str]) -> None:
    order = expected_order(hub_root)
    # the tiny stand-ins are ordered unlike CP4's expected sizes: the listing must win
    assert order != ["qwen-0.5b", "tinyllama", "phi3", "mistral"]
    r = pool_cli(pool, env, "download", "--all")
    assert r.returncode == 0, r.stderr
    assert plan_ids(r.stdout) == order
    for model_id in order:
        size = repo_bytes(hub_root, repo_of(model_id))
        assert re.search(rf"^  \d+\. {re.escape(model_id)} .*\(listed\) +to download$",
                         r.stdout, flags=re.MULTILINE), r.stdout
        assert size > 0
    assert re.findall(r"^\[\d/4\] (\S+)$", r.stdout, flags=re.MULTILINE) == order
    assert weight_repos(hub) == [repo_of(m) for m in order]  # the hub saw that order too
    assert r.stdout.strip().splitlines()[-1] == "Summary: " + "; ".join(
        f"{m} downloaded" for m in order)
    got = entries(pool)
    assert set(got) == set(order)  # no embedded tiny model was added
    assert all(got[m]["downloaded"] is True for m in order)
    assert all(got[m]["metadata"]["files"][WEIGHTS]["sha256"] for m in order)

    hub.clear_requests()
    before = pool.catalog_path.read_bytes()
    again = pool_cli(pool, env, "download", "--all")
    assert again.returncode == 0, again.stderr
    assert hub.weight_bytes_sent() == 0 and hub.requests == []  # not even a listing
    assert plan_ids(again.stdout) == order
    assert again.stdout.count("already downloaded") >= 2 * len(order)  # plan + each model
    assert again.stdout.strip().splitlines()[-1] == "Summary: " + "; ".join(
        f"{m} already downloaded" for m in order)
    assert pool.catalog_path.read_bytes() == before


def test_catalog_models_join_and_embedded_ones_only_when_registered(
        hub: LocalHub, hub_root: Path, pool: PoolPaths) -> None:
    cat.lookup_or_register(pool, "tiny-phi3")  # an embedded model, registered
    cat.register_model(pool, "mine", name="Mine", repo="llorch-test/tiny-llama",
                       architecture="llama")
    plan = downloadall.make_plan(pool, hub.url, None, 30.0)
    ids = [i.entry.id for i in plan]
    assert sorted(ids) == sorted([*CP4_ARCH, "tiny-phi3", "mine"])
    assert not {"tiny-qwen", "tiny-llama", "tiny-mistral"} & set(ids)
    sizes = [i.size_bytes for i in plan]
    assert sizes == sorted(sizes) and all(i.source == "listed" for i in plan)
    mine = next(i for i in plan if i.entry.id == "mine")
    assert mine.size_bytes == repo_bytes(hub_root, "llorch-test/tiny-llama")
    assert set(entries(pool)) == {"tiny-phi3", "mine"}  # planning registers nothing


def test_one_failure_does_not_stop_the_others(hub: LocalHub, hub_root: Path, pool: PoolPaths,
                                              env: dict[str, str]) -> None:
    """The first model's weights are missing on the hub; tinyllama cannot even be listed
    (so it is planned by CP4's expected 2.2 GB, last). The other two still download."""
    order = expected_order(hub_root)
    first = order[0]
    assert first != "tinyllama"
    hub.faults.not_found(f"{repo_of(first)}/{WEIGHTS}", "EntryNotFound")
    hub.faults.not_found(f"/api/models/{repo_of('tinyllama')}*", "RepoNotFound")
    r = pool_cli(pool, env, "download", "--all")
    assert r.returncode == 1, r.stderr
    planned = [m for m in order if m != "tinyllama"] + ["tinyllama"]
    assert plan_ids(r.stdout) == planned
    assert re.search(r"^  4\. tinyllama +2\.20 GB \(expected\) +to download$", r.stdout,
                     flags=re.MULTILINE), r.stdout
    ok = [m for m in planned if m not in (first, "tinyllama")]
    assert weight_repos(hub) == [repo_of(m) for m in ok]
    summary = r.stdout.strip().splitlines()[-1]
    assert summary == "Summary: " + "; ".join(
        f"{m} {'failed' if m in (first, 'tinyllama') else 'downloaded'}" for m in planned)
    err = r.stderr.strip().splitlines()
    assert err[0].startswith(f"❌ {first} failed: download of {first} failed")
    assert err[1].startswith("❌ tinyllama failed: download of tinyllama failed while listing")
    assert err[-1] == (f"error: 2 of 4 models not downloaded: {first}, tinyllama (the lines "
                       "above say why; then run: llorch-pool models download --all "
                       "(verified models are skipped))")
    assert "Traceback" not in r.stderr
    got = entries(pool)
    assert [m for m in planned if got[m]["downloaded"]] == ok

    hub.faults.clear()
    hub.clear_requests()
    again = pool_cli(pool, env, "download", "--all")
    assert again.returncode == 0, again.stderr
    assert sorted(weight_repos(hub)) == sorted([repo_of(first), repo_of("tinyllama")])


def test_interrupted_run_resumes_on_the_next(hub: LocalHub, hub_root: Path, pool: PoolPaths,
                                             env: dict[str, str]) -> None:
    """Ctrl-C during the third model stops the run (exit 130); the rerun fetches only the
    third and fourth models' weights."""
    order = expected_order(hub_root)
    third = order[2]
    hub.faults.stall(f"{repo_of(third)}/{WEIGHTS}", seconds=30, after_bytes=1000)
    partials = pool.models_dir / third / HF_DOWNLOAD_SUBDIR
    proc = subprocess.Popen(
        [str(LLORCH_POOL), "models", "download", "--all", "--pool-root", str(pool.root)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(partials.rglob("*.incomplete")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the third model's weights never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert out.strip().splitlines()[-1] == (
        f"Summary: {order[0]} downloaded; {order[1]} downloaded; {third} failed; "
        f"{order[3]} not attempted")
    assert err.strip().splitlines()[-1].startswith(
        f"error: 2 of 4 models not downloaded: {third}, {order[3]} (interrupted)")
    got = entries(pool)
    assert got[order[0]]["downloaded"] and got[order[1]]["downloaded"]
    assert got[third]["downloaded"] is False and order[3] not in got
    assert not list(pool.models_dir.rglob("*.incomplete"))

    hub.faults.clear()
    hub.clear_requests()
    r = pool_cli(pool, env, "download", "--all")
    assert r.returncode == 0, r.stderr
    assert weight_repos(hub) == [repo_of(third), repo_of(order[3])]
    assert hub.weight_bytes_sent() == sum(
        repo_bytes(hub_root, repo_of(m), only=WEIGHTS) for m in order[2:])
    assert f"{order[0]} already downloaded; {order[1]} already downloaded; " in r.stdout


# --------------------------------------------------------------------------- free space


def test_free_space_refusal_is_real(hub: LocalHub, hub_root: Path, pool: PoolPaths,
                                    env: dict[str, str], tmp_path: Path) -> None:
    """--keep-free beyond the disk's real free space: refused before any byte, nothing
    changed, the model lock free. shutil.disk_usage is the real one."""
    cat.lookup_or_register(pool, "tiny-qwen")
    before = pool.catalog_path.read_bytes()
    keep = shutil.disk_usage(tmp_path).free + 2**40
    r = pool_cli(pool, env, "download", "tiny-qwen", "--keep-free", str(keep))
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    needed = ds.format_size(repo_bytes(hub_root, cat.TINY_QWEN_REPO))
    model_dir = pool.models_dir / "tiny-qwen"
    assert re.fullmatch(
        rf"error: not enough disk space for tiny-qwen: needs {re.escape(needed)} \+ "
        rf"{re.escape(ds.format_size(keep))} kept free \(--keep-free\), [0-9.]+ [KMGT]iB "
        rf"free in {re.escape(str(model_dir))} \(free space, or pass --pool-root on a "
        r"larger disk; nothing was downloaded\)", err), err
    assert [q for q in hub.requests if q.route == "resolve"] == []
    assert hub.weight_bytes_sent() == 0
    assert pool.catalog_path.read_bytes() == before
    assert not model_dir.exists()
    lock = FileLock(str(model_lock_path(pool, "tiny-qwen")))
    lock.acquire(timeout=0)  # released: no waiting
    lock.release()


def test_space_refusal_of_a_big_model_spares_the_smaller_ones(
        hub_root: Path, pool: PoolPaths, env: dict[str, str], tmp_path: Path) -> None:
    """A catalog model with a 2 GiB (sparse) shard on the hub, and a margin that leaves
    1 GiB of the disk's real free space to use: the big one is refused, the CP4 ones fit."""
    big_root = tmp_path / "bighub"
    shutil.copytree(hub_root / repo_of("phi3"), big_root / "org" / "big")
    for model_id in CP4_ARCH:
        shutil.copytree(hub_root / repo_of(model_id), big_root / repo_of(model_id))
    with open(big_root / "org" / "big" / BIG, "wb") as f:
        f.truncate(2 * ds.GIB)
    cat.register_model(pool, "big", name="Big", repo="org/big", architecture="phi3")
    with LocalHub(big_root) as hub:
        hub.prime()  # hash the shard now, not inside the client's first request
        env = {**env, "HF_ENDPOINT": hub.url}
        keep = shutil.disk_usage(tmp_path).free - ds.GIB
        r = pool_cli(pool, env, "download", "--all", "--keep-free", str(keep))
        assert hub.weight_bytes_sent() == sum(
            repo_bytes(hub_root, repo_of(m), only=WEIGHTS) for m in CP4_ARCH)
    assert r.returncode == 1, r.stderr
    assert plan_ids(r.stdout)[-1] == "big"
    assert "big failed" in r.stdout.splitlines()[-1]
    assert re.search(r"^❌ big failed: not enough disk space for big: needs 2\.\d\d GiB \+ ",
                     r.stderr, flags=re.MULTILINE), r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: 1 of 5 models not downloaded: big")
    got = entries(pool)
    assert all(got[m]["downloaded"] for m in CP4_ARCH) and got["big"]["downloaded"] is False
    assert not (pool.models_dir / "big").exists()


def test_needed_bytes_counts_what_is_there(tmp_path: Path) -> None:
    md = tmp_path / "m"
    (md / "sub").mkdir(parents=True)
    (md / "done.json").write_bytes(b"x" * 100)  # complete: needs nothing
    (md / "sub" / "short.safetensors").write_bytes(b"x" * 30)  # replaced: only the growth
    (md / "big.bin").write_bytes(b"x" * 500)  # larger than listed: never negative
    files = [("done.json", 100), ("sub/short.safetensors", 1000), ("big.bin", 200),
             ("missing.json", 70)]
    assert ds.needed_bytes(md, files) == 970 + 70
    part = md / HF_DOWNLOAD_SUBDIR / "sub"
    part.mkdir(parents=True)
    (part / "short.safetensors.abc.incomplete").write_bytes(b"p" * 400)  # deleted first
    (part / "notes.metadata").write_bytes(b"m" * 999)  # kept: not a partial file
    assert ds.partial_bytes(md) == 400
    assert ds.needed_bytes(md, files) == 1040 - 400
    (md / HF_DOWNLOAD_SUBDIR / "x.incomplete").write_bytes(b"p" * 5000)
    assert ds.needed_bytes(md, files) == 0
    assert ds.needed_bytes(tmp_path / "absent", [("a", 5)]) == 5


def test_space_arithmetic_and_message(tmp_path: Path) -> None:
    assert ds.shortfall(10, 100, 90) is False  # exactly the margin left
    assert ds.shortfall(11, 100, 90) is True
    assert ds.shortfall(0, 0, 10**12) is False  # nothing to write: nothing to refuse
    err = ds.space_error("mistral", Path("/pool/.test-models/mistral"), 14_484_000_000,
                         4_509_715_660, 2**30)
    assert err.one_line() == (
        "not enough disk space for mistral: needs 13.49 GiB + 1.00 GiB kept free "
        "(--keep-free), 4.20 GiB free in /pool/.test-models/mistral (free space, or pass "
        "--pool-root on a larger disk; nothing was downloaded)")
    assert "kept free" not in ds.space_error("m", tmp_path, 5, 1, 0).message
    assert ds.existing_ancestor(tmp_path / "a" / "b") == tmp_path
    assert ds.free_bytes(tmp_path / "a" / "b") > 0
    assert ds.check_space("m", tmp_path / "a", [("x", 1)], 0)[0] == 1


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("1048576", 2**20), ("500M", 500 * 2**20), ("5G", 5 * 2**30), ("5g", 5 * 2**30),
    ("1.5GiB", 3 * 2**29), ("2T", 2 * 2**40), ("4K", 4096), ("7B", 7), (" 1 G ", 2**30),
])
def test_parse_size(text: str, value: int) -> None:
    assert ds.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "5GB", "1MB", "-1G", "G", "1e9", "nan", "5 X", "1..2"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        ds.parse_size(text)


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("args", [[], ["tiny-qwen", "--all"]])
def test_model_id_or_all_exactly_one(pool: PoolPaths, args: list[str]) -> None:
    r = pool_cli(pool, dict(os.environ), "download", *args)
    assert r.returncode == 2
    assert r.stderr == ("error: give a model id or --all (not both) (e.g. llorch-pool models "
                        "download qwen-0.5b, or --all for CP4's models)\n")
    assert not pool.root.exists()


def test_bad_keep_free_is_a_usage_error(pool: PoolPaths) -> None:
    r = pool_cli(pool, dict(os.environ), "download", "--all", "--keep-free", "5GB")
    assert r.returncode == 2 and "not a size: '5GB'" in r.stderr
    assert not pool.root.exists()


def test_all_and_keep_free_travel_to_a_pool() -> None:
    ns = llorch_main.build_parser().parse_args(
        ["pool", "models", "download", "--all", "--keep-free", "5G", "--host", "mac"])
    sent = llorch_main.remote_args(("models", "download"), ns)
    assert sent == ["models", "download", "--all", "--keep-free=5368709120"]
    local = pool_main.build_parser().parse_args(sent)
    assert local.all is True and local.model_id is None and local.keep_free == 5 * 2**30
    assert KEEP_FREE_DEFAULT == ds.DEFAULT_KEEP_FREE
    default = pool_main.build_parser().parse_args(["models", "download", "tiny-qwen"])
    assert default.keep_free == ds.DEFAULT_KEEP_FREE and default.all is False
