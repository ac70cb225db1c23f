"""Tests of the local hub through real sockets and the real huggingface_hub client.

Why: the hub stands in for huggingface.co in every download test, so it must satisfy
the exact client the harness ships with (huggingface_hub 2.4, `hf` CLI), and its
faults must really reach that client.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from llorch_harness.lab import hub as hubmod
from llorch_harness.lab.hub import LocalHub

REPO = "llorch-test/fake"
SECRET = b"TOP-SECRET-outside-root-7f3a"
WEIGHTS_SIZE = 2_500_000
PATTERNS = ["*.safetensors", "*.json"]
EXPECTED = {"model.safetensors", "config.json", "sub/extra.json"}


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def hub_root(tmp_path: Path) -> Path:
    """ROOT/llorch-test/fake plus traps: a dot-dir, a symlink out, a secret outside."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    root = tmp_path / "hub"
    repo = root / REPO
    (repo / "sub").mkdir(parents=True)
    (repo / ".cache").mkdir()
    (repo / "model.safetensors").write_bytes(random.Random(0).randbytes(WEIGHTS_SIZE))
    (repo / "config.json").write_text('{"model_type": "qwen2"}\n')
    (repo / "sub" / "extra.json").write_text('{"nested": true}\n')
    (repo / "README.md").write_text("# fake\n")
    (repo / ".cache" / "hidden.json").write_text("{}")
    (root / "llorch-test" / "stray.txt").write_bytes(SECRET)  # not inside a repo dir
    (repo / "leak.json").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.fixture
def hub(hub_root: Path) -> Iterator[LocalHub]:
    with LocalHub(hub_root) as h:
        yield h


@pytest.fixture
def hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Keep the client away from the real Hub and from the user's cache."""
    home = tmp_path / "hf-home"
    for key, value in {
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HOME": str(home),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return home


def download(hub: LocalHub, tmp_path: Path, name: str = "out", **kw: object) -> Path:
    out = tmp_path / name
    snapshot_download(
        REPO, local_dir=out, endpoint=hub.url, cache_dir=tmp_path / "hf-cache",
        allow_patterns=PATTERNS, token=False, **kw,  # type: ignore[arg-type]
    )
    return out


def downloaded(out: Path) -> set[str]:
    return {
        p.relative_to(out).as_posix() for p in out.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(out).parts
    }


def raw(hub: LocalHub, method: str, path: str,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def resolve_gets(hub: LocalHub, file: str) -> list[hubmod.RequestRecord]:
    return [r for r in hub.requests if r.route == "resolve" and r.method == "GET"
            and r.file == file]


# ----------------------------------------------------------------- happy paths


def test_snapshot_download_gets_the_right_files(hub: LocalHub, hub_root: Path,
                                                 tmp_path: Path, hf_env: Path) -> None:
    out = download(hub, tmp_path)
    assert downloaded(out) == EXPECTED
    for rel in EXPECTED:
        assert (out / rel).read_bytes() == (hub_root / REPO / rel).read_bytes()
    sha = hub.repo_sha(REPO)
    seen = [(r.method, r.path.split("?")[0], r.status) for r in hub.requests]
    assert seen[0] == ("GET", f"/api/models/{REPO}/revision/main", 200)
    assert seen[1] == ("GET", f"/api/models/{REPO}/tree/{sha}", 200)
    for rel in EXPECTED:
        assert ("HEAD", f"/{REPO}/resolve/{sha}/{rel}", 200) in seen
        assert ("GET", f"/{REPO}/resolve/{sha}/{rel}", 200) in seen
    assert not [r for r in hub.requests if r.route == "unknown" or r.status >= 400]
    assert hub.weight_bytes_sent() == WEIGHTS_SIZE

    # Again into the same dir: metadata requests only, no weight bytes.
    hub.clear_requests()
    download(hub, tmp_path)
    assert hub.weight_bytes_sent() == 0
    assert not [r for r in hub.requests if r.method == "GET" and r.route == "resolve"]

    # A sha revision skips the revision lookup: the tree listing comes first.
    hub.clear_requests()
    out = download(hub, tmp_path, "by-sha", revision=sha)
    assert downloaded(out) == EXPECTED
    assert hub.requests[0].route == "tree" and not [r for r in hub.requests if r.route == "info"]


def test_hf_cli_download(hub: LocalHub, hub_root: Path, tmp_path: Path, hf_env: Path) -> None:
    hf = Path(sys.executable).parent / "hf"
    out = tmp_path / "cli-out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(hf_env), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_UPDATE_CHECK="1", HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run(
        [str(hf), "download", REPO, "--include", "*.safetensors", "--include", "*.json",
         "--local-dir", str(out), "--format", "json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(json.loads(proc.stdout)["path"]) == out.resolve()
    assert downloaded(out) == EXPECTED
    assert (out / "model.safetensors").read_bytes() == (
        hub_root / REPO / "model.safetensors").read_bytes()
    # The CLI also asks for /api/agent-harnesses (agent detection); a 404 is fine.
    unexpected = {r.path for r in hub.requests if r.route == "unknown"}
    assert not unexpected


def test_tree_listing_and_info(hub: LocalHub, hub_root: Path, hf_env: Path) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    info = api.model_info(REPO)
    assert info.id == REPO and info.sha == hub.repo_sha(REPO) and len(info.sha) == 40
    assert info.private is False and info.gated is False
    assert {s.rfilename for s in info.siblings or []} == EXPECTED | {"README.md"}

    entries = list(api.list_repo_tree(REPO, recursive=True, revision=info.sha))
    files = {e.path: e for e in entries if isinstance(e, RepoFile)}
    assert set(files) == EXPECTED | {"README.md"}  # no .cache/, no symlink leaving ROOT
    assert [e.path for e in entries if isinstance(e, RepoFolder)] == ["sub"]
    for rel, entry in files.items():
        data = (hub_root / REPO / rel).read_bytes()
        assert entry.size == len(data) and entry.blob_id == git_oid(data)
        if rel.endswith(".safetensors"):
            assert entry.lfs is not None
            assert entry.lfs.sha256 == hashlib.sha256(data).hexdigest()
            assert entry.lfs.size == len(data)
        else:
            assert entry.lfs is None
    assert hubmod.is_lfs_path("notes.txt", (10 << 20) + 1)
    assert not hubmod.is_lfs_path("notes.txt", 10 << 20)
    top = {e.path for e in api.list_repo_tree(REPO, revision="main")}
    assert top == {"README.md", "config.json", "model.safetensors", "sub"}
    assert {e.path for e in api.list_repo_tree(REPO, path_in_repo="sub")} == {"sub/extra.json"}

    # The sha follows the content, and is the same for any server over the same files.
    with LocalHub(hub_root) as other:
        assert other.repo_sha(REPO) == info.sha
    (hub_root / REPO / "config.json").write_text('{"model_type": "llama"}\n')
    assert hub.repo_sha(REPO) != info.sha


def test_tree_paging(hub: LocalHub, hub_root: Path, tmp_path: Path, hf_env: Path) -> None:
    hub.page_size = 2
    api = HfApi(endpoint=hub.url, token=False)
    paths = [e.path for e in api.list_repo_tree(REPO, recursive=True)]
    assert sorted(paths) == sorted(EXPECTED | {"README.md", "sub"})
    pages = [r for r in hub.requests if r.route == "tree"]
    assert len(pages) == 3 and "cursor=2" in pages[1].path

    hub.clear_requests()
    out = download(hub, tmp_path)
    assert downloaded(out) == EXPECTED
    assert len([r for r in hub.requests if r.route == "tree"]) == 3


# ----------------------------------------------------------------- HTTP details


def test_head_range_and_keepalive(hub: LocalHub, hub_root: Path) -> None:
    data = (hub_root / REPO / "model.safetensors").read_bytes()
    sha = hub.repo_sha(REPO)
    status, h, body = raw(hub, "HEAD", f"/{REPO}/resolve/main/model.safetensors")
    assert status == 200 and body == b""
    assert h["x-repo-commit"] == sha
    assert h["etag"] == h["x-linked-etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert h["x-linked-size"] == h["content-length"] == str(len(data))
    assert h["accept-ranges"] == "bytes"
    assert not [k for k in h if "xet" in k] and "link" not in h

    status, h, _ = raw(hub, "HEAD", f"/{REPO}/resolve/{sha}/config.json")
    cfg = (hub_root / REPO / "config.json").read_bytes()
    assert status == 200 and h["etag"] == f'"{git_oid(cfg)}"' and "x-linked-etag" not in h

    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    try:  # several requests on one keep-alive connection: lengths must be exact
        cases = [("bytes=100-", 100, len(data) - 1), ("bytes=10-19", 10, 19),
                 ("bytes=-5", len(data) - 5, len(data) - 1)]
        for rng, first, last in cases:
            conn.request("GET", f"/{REPO}/resolve/main/model.safetensors", headers={"Range": rng})
            resp = conn.getresponse()
            assert resp.status == 206
            assert resp.getheader("Content-Range") == f"bytes {first}-{last}/{len(data)}"
            assert resp.read() == data[first:last + 1]
        conn.request("GET", f"/{REPO}/resolve/main/model.safetensors",
                     headers={"Range": f"bytes={len(data)}-"})
        resp = conn.getresponse()
        assert resp.status == 416 and resp.getheader("Content-Range") == f"bytes */{len(data)}"
        resp.read()
        conn.request("GET", f"/{REPO}/resolve/main/sub/extra.json")
        resp = conn.getresponse()
        extra = (hub_root / REPO / "sub/extra.json").read_bytes()
        assert resp.status == 200 and resp.read() == extra
    finally:
        conn.close()
    assert [r.range for r in hub.requests[-5:-2]] == ["bytes=100-", "bytes=10-19", "bytes=-5"]
    assert hub.requests[-5].bytes_sent == len(data) - 100


def test_error_codes(hub: LocalHub, tmp_path: Path, hf_env: Path) -> None:
    cases = [
        ("/api/models/nobody/nothing/revision/main", "RepoNotFound"),
        (f"/api/models/{REPO}/revision/{'0' * 40}", "RevisionNotFound"),
        (f"/api/models/{REPO}/tree/v9", "RevisionNotFound"),
        (f"/api/models/{REPO}/tree/main/nowhere", "EntryNotFound"),
        ("/nobody/nothing/resolve/main/config.json", "RepoNotFound"),
        (f"/{REPO}/resolve/v9/config.json", "RevisionNotFound"),
        (f"/{REPO}/resolve/main/missing.json", "EntryNotFound"),
        (f"/{REPO}/resolve/main/.cache/hidden.json", "EntryNotFound"),
        (f"/{REPO}/resolve/main/leak.json", "EntryNotFound"),
    ]
    for path, code in cases:
        for method in ("GET", "HEAD"):
            status, h, body = raw(hub, method, path)
            assert (status, h.get("x-error-code")) == (404, code), (method, path)
            if method == "GET":
                assert "error" in json.loads(body)
    assert raw(hub, "POST", f"/api/models/{REPO}")[0] == 405
    assert hub.requests[-1].status == 405
    assert raw(hub, "GET", "/api/datasets/x/y")[0] == 404

    api = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/nothing")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="v9", local_dir=tmp_path / "o", endpoint=hub.url,
                          cache_dir=tmp_path / "c", token=False)
    with pytest.raises(EntryNotFoundError):
        huggingface_hub.hf_hub_download(REPO, "missing.json", local_dir=tmp_path / "o",
                                        endpoint=hub.url, cache_dir=tmp_path / "c",
                                        token=False)


@pytest.mark.parametrize("path", [
    "/llorch-test/fake/resolve/main/..%2F..%2F..%2Fsecret.txt",
    "/llorch-test/fake/resolve/main/../../../secret.txt",
    "/llorch-test/fake/resolve/main/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "/llorch-test/fake/resolve/main/%2E%2E%2F%2E%2E%2Fstray.txt",
    "/llorch-test/fake/resolve/main/..%5C..%5C..%5Csecret.txt",
    "/llorch-test/fake/resolve/main/..\\..\\..\\secret.txt",
    "/llorch-test/fake/resolve/main//etc/passwd",
    "/llorch-test/fake/resolve/main/%2Fetc%2Fpasswd",
    "/llorch-test/fake/resolve/main/sub/%00/../../../secret.txt",
    "/llorch-test/..%2F..%2Fsecret.txt/resolve/main/x",
    "/..%2F../resolve/main/secret.txt",
    "/llorch-test/../resolve/main/secret.txt",
    "/api/models/llorch-test/fake/tree/main/..%2F..%2F..",
    "/api/models/llorch-test/fake/tree/main/..?recursive=true",
    "/api/models/..%2Fllorch-test/fake",
    "http://127.0.0.1/../../secret.txt",
    "/llorch-test/fake/resolve/main/leak.json",
])
def test_traversal_never_escapes_root(hub: LocalHub, path: str) -> None:
    for method in ("GET", "HEAD"):
        status, _, body = raw(hub, method, path)
        assert status in (400, 404), (method, path, status)
        assert SECRET not in body and b"root:" not in body


# ----------------------------------------------------------------- faults


@pytest.mark.parametrize(("size", "drop_at", "resume_from"), [
    (WEIGHTS_SIZE, 1_000_000, None),  # < 10 MiB received: the client starts again (200)
    (12 << 20, 11 << 20, 10 << 20),  # it resumes only from 10 MiB chunk boundaries (206)
])
def test_drop_after_is_recovered_by_the_client(
    hub: LocalHub, hub_root: Path, tmp_path: Path, hf_env: Path,
    size: int, drop_at: int, resume_from: int | None,
) -> None:
    weights = hub_root / REPO / "model.safetensors"
    weights.write_bytes(random.Random(1).randbytes(size))
    hub.faults.drop_after("*.safetensors", drop_at, times=1)
    out = download(hub, tmp_path)
    assert (out / "model.safetensors").read_bytes() == weights.read_bytes()
    gets = resolve_gets(hub, "model.safetensors")
    assert len(gets) == 2
    assert (gets[0].status, gets[0].bytes_sent, gets[0].fault) == (200, drop_at, "drop_after")
    if resume_from is None:
        assert (gets[1].status, gets[1].range, gets[1].bytes_sent) == (200, None, size)
    else:
        assert (gets[1].status, gets[1].range) == (206, f"bytes={resume_from}-")
        assert gets[1].bytes_sent == size - resume_from
    assert hub.weight_bytes_sent() == drop_at + gets[1].bytes_sent
    assert hub.faults.active() == []


def test_corrupt_passes_the_clients_size_check(hub: LocalHub, hub_root: Path, tmp_path: Path,
                                               hf_env: Path) -> None:
    hub.faults.corrupt("*.safetensors")
    out = download(hub, tmp_path)
    good = (hub_root / REPO / "model.safetensors").read_bytes()
    got = (out / "model.safetensors").read_bytes()
    assert len(got) == len(good) and got != good
    assert hashlib.sha256(got).hexdigest() != hashlib.sha256(good).hexdigest()
    head = [r for r in hub.requests if r.method == "HEAD" and r.file == "model.safetensors"]
    assert head and head[0].fault is None  # headers still advertise the true hashes
    assert resolve_gets(hub, "model.safetensors")[0].fault == "corrupt"
    assert (out / "config.json").read_bytes() == (hub_root / REPO / "config.json").read_bytes()


def test_fail_5xx(hub: LocalHub, hub_root: Path, tmp_path: Path, hf_env: Path) -> None:
    # The revision lookup is not retried: the client falls back to (empty) local files.
    hub.faults.fail_5xx(503, times=1)
    with pytest.raises(LocalEntryNotFoundError):
        download(hub, tmp_path, "o1")
    assert [(r.status, r.fault) for r in hub.requests] == [(503, "fail_5xx")]

    # A failed HEAD on one file is retried once with backoff, and the download completes.
    hub.clear_requests()
    hub.faults.fail_5xx(500, times=1, path_glob="config.json")
    out = download(hub, tmp_path, "o2")
    assert downloaded(out) == EXPECTED
    cfg = [(r.method, r.status) for r in hub.requests if r.file == "config.json"]
    assert cfg == [("HEAD", 500), ("HEAD", 200), ("GET", 200)]


def test_not_found_and_stall(hub: LocalHub, tmp_path: Path, hf_env: Path) -> None:
    hub.faults.not_found("config.json", "EntryNotFound")
    with pytest.raises(EntryNotFoundError):
        download(hub, tmp_path, "o1")
    hub.faults.clear()
    hub.clear_requests()
    hub.faults.stall("config.json", 0.2)
    hub.faults.stall("*.safetensors", 0.2, after_bytes=1000)
    out = download(hub, tmp_path, "o2")
    assert downloaded(out) == EXPECTED
    faults = {(r.method, r.file): r.fault for r in hub.requests if r.fault}
    assert faults == {("HEAD", "config.json"): "stall", ("GET", "model.safetensors"): "stall"}


# ----------------------------------------------------------------- CLI and helpers


def test_serve_main_subprocess(hub_root: Path, tmp_path: Path) -> None:
    code = "import sys; from llorch_harness.cli.hub_cmd import serve_main; sys.exit(serve_main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(hub_root), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith(f"hub serving {hub_root} at http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        # issue 28 item 7: the export a download needs, ready to paste
        assert proc.stdout.readline().strip() == (
            f"in the shell that runs llorch-pool: export HF_ENDPOINT=http://127.0.0.1:{port} "
            "HF_HUB_DISABLE_XET=1")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/api/models/{REPO}")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["id"] == REPO
        conn.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert f"GET /api/models/{REPO} -> 200" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    bad = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_build_embedded_hub_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the wiring: tinymodel has its own tests."""
    calls: list[tuple[Path, int]] = []

    def fake_build(out_dir: Path, seed: int = 0) -> list[Path]:
        calls.append((out_dir, seed))
        (out_dir / "config.json").write_text("{}")
        return [out_dir / "config.json"]

    fake = types.ModuleType("llorch_harness.lab.tinymodel")
    fake.TINY_QWEN_REPO = "llorch-test/tiny-qwen"  # type: ignore[attr-defined]
    fake.build_tiny_model = fake_build  # type: ignore[attr-defined]
    import llorch_harness.lab

    monkeypatch.setitem(sys.modules, "llorch_harness.lab.tinymodel", fake)
    monkeypatch.setattr(llorch_harness.lab, "tinymodel", fake, raising=False)
    root = hubmod.build_embedded_hub_root(tmp_path / "hubroot", seed=3)
    assert root == tmp_path / "hubroot"
    assert calls == [(root / "llorch-test" / "tiny-qwen", 3)]
    with LocalHub(root) as h:
        assert h.repos() == ["llorch-test/tiny-qwen"]
        assert len(h.repo_sha("llorch-test/tiny-qwen")) == 40


# ----------------------------------------------------------------- issue 20 #11 faults


def _read_timed(hub: LocalHub, path: str, limit_s: float) -> tuple[bytes, list[float]]:
    """Read an answer's body, noting when bytes arrive, for at most `limit_s` seconds."""
    import socket as socketmod
    import time

    sock = socketmod.create_connection(("127.0.0.1", hub.port), timeout=5)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data, times = b"", []
    t0 = time.monotonic()
    sock.settimeout(0.5)
    try:
        while time.monotonic() - t0 < limit_s:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            data += chunk
            times.append(time.monotonic() - t0)
    finally:
        sock.close()
    return data, times


def test_trickle_sends_the_body_a_few_bytes_at_a_time(hub: LocalHub) -> None:
    hub.faults.trickle("config.json", 1, 0.1)
    sha = hub.repo_sha(REPO)
    data, times = _read_timed(hub, f"/{REPO}/resolve/{sha}/config.json", 1.0)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    assert 0 < len(body) < len('{"model_type": "qwen2"}\n')  # not all of it within 1 s
    assert len(times) >= 5  # many small arrivals: each read gets bytes, none times out
    assert resolve_gets(hub, "config.json")[0].fault == "trickle"


def test_trickle_applies_to_api_answers(hub: LocalHub) -> None:
    hub.faults.trickle("/api/*", 1, 0.1)
    data, times = _read_timed(hub, f"/api/models/{REPO}/revision/main", 1.0)
    assert b"\r\n\r\n" in data and not data.endswith(b"}")  # headers, then a trickle
    assert hub.requests[0].fault == "trickle"
    hub.faults.clear()
    status, _, body = raw(hub, "GET", f"/api/models/{REPO}/revision/main")
    assert status == 200 and json.loads(body)["id"] == REPO


@pytest.mark.parametrize("mode", ["self", "cycle", "endless"])
def test_tree_links_break_pagination(hub: LocalHub, mode: str) -> None:
    sha = hub.repo_sha(REPO)
    hub.faults.tree_links(mode)
    seen = []
    path = f"/api/models/{REPO}/tree/{sha}?recursive=true"
    for _ in range(4):
        status, headers, body = raw(hub, "GET", path)
        assert status == 200 and json.loads(body)
        nxt = headers["link"].split(";")[0].strip("<>")
        path = "/" + nxt.split("/", 3)[3]
        seen.append(path)
    if mode == "self":
        assert len(set(seen)) == 1
    elif mode == "cycle":
        assert len(set(seen)) == 2 and seen[0] == seen[2]
    else:
        assert len(set(seen)) == 4
    with pytest.raises(ValueError):
        hub.faults.tree_links("sideways")


@pytest.mark.parametrize("value", ["99999", "-1", "65536", "abc"])
def test_serve_refuses_a_port_outside_tcp(hub_root: Path, value: str) -> None:
    r = subprocess.run([sys.executable, "-m", "llorch_harness.cli.harness_main", "hub",
                        "serve", str(hub_root), "--port", value], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--port" in r.stderr
