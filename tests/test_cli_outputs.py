"""Issue 28 items 5 and 8, through the installed `llorch-pool`: every command names its pool
root (and says when a directory is not a pool, or a new one), `--json` on download, verify,
register, list, stop; progress lines without a terminal; `worker logs --pretty`; the one
rule of `worker stop` for what is not running.

Real parts: a LocalHub on a real port, the real huggingface_hub client in the command, a
reference worker process on a real port.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llorch_harness.choices import EXIT_CODES
from llorch_harness.lab.hub import LocalHub, build_embedded_hub_root
from tests.test_download import hub_client_env

LLORCH_POOL = Path(sys.executable).parent / "llorch-pool"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    with LocalHub(build_embedded_hub_root(tmp_path_factory.mktemp("hubroot"))) as h:
        yield h


def run(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LLORCH_POOL), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)


def test_download_names_a_new_pool_shows_progress_and_answers_json(hub: LocalHub,
                                                                   tmp_path: Path) -> None:
    env = hub_client_env(hub.url, tmp_path)
    root = tmp_path / "nope"
    res = run(env, "--pool-root", str(root), "models", "download", "tiny-qwen", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == (f"Pool root: {root} (from --pool-root); a new pool: nothing was "
                        "there yet")
    # stdout is a pipe here: progress comes as lines at 10 % steps, not as a bar
    steps = [ln for ln in lines if re.fullmatch(r"Downloading model\.safetensors: \d+% .*", ln)]
    assert steps, res.stdout
    assert "Downloaded model.safetensors" in res.stdout and "\r" not in res.stdout

    again = run(env, "--pool-root", str(root), "models", "download", "tiny-qwen", "--json",
                cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)  # stdout holds the JSON alone
    assert doc["pool_root"] == str(root) and doc["model_id"] == "tiny-qwen"
    assert doc["already_downloaded"] is True and "model.safetensors" in doc["files"]
    assert f"Pool root: {root} (from --pool-root)" in again.stderr

    verify = run(env, "--pool-root", str(root), "models", "verify", "tiny-qwen", "--json",
                 cwd=tmp_path)
    vdoc = json.loads(verify.stdout)
    assert verify.returncode == 0 and vdoc["ok"] is True and vdoc["problems"] == []
    assert "model.safetensors" in vdoc["checked"]

    reg = run(env, "--pool-root", str(root), "models", "register", "mine", "--name", "Mine",
              "--repo", "org/mine", "--architecture", "qwen2", "--json", cwd=tmp_path)
    rdoc = json.loads(reg.stdout)
    assert rdoc["pool_root"] == str(root) and rdoc["model"]["id"] == "mine"

    listing = run(env, "models", "list", cwd=root)  # the pool root from the directory
    assert listing.stdout.splitlines()[0] == f"Pool root: {root} (from the current directory)"


def test_a_directory_that_is_not_a_pool_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    res = run(env, "worker", "list", cwd=tmp_path)
    assert res.returncode == 0
    assert res.stdout.splitlines()[0] == (
        f"Pool root: {tmp_path} (from the current directory); not a pool: no .test-models/ "
        "or .runtime/ there (pass --pool-root DIR or set $LLORCH_POOL_ROOT)")
    status = run(env, "status", cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.splitlines()[0] == res.stdout.splitlines()[0]
    assert json.loads(run(env, "status", "--json", cwd=tmp_path).stdout)["is_pool"] is False
    logs = run(env, "worker", "logs", "worker-cpu-0", cwd=tmp_path)
    assert logs.returncode == EXIT_CODES["pool root"]
    assert logs.stderr.startswith(f"error: {tmp_path} (from the current directory) is not a "
                                  "pool")
    assert not (tmp_path / ".runtime").exists() and not (tmp_path / ".test-models").exists()


def test_worker_lifecycle_outputs(hub: LocalHub, tmp_path: Path) -> None:
    env = hub_client_env(hub.url, tmp_path)
    root = tmp_path / "pool"
    assert run(env, "--pool-root", str(root), "models", "download", "tiny-qwen",
               cwd=tmp_path).returncode == 0
    spawn = run(env, "--pool-root", str(root), "worker", "spawn", "cpu", "--model", "tiny-qwen",
                "--worker", "reference", "--port", "0", "--json", cwd=tmp_path)
    assert spawn.returncode == 0, spawn.stderr
    wid = json.loads(spawn.stdout)["worker_id"]
    try:
        parent = run(env, "worker", "list", cwd=tmp_path)  # the parent: not the pool
        assert "not a pool" in parent.stdout and wid not in parent.stdout
        listed = json.loads(run(env, "--pool-root", str(root), "worker", "list", "--json",
                                cwd=tmp_path).stdout)
        assert listed["pool_root"] == str(root)
        assert [w["worker_id"] for w in listed["workers"]] == [wid]

        raw = run(env, "--pool-root", str(root), "worker", "logs", wid, cwd=tmp_path)
        pretty = run(env, "--pool-root", str(root), "worker", "logs", wid, "--pretty",
                     cwd=tmp_path)
        assert pretty.returncode == 0, pretty.stderr
        json_lines = [json.loads(ln) for ln in raw.stdout.splitlines() if ln.startswith("{")]
        assert json_lines
        first = json_lines[0]
        said = first["fields"].get("message") or first["fields"]["human"]
        shown = pretty.stdout.splitlines()[0]
        assert shown.startswith(f"{first['timestamp']} {first['level']}")
        assert said in shown and not shown.lstrip().startswith("{")
    finally:
        stop = run(env, "--pool-root", str(root), "worker", "stop", wid, cwd=tmp_path)
    assert stop.returncode == 0, stop.stderr
    assert f"Pool root: {root}" in stop.stdout and f"Worker {wid} stopped" in stop.stdout

    # the one rule: stopping what is not running succeeds and says so, one or all
    again = run(env, "--pool-root", str(root), "worker", "stop", wid, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"Worker {wid} is not running (no record in this pool): nothing to stop" \
        in again.stdout
    as_json = run(env, "--pool-root", str(root), "worker", "stop", wid, "--json", cwd=tmp_path)
    assert json.loads(as_json.stdout) == [{"worker_id": wid, "step": "not_running",
                                           "seconds": 0.0, "port_free": True}]
    every = run(env, "--pool-root", str(root), "worker", "stop", "--all", cwd=tmp_path)
    assert every.returncode == 0 and "No workers to stop" in every.stdout
    every_json = run(env, "--pool-root", str(root), "worker", "stop", "--all", "--json",
                     cwd=tmp_path)
    assert every_json.returncode == 0 and json.loads(every_json.stdout) == []


def test_the_spawn_hint_runs_as_printed(hub: LocalHub, tmp_path: Path) -> None:
    """A hint never suggests a command that then fails: the download it names, typed in
    another directory, fills the pool the spawn looked at."""
    env = hub_client_env(hub.url, tmp_path)
    root = tmp_path / "pool"
    res = run(env, "worker", "spawn", "cpu", "--model", "tiny-qwen", "--worker", "reference",
              "--pool-root", str(root), cwd=tmp_path)
    assert res.returncode == 1
    hint = res.stderr.strip().rsplit("(Run: ", 1)[1].rstrip(")")
    assert hint == f"llorch-pool models download tiny-qwen --pool-root {root}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = hint.split()
    argv[0] = str(LLORCH_POOL)  # the installed `llorch-pool`, whatever PATH holds here
    follow = subprocess.run(argv, env=env, cwd=elsewhere, capture_output=True,
                            text=True, timeout=300, check=False)
    assert follow.returncode == 0, follow.stderr
    assert (root / ".test-models" / "tiny-qwen" / "model.safetensors").is_file()

