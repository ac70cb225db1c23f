"""Download figures (issue 8 item 4): `llorch-pool models download` against curl.

Why: a pool downloads ~1 GB before every gate; the harness's verified download must not
be much slower than a plain HTTP fetch of the same files from the same hub. Every figure
is a comparison measured in the same run (the machines are shared and noisy):

- curl vs `llorch-pool models download` on the same files from one LocalHub over
  127.0.0.1, interleaved (the order alternates per repeat); throughput ratio per repeat;
- the verification (hashing) share, from an in-process run whose fetch and check steps
  are timed by wrapping `download._fetch_file` and `download.check_file`;
- a no-op re-run of the command: wall time and weight bytes the hub sent
  (`hub.weight_bytes_sent()`), beside `llorch-pool --version` (interpreter floor).

The model is ~1 GiB: random bytes under a valid safetensors header, plus the tiny model's
JSON files (the download never loads it). Everything lives in one temp dir on the same
disk and is deleted at the end.

Run:  .venv/bin/python benchmarks/bench_download.py [--repeats 5] [--size-mib 1024]
      [--json PATH] [--md PATH]
Not a test: nothing is asserted and pytest never collects it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import io
import json
import os
import queue
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from benchstats import stats

from llorch_harness.fsutil import git_blob_sha1_file, sha256_file
from llorch_harness.lab.hub import LocalHub
from llorch_harness.lab.tinymodel import build_tiny_model
from llorch_harness.pool import catalog as cat
from llorch_harness.pool import download as dl
from llorch_harness.pool.paths import PoolPaths

REPO = "bench/big-qwen"
MODEL_ID = "bench-1g"
VENV_BIN = Path(sys.executable).parent
WRITE_CHUNK = 64 << 20
CMD_TIMEOUT_S = 300.0
PROTO_BUF = 8 << 20
PROTO_BUFFERS = 6


# --------------------------------------------------------------------------- helpers






def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def hub_env(url: str) -> dict[str, str]:
    """Environment for the command: our hub, no telemetry, no proxy for loopback."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(HF_ENDPOINT=url, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_UPDATE_CHECK="1", NO_PROXY="127.0.0.1,localhost")
    env.pop("HF_TOKEN", None)
    return env


def timed_run(argv: list[str], env: dict[str, str], log: Path) -> float:
    """Run argv to completion (bounded); return wall seconds; raise on failure."""
    with log.open("ab") as fh:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.STDOUT,
                              timeout=CMD_TIMEOUT_S, check=False)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}:\n{tail}")
    return wall


# --------------------------------------------------------------------------- the model


def write_big_safetensors(path: Path, size_bytes: int, seed: int = 0) -> int:
    """One F32 tensor of ``size_bytes`` random bytes under a valid header; returns file size."""
    cols = 1024
    rows = max(1, size_bytes // (4 * cols))
    n = rows * cols * 4
    header = {"__metadata__": {"format": "pt"},
              "model.embed_tokens.weight": {"dtype": "F32", "shape": [rows, cols],
                                            "data_offsets": [0, n]}}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    rng = np.random.default_rng(seed)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(head)) + head)
        left = n
        while left:
            k = min(WRITE_CHUNK, left)
            fh.write(rng.bytes(k))
            left -= k
    return path.stat().st_size


def build_repo(hub_root: Path, size_bytes: int) -> Path:
    """hub_root/bench/big-qwen: the tiny model's JSON files plus a big model.safetensors."""
    repo_dir = hub_root / REPO
    tiny = hub_root.parent / "tiny-src"
    build_tiny_model(tiny)
    repo_dir.mkdir(parents=True)
    for src in tiny.iterdir():
        if src.suffix == ".json":
            shutil.copyfile(src, repo_dir / src.name)
    shutil.rmtree(tiny)
    write_big_safetensors(repo_dir / "model.safetensors", size_bytes)
    return repo_dir


def selected_files(repo_dir: Path) -> list[str]:
    """The files the download selects (same patterns), so curl fetches exactly those."""
    names = [p.relative_to(repo_dir).as_posix() for p in repo_dir.rglob("*") if p.is_file()]
    return sorted(n for n in names if dl.matches_patterns(n))


# --------------------------------------------------------------------------- the runs


def run_curl(hub: LocalHub, files: list[str], dest: Path, log: Path) -> float:
    """One curl process fetching every file over one keep-alive connection."""
    dest.mkdir(parents=True)
    argv = ["curl", "-sS", "--fail", "--noproxy", "*"]
    for name in files:
        argv += ["-o", str(dest / name), f"{hub.url}/{REPO}/resolve/main/{name}"]
    wall = timed_run(argv, hub_env(hub.url), log)
    shutil.rmtree(dest)
    return wall


def fresh_pool(root: Path) -> PoolPaths:
    paths = PoolPaths.at(root)
    cat.register_model(paths, MODEL_ID, name="Bench 1 GiB", repo=REPO, architecture="qwen2",
                       backends=["cpu"])
    return paths


def run_cli(hub: LocalHub, root: Path, log: Path) -> dict[str, float]:
    """Fresh pool: full download, then the no-op re-run (time, weight bytes, requests)."""
    fresh_pool(root)
    argv = [str(VENV_BIN / "llorch-pool"), "--pool-root", str(root), "models", "download",
            MODEL_ID]
    env = hub_env(hub.url)
    full = timed_run(argv, env, log)
    hub.clear_requests()
    noop = timed_run(argv, env, log)
    out = {"full_s": full, "noop_s": noop, "noop_weight_bytes": float(hub.weight_bytes_sent()),
           "noop_requests": float(len(hub.requests))}
    shutil.rmtree(root)
    return out


@contextlib.contextmanager
def instrumented() -> Iterator[dict[str, float]]:
    """Time download._fetch_file and download.check_file while the block runs."""
    acc = {"fetch_s": 0.0, "check_s": 0.0}
    orig_fetch, orig_check = dl._fetch_file, dl.check_file

    def wrap(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def inner(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                acc[key] += time.perf_counter() - t0
        return inner

    dl._fetch_file = wrap(orig_fetch, "fetch_s")  # type: ignore[assignment]
    dl.check_file = wrap(orig_check, "check_s")  # type: ignore[assignment]
    try:
        yield acc
    finally:
        dl._fetch_file, dl.check_file = orig_fetch, orig_check  # type: ignore[assignment]


def run_inprocess(hub: LocalHub, root: Path) -> dict[str, float]:
    """download_model() in this process, split into fetch, check (hashing) and the rest."""
    paths = fresh_pool(root)
    with instrumented() as acc:
        t0 = time.perf_counter()
        dl.download_model(paths, MODEL_ID, endpoint=hub.url, out=io.StringIO())
        total = time.perf_counter() - t0
    shutil.rmtree(root)
    return {"total_s": total, **acc, "other_s": total - acc["fetch_s"] - acc["check_s"]}


def proto_fetch_hashing(url: str, dest: Path, size: int, sha256: str) -> float:
    """Prototype of the proposed download.py fix; returns seconds. Not used by the harness.

    One GET, `readinto` 8 MiB buffers (no per-64-KiB parsing, no BytesIO copy), each buffer
    written and handed to a second thread that feeds sha256 (hashlib drops the GIL), so
    hashing overlaps the transfer instead of re-reading the file afterwards.
    """
    parts = urlsplit(url)
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    h = hashlib.sha256()
    q: queue.Queue[memoryview | None] = queue.Queue(maxsize=PROTO_BUFFERS - 2)

    def hasher() -> None:
        while (b := q.get()) is not None:
            h.update(b)

    worker = threading.Thread(target=hasher, daemon=True)
    worker.start()
    bufs = [bytearray(PROTO_BUF) for _ in range(PROTO_BUFFERS)]
    got = i = 0
    tmp = dest.with_name(dest.name + ".incomplete")
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"prototype GET answered {resp.status}")
        with open(tmp, "wb", buffering=0) as fh:
            while n := resp.readinto(bufs[i % PROTO_BUFFERS]):
                view = memoryview(bufs[i % PROTO_BUFFERS])[:n]
                i += 1
                fh.write(view)
                q.put(view)
                got += n
    finally:
        q.put(None)
        worker.join(timeout=60)
        conn.close()
    if got != size or h.hexdigest() != sha256:
        raise RuntimeError("prototype fetch: size or sha256 mismatch")
    os.replace(tmp, dest)
    return time.perf_counter() - t0


def run_proto(hub: LocalHub, expected: dict[str, tuple[int, str]], dest: Path) -> float:
    """The prototype over every selected file (expected: name -> (size, sha256))."""
    dest.mkdir(parents=True)
    t0 = time.perf_counter()
    for name, (size, sha256) in sorted(expected.items()):
        proto_fetch_hashing(f"{hub.url}/{REPO}/resolve/main/{name}", dest / name, size, sha256)
    wall = time.perf_counter() - t0
    shutil.rmtree(dest)
    return wall


def hash_floor(path: Path) -> dict[str, float]:
    """sha256 and git-sha1 of the file alone (page cache warm): the verification floor."""
    t0 = time.perf_counter()
    sha256_file(path)
    t1 = time.perf_counter()
    git_blob_sha1_file(path)
    t2 = time.perf_counter()
    return {"sha256_s": t1 - t0, "sha1_s": t2 - t1}


# --------------------------------------------------------------------------- report


def measure(repeats: int, size_bytes: int, work: Path) -> dict[str, Any]:
    hub_root = work / "hub"
    t0 = time.perf_counter()
    repo_dir = build_repo(hub_root, size_bytes)
    build_s = time.perf_counter() - t0
    files = selected_files(repo_dir)
    total_bytes = sum((repo_dir / f).stat().st_size for f in files)
    expected = {f: ((repo_dir / f).stat().st_size, sha256_file(repo_dir / f)) for f in files}
    log = work / "commands.log"
    res: dict[str, Any] = {"files": files, "bytes": total_bytes, "build_s": build_s,
                           "repeats": repeats, "load_start": loadavg()}
    with LocalHub(hub_root) as hub:
        t0 = time.perf_counter()
        hub.prime()  # hub-side hashing, once; not part of any client's time
        res["hub_prime_s"] = time.perf_counter() - t0
        res["version_s"] = [timed_run([str(VENV_BIN / "llorch-pool"), "--version"],
                                      hub_env(hub.url), log) for _ in range(3)]
        # untimed warm-up: the first write into never-touched guest memory is several
        # times slower in a VM, and must not land on whichever client runs first
        run_curl(hub, files, work / "curl-warm", log)
        run_inprocess(hub, work / "pool-warm")
        curl, cli, inproc, proto = [], [], [], []
        for i in range(repeats):
            order = ("curl", "cli", "inproc", "proto")
            for what in order if i % 2 == 0 else order[::-1]:
                if what == "proto":
                    proto.append(run_proto(hub, expected, work / f"proto-{i}"))
                elif what == "curl":
                    curl.append(run_curl(hub, files, work / f"curl-{i}", log))
                elif what == "cli":
                    cli.append(run_cli(hub, work / f"pool-cli-{i}", log))
                else:
                    inproc.append(run_inprocess(hub, work / f"pool-in-{i}"))
            print(f"  repeat {i + 1}/{repeats}: curl {curl[-1]:.2f}s, cli {cli[-1]['full_s']:.2f}s"
                  f" (no-op {cli[-1]['noop_s']:.2f}s), in-process {inproc[-1]['total_s']:.2f}s"
                  f" (fetch {inproc[-1]['fetch_s']:.2f}s, check {inproc[-1]['check_s']:.2f}s),"
                  f" prototype {proto[-1]:.2f}s",
                  flush=True)
        res["hash_floor"] = hash_floor(repo_dir / "model.safetensors")
    res["load_end"] = loadavg()
    mb = total_bytes / 1e6
    res["curl_s"] = stats(curl)
    res["cli_s"] = stats([c["full_s"] for c in cli])
    res["curl_mbps"] = stats([mb / t for t in curl])
    res["cli_mbps"] = stats([mb / c["full_s"] for c in cli])
    res["ratio_cli"] = stats([c / x["full_s"] for c, x in zip(curl, cli, strict=True)])
    res["ratio_fetch"] = stats([c / x["fetch_s"] for c, x in zip(curl, inproc, strict=True)])
    res["ratio_inproc"] = stats([c / x["total_s"] for c, x in zip(curl, inproc, strict=True)])
    res["ratio_proto"] = stats([c / p for c, p in zip(curl, proto, strict=True)])
    res["inproc"] = {k: stats([x[k] for x in inproc]) for k in inproc[0]}
    res["check_share"] = stats([x["check_s"] / x["total_s"] for x in inproc])
    res["noop_s"] = stats([c["noop_s"] for c in cli])
    res["noop_weight_bytes"] = max(c["noop_weight_bytes"] for c in cli)
    res["noop_requests"] = max(c["noop_requests"] for c in cli)
    res["version_s"] = stats(res["version_s"])
    return res


def markdown(r: dict[str, Any], command: str) -> str:
    """The section RESULTS.md carries for item 4."""
    def s(d: dict[str, float], fmt: str = ".2f", unit: str = " s") -> str:
        return (f"median {d['median']:{fmt}}{unit}, p95 {d['p95']:{fmt}}{unit} "
                f"(min {d['min']:{fmt}}, max {d['max']:{fmt}}, n={d['n']})")

    ip = r["inproc"]
    gib = r["bytes"] / 2**30
    lines = [
        "## 4. Download: `llorch-pool models download` vs curl (same hub, same run)",
        "",
        f"- model: {len(r['files'])} files, {r['bytes']:,} bytes ({gib:.2f} GiB): "
        f"{', '.join(r['files'])}; LocalHub on 127.0.0.1 (sendfile), page cache warm",
        f"- command: `{command}`; load average {r['load_start']} at start, {r['load_end']} "
        "at end",
        f"- hub-side hashing at start (`hub.prime()`, not timed for any client): "
        f"{r['hub_prime_s']:.2f} s",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| curl, all files, one process | {s(r['curl_s'])}; {r['curl_mbps']['median']:.0f} MB/s |",
        f"| `llorch-pool models download` (fresh pool, end to end) | {s(r['cli_s'])}; "
        f"{r['cli_mbps']['median']:.0f} MB/s |",
        f"| **throughput ratio, command / curl** (target >= 0.8) | "
        f"{s(r['ratio_cli'], '.3f', '')} |",
        f"| ratio, in-process download_model() / curl | {s(r['ratio_inproc'], '.3f', '')} |",
        f"| ratio, fetch step alone (hf_hub_download) / curl | "
        f"{s(r['ratio_fetch'], '.3f', '')} |",
        f"| ratio, prototype fix (one pass: readinto + sha256 in a 2nd thread) / curl | "
        f"{s(r['ratio_proto'], '.3f', '')} |",
        f"| in-process: total | {s(ip['total_s'])} |",
        f"| in-process: fetch (hf_hub_download) | {s(ip['fetch_s'])} |",
        f"| in-process: verification (check_file: sha256 / git sha1) | {s(ip['check_s'])} |",
        f"| in-process: the rest (listing, catalog, lock, imports) | {s(ip['other_s'])} |",
        f"| **verification share of the download** | {s(r['check_share'], '.1%', '')} |",
        f"| floor: sha256 / git-sha1 of model.safetensors alone | "
        f"{r['hash_floor']['sha256_s']:.2f} s / {r['hash_floor']['sha1_s']:.2f} s |",
        f"| **no-op re-run (target < 1 s)** | {s(r['noop_s'])} |",
        f"| no-op: weight bytes sent / hub requests (target 0) | "
        f"{int(r['noop_weight_bytes'])} / {int(r['noop_requests'])} |",
        f"| floor: `llorch-pool --version` (interpreter + CLI import) | {s(r['version_s'])} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--tmp", type=Path, default=None,
                    help="parent of the temp dir (default: system temp; same disk as the pool)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    ap.add_argument("--md", type=Path, default=None, help="write the markdown section here")
    args = ap.parse_args(argv)
    if shutil.which("curl") is None:
        print("curl not found: the comparison needs it", file=sys.stderr)
        return 2
    command = " ".join(["python", "benchmarks/bench_download.py",
                        *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="bench-download-", dir=args.tmp) as tmp:
        res = measure(max(1, args.repeats), args.size_mib << 20, Path(tmp))
    text = markdown(res, command)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.md:
        args.md.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
