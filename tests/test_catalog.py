"""The model catalog and `llorch-pool models register|unregister|catalog|list`, as real processes.

Why: the catalog is shared with the Rust llorch-pool and edited by several processes at
once (xdist workers, terminals, ssh sessions); it must never lose an update, never be
half-written, never drop keys it does not know, and never be overwritten when unreadable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llorch_harness.errors import HarnessError
from llorch_harness.pool import catalog as cat
from llorch_harness.pool.paths import PoolPaths

LLORCH_POOL = Path(sys.executable).parent / "llorch-pool"
TIMEOUT = 120  # anti-hang only


@pytest.fixture
def pool(tmp_path: Path) -> PoolPaths:
    return PoolPaths.at(tmp_path / "pool")


def run(pool: PoolPaths, *args: str, cwd: Path | None = None,
        env_root: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LLORCH_POOL_ROOT"}
    argv = [str(LLORCH_POOL), "models", *args]
    if env_root:
        env["LLORCH_POOL_ROOT"] = str(pool.root)
    else:  # right after the action, so it also works before a `--`
        argv[3:3] = ["--pool-root", str(pool.root)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False, cwd=cwd, stdin=subprocess.DEVNULL)


def register(pool: PoolPaths, model_id: str, repo: str = "org/name",
             *extra: str) -> subprocess.CompletedProcess[str]:
    return run(pool, "register", model_id, "--name", f"Model {model_id}", "--repo", repo,
               "--architecture", "llama", *extra)


def catalog_json(pool: PoolPaths) -> dict:
    return json.loads(pool.catalog_path.read_text(encoding="utf-8"))


def temp_files(pool: PoolPaths) -> list[str]:
    return [p.name for p in pool.models_dir.iterdir() if p.name.endswith(".tmp")]


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    err = r.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return err


# --------------------------------------------------------------------------- CLI


def test_register_writes_cp2_record(pool: PoolPaths) -> None:
    r = register(pool, "llama-7b", "meta/Llama-7B", "--backends", "cpu,cuda,cpu")
    assert r.returncode == 0, r.stderr
    assert "Registered llama-7b" in r.stdout
    data = catalog_json(pool)
    assert set(data) >= {"version", "pool_id", "updated_at", "models"}
    assert data["version"] == "1.0" and data["updated_at"].endswith("Z")
    (m,) = data["models"]
    assert list(m) == ["id", "name", "path", "format", "size_gb", "architecture",
                       "downloaded", "backends", "metadata"]
    assert m == {
        "id": "llama-7b", "name": "Model llama-7b", "path": ".test-models/llama-7b",
        "format": "safetensors", "size_gb": 0.0, "architecture": "llama",
        "downloaded": False, "backends": ["cpu", "cuda"], "metadata": {"repo": "meta/Llama-7B"},
    }
    assert temp_files(pool) == []


def test_pool_root_from_environment(pool: PoolPaths) -> None:
    pool.root.mkdir(parents=True)
    r = run(pool, "register", "envy", "--name", "E", "--repo", "o/n", "--architecture", "x",
            env_root=True, cwd=pool.root.parent)
    assert r.returncode == 0, r.stderr
    assert [m["id"] for m in catalog_json(pool)["models"]] == ["envy"]


def test_register_duplicate_and_unregister(pool: PoolPaths) -> None:
    assert register(pool, "m1").returncode == 0
    dup = register(pool, "m1")
    assert dup.returncode == 2 and "already registered" in one_line_error(dup)
    r = run(pool, "unregister", "m1")
    assert r.returncode == 0 and "Unregistered m1" in r.stdout
    assert catalog_json(pool)["models"] == []
    gone = run(pool, "unregister", "m1")
    assert gone.returncode == 10 and "unknown model id 'm1'" in one_line_error(gone)
    assert temp_files(pool) == []


def test_catalog_table_and_list(pool: PoolPaths) -> None:
    empty = run(pool, "catalog")
    assert empty.returncode == 0 and "no models registered" in empty.stdout
    assert register(pool, "custom-1", "org/custom").returncode == 0
    table = run(pool, "catalog")
    assert table.returncode == 0
    assert "Model Catalog for" in table.stdout and "custom-1" in table.stdout
    assert "❌" in table.stdout
    as_json = run(pool, "catalog", "--json")
    assert json.loads(as_json.stdout) == catalog_json(pool)

    listing = run(pool, "list", "--json")
    rows = {r["id"]: r for r in json.loads(listing.stdout)}
    assert set(rows) == set(cat.known_models()) | {"custom-1"}
    assert rows["custom-1"]["registered"] is True and rows["custom-1"]["repo"] == "org/custom"
    assert rows["qwen-0.5b"]["registered"] is False
    assert rows["qwen-0.5b"]["repo"] == "Qwen/Qwen2.5-0.5B-Instruct"
    text = run(pool, "list")
    assert "qwen-0.5b" in text.stdout and "custom-1" in text.stdout


def test_downloaded_sizes_shown(pool: PoolPaths) -> None:
    def change(c: cat.Catalog) -> None:
        big = cat.known_models()["qwen-0.5b"]
        big.downloaded, big.size_gb = True, 0.988
        small = cat.known_models()["tiny-qwen"]
        small.downloaded, small.size_gb = True, 0.000552
        c.upsert(big)
        c.upsert(small)

    cat.update_catalog(pool, change)
    table = run(pool, "catalog").stdout
    assert "1.0 GB" in table and "0.6 MB" in table
    assert "yes (1.0 GB)" in run(pool, "list").stdout


# --------------------------------------------------------------------------- preservation


def test_unknown_keys_survive_a_rewrite(pool: PoolPaths) -> None:
    pool.models_dir.mkdir(parents=True)
    original = {
        "version": "1.0", "pool_id": "mac.home.arpa", "updated_at": "2025-01-01T00:00:00Z",
        "rust_extension": {"keep": [1, 2, 3]},
        "models": [{
            "id": "qwen-0.5b", "name": "Qwen", "path": ".test-models/qwen-0.5b",
            "format": "safetensors", "size_gb": 0.988, "architecture": "qwen",
            "downloaded": True, "backends": ["metal"],
            "metadata": {"repo": "Qwen/Qwen2.5-0.5B-Instruct", "quantization": "none"},
            "checksum_algo": "sha256", "notes": None,
        }],
    }
    pool.catalog_path.write_text(json.dumps(original), encoding="utf-8")
    assert register(pool, "other").returncode == 0
    data = catalog_json(pool)
    assert data["rust_extension"] == {"keep": [1, 2, 3]}
    assert data["pool_id"] == "mac.home.arpa"
    assert data["updated_at"] != "2025-01-01T00:00:00Z"
    assert data["models"][0] == original["models"][0]
    assert [m["id"] for m in data["models"]] == ["qwen-0.5b", "other"]


def test_concurrent_registrations_lose_nothing(pool: PoolPaths) -> None:
    """8 processes x 20 read-modify-writes each: every id must be there at the end."""
    script = (
        "import sys\n"
        "from llorch_harness.pool.catalog import register_model\n"
        "from llorch_harness.pool.paths import PoolPaths\n"
        "p = PoolPaths.at(sys.argv[1]); w = sys.argv[2]\n"
        "for i in range(20):\n"
        "    register_model(p, f'w{w}-m{i}', name='n', repo='org/name', architecture='a')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(pool.root), str(w)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for w in range(8)]
    try:
        results = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * 8, [e.decode()[-500:] for _, e in results]
    ids = [m["id"] for m in catalog_json(pool)["models"]]
    assert len(ids) == 160
    assert set(ids) == {f"w{w}-m{i}" for w in range(8) for i in range(20)}
    assert temp_files(pool) == []


# --------------------------------------------------------------------------- bad input


def test_unparseable_catalog_never_overwritten(pool: PoolPaths) -> None:
    pool.models_dir.mkdir(parents=True)
    for garbage in (b"{ this is not json", b'{"models": {"not": "a list"}}', b"\xff\xfe\x00",
                    b'{"models": [{"id": "a", "name": "b", "path": "c", "downloaded": "yes"}]}'):
        pool.catalog_path.write_bytes(garbage)
        for args in (("register", "new-one", "--name", "N", "--repo", "o/n",
                      "--architecture", "x"), ("unregister", "a"), ("catalog",), ("list",)):
            r = run(pool, *args)
            assert r.returncode != 0, args
            err = one_line_error(r)
            assert str(pool.catalog_path) in err and "left unchanged" in err
            assert pool.catalog_path.read_bytes() == garbage
    assert temp_files(pool) == []


@pytest.mark.parametrize("bad_id", ["..", "../escape", "a/b", "/abs", "a\\b", ".hidden",
                                    "x" * 4096, "-x", "sp ace"])
def test_bad_ids_refused_and_nothing_written(pool: PoolPaths, bad_id: str) -> None:
    for args in (("register", "--name", "N", "--repo", "o/n", "--architecture", "x",
                  "--", bad_id), ("unregister", "--", bad_id)):
        r = run(pool, *args)
        assert r.returncode == 2, r.stderr
        assert "invalid model id" in one_line_error(r)
        assert len(r.stderr) < 400  # a 4096-char id is cut, not echoed whole
    assert not pool.root.exists()


@pytest.mark.parametrize("bad_repo", ["../x", "a/b/c", "a\\b/c", "noslash", "/abs/x",
                                      "a/..", "a/b c"])
def test_bad_repo_ids_refused(pool: PoolPaths, bad_repo: str) -> None:
    r = register(pool, "fine", bad_repo)
    assert r.returncode == 2 and "invalid hub repo id" in one_line_error(r)
    assert not pool.root.exists()


def test_nul_in_id_refused_by_library(pool: PoolPaths) -> None:
    """argv cannot carry NUL, so the library is the boundary here."""
    for fn in (lambda: cat.register_model(pool, "a\x00b", name="n", repo="o/n",
                                          architecture="x"),
               lambda: cat.unregister_model(pool, "a\x00b"),
               lambda: cat.lookup_or_register(pool, "a\x00b")):
        with pytest.raises(HarnessError) as info:
            fn()
        assert info.value.exit_code == 2 and "\\x00" in info.value.message
    with pytest.raises(HarnessError):
        cat.register_model(pool, "ok", name="n", repo="o/n\x00", architecture="x")
    assert not pool.root.exists()


def test_unknown_backend_refused(pool: PoolPaths) -> None:
    r = register(pool, "m", "o/n", "--backends", "cpu,rocm")
    assert r.returncode == 11 and "unknown backend 'rocm'" in one_line_error(r)
    assert not pool.catalog_path.exists()


def test_known_models_registered_on_first_use(pool: PoolPaths) -> None:
    e = cat.lookup_or_register(pool, "qwen-0.5b")
    assert e.repo == "Qwen/Qwen2.5-0.5B-Instruct" and e.path == ".test-models/qwen-0.5b"
    again = cat.lookup_or_register(pool, "qwen-0.5b")
    assert again.to_json() == e.to_json()
    assert [m["id"] for m in catalog_json(pool)["models"]] == ["qwen-0.5b"]
    with pytest.raises(HarnessError) as info:
        cat.lookup_or_register(pool, "nope")
    assert info.value.exit_code == 10 and "qwen-0.5b" in (info.value.hint or "")


# --------------------------------------------------------------------------- issue 20


def test_null_fields_stay_null_through_a_register(pool: PoolPaths) -> None:
    """Issue 20 #14: `pool_id`, `architecture`, `format` null were rewritten as "None"."""
    pool.models_dir.mkdir(parents=True)
    pool.catalog_path.write_text(json.dumps({
        "version": "1.0", "pool_id": None, "updated_at": "2020-01-01T00:00:00Z",
        "models": [{"id": "a", "name": "A", "path": ".test-models/a", "format": None,
                    "size_gb": 0.0, "architecture": None, "downloaded": False,
                    "backends": ["cpu"], "metadata": {"note": None}}],
    }))
    r = register(pool, "b")
    assert r.returncode == 0, r.stderr
    data = catalog_json(pool)
    assert data["pool_id"] is None
    a = data["models"][0]
    assert a["format"] is None and a["architecture"] is None and a["metadata"] == {"note": None}
    assert "None" not in pool.catalog_path.read_text()
    table = run(pool, "catalog")
    assert table.returncode == 0, table.stderr


def test_non_text_format_is_refused_not_rewritten(pool: PoolPaths) -> None:
    pool.models_dir.mkdir(parents=True)
    data = b'{"models": [{"id": "a", "name": "A", "path": "p", "format": 7}]}'
    pool.catalog_path.write_bytes(data)
    r = register(pool, "b")
    assert r.returncode == 1 and "'format' must be a string or null" in one_line_error(r)
    assert pool.catalog_path.read_bytes() == data


@pytest.mark.parametrize("where", ["name", "id", "key", "pool_id"])
def test_lone_surrogate_in_catalog_is_one_line_everywhere(pool: PoolPaths, where: str) -> None:
    """Issue 20 #15: a name "\\ud800" gave UnicodeEncodeError tracebacks in `models catalog`,
    `status` and `register` (it can be neither printed nor written back as UTF-8)."""
    pool.models_dir.mkdir(parents=True)
    model = {"id": "a", "name": "A", "path": "p"}
    top: dict[str, object] = {"version": "1.0"}
    if where == "key":
        model["\ud800"] = 1
    elif where == "pool_id":
        top["pool_id"] = "\ud800"
    else:
        model[where] = "x\ud800"
    data = json.dumps({**top, "models": [model]}).encode()  # ensure_ascii: "\\ud800" escape
    pool.catalog_path.write_bytes(data)
    for args in (("catalog",), ("catalog", "--json"), ("list",),
                 ("register", "b", "--name", "B", "--repo", "o/b", "--architecture", "x")):
        err = one_line_error(run(pool, *args))
        assert "surrogate" in err and str(pool.catalog_path) in err, err
    status = subprocess.run([str(LLORCH_POOL), "status", "--pool-root", str(pool.root)],
                            capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert status.returncode == 1 and "Traceback" not in status.stderr, status.stderr
    assert "surrogate" in status.stderr
    assert pool.catalog_path.read_bytes() == data


def test_non_utf8_argument_is_one_usage_line(pool: PoolPaths) -> None:
    """Issue 20 #15: `--name $'caf\\xe9'` (not UTF-8) crashed the catalog write."""
    r = subprocess.run([os.fsencode(str(LLORCH_POOL)), b"models", b"register", b"cafe",
                        b"--name", b"caf\xe9", b"--repo", b"o/cafe", b"--architecture", b"x",
                        b"--pool-root", os.fsencode(str(pool.root))],
                       capture_output=True, timeout=TIMEOUT, check=False)
    stderr = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "UTF-8" in lines[0], stderr
    assert not pool.catalog_path.exists()


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-fifo", "directory", "socket", "device"])
def test_special_file_as_catalog_is_refused_without_blocking(pool: PoolPaths, kind: str,
                                                             tmp_path: Path) -> None:
    """Issue 20 #12: a FIFO as the catalog blocked `models list`/`register` forever."""
    import socket as socketmod

    pool.models_dir.mkdir(parents=True)
    sock = None
    if kind == "fifo":
        os.mkfifo(pool.catalog_path)
    elif kind == "symlink-to-fifo":
        os.mkfifo(tmp_path / "pipe")
        pool.catalog_path.symlink_to(tmp_path / "pipe")
    elif kind == "directory":
        pool.catalog_path.mkdir()
    elif kind == "device":
        pool.catalog_path.symlink_to("/dev/zero")
    else:
        sock = socketmod.socket(socketmod.AF_UNIX)
        sock.bind(str(pool.catalog_path))
    try:
        for args in (("list",), ("catalog",),
                     ("register", "b", "--name", "B", "--repo", "o/b", "--architecture", "x")):
            err = one_line_error(run(pool, *args))
            assert "not a regular file" in err and str(pool.catalog_path) in err, err
    finally:
        if sock is not None:
            sock.close()
    assert not pool.catalog_path.is_file()
    with pytest.raises(HarnessError, match="not a regular file"):
        cat.read_catalog(pool)


# ----------------------------------------------------------------- special files (issue 13)

_NEVER_OPENED = r"""
import os, sys
from pathlib import Path

watched = {os.path.realpath(p) for p in sys.argv[1:]}
opened = []


def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        if os.path.realpath(os.fsdecode(args[0])) in watched:
            opened.append(os.fsdecode(args[0]))


sys.addaudithook(hook)
from llorch_harness.errors import HarnessError
from llorch_harness.pool.catalog import Catalog

try:
    Catalog.load(Path(sys.argv[1]))
    print("LOADED")
except HarnessError as exc:
    print("ERROR", exc.one_line())
print("OPENED", opened)
"""


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-fifo", "symlink-to-device"])
def test_special_catalog_is_refused_and_never_opened(pool: PoolPaths, tmp_path: Path,
                                                     kind: str) -> None:
    """A catalog that is a FIFO, or a symlink to a FIFO or a device, is refused with one
    line and never opened: a Python audit hook in the reading process sees every open()."""
    pool.models_dir.mkdir(parents=True)
    target = pool.catalog_path
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink-to-fifo":
        os.mkfifo(tmp_path / "pipe")
        target.symlink_to(tmp_path / "pipe")
    else:
        target.symlink_to("/dev/zero")  # endless: a reader that trusted it never finishes
    r = subprocess.run([sys.executable, "-c", _NEVER_OPENED, str(target), str(target.resolve())],
                       capture_output=True, text=True, timeout=TIMEOUT, check=False,
                       stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("ERROR "), r.stdout
    assert "not a regular file" in lines[0] and str(target) in lines[0]
    assert lines[1] == "OPENED []", f"the catalog was opened: {lines[1]}"
    assert os.path.lexists(target)
