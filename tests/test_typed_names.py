"""Issue 28 item 4: a typo costs one line, with a "did you mean" and its own exit status,
in the gate (pytest plugin) and in the command lines, before any test or command step.

Every case runs the real command: pytest on the real gate suite in a subprocess, and the
installed `llorch-pool` entry point.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llorch_harness.choices import EXIT_CODES, UnknownName, did_you_mean
from tests.test_plugin_gate import run_gate

LLORCH_POOL = Path(sys.executable).parent / "llorch-pool"
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md"


def pool_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "HF_"))}
    return subprocess.run([str(LLORCH_POOL), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120, stdin=subprocess.DEVNULL, check=False)


def the_line(res: subprocess.CompletedProcess[str], start: str) -> str:
    """The run printed exactly one non-empty line in all, starting with `start`."""
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, res.stdout + res.stderr
    assert lines[0].startswith(start), lines
    return lines[0]


@pytest.mark.parametrize(("args", "kind", "said"), [
    (["--gate-model", "tiny-qwn"], "model id", "unknown model id 'tiny-qwn' (did you mean "
                                               "tiny-qwen?"),
    (["-m", "gpu"], "marker", "unknown marker 'gpu' (did you mean cpu?"),
    (["-m", "cpu and not slwo"], "marker", "unknown marker 'slwo' (did you mean slow?"),
    (["--require-backend", "cdua"], "backend", "unknown backend 'cdua' (did you mean cuda?"),
], ids=["gate-model", "marker", "marker-in-expression", "backend"])
def test_a_typo_in_a_gate_run_is_one_line_before_any_test(tmp_path: Path, args: list[str],
                                                         kind: str, said: str) -> None:
    res = run_gate(tmp_path, *args, "--gate-json", str(tmp_path / "g.json"))
    assert res.returncode == EXIT_CODES[kind], res.stdout[-3000:] + res.stderr
    assert said in the_line(res, "Exit: llorch-harness: ")
    assert not (tmp_path / "g.json").exists()


def test_lab_real_without_a_binary_is_an_error_not_skips(tmp_path: Path) -> None:
    """Issue 28 item 9: it gave 35 skips, `verdict: NOT RUN` and exit 0."""
    res = run_gate(tmp_path, "--lab", "real")
    assert res.returncode == EXIT_CODES["lab"], res.stdout[-3000:] + res.stderr
    line = the_line(res, "Exit: llorch-harness: --lab real: no real worker")
    assert "llorch-cpu-candled" in line and "--llorch-bin-dir" in line
    assert "leave --lab out for the embedded lab" in line


def test_spawn_of_a_mistyped_model_suggests_the_id_not_a_failing_download(
        tmp_path: Path) -> None:
    """It used to say `Run: llorch-pool models download tiny-qwn`, which then fails."""
    res = pool_cli("worker", "spawn", "cpu", "--model", "tiny-qwn", "--worker", "reference",
                   "--pool-root", str(tmp_path), cwd=tmp_path)
    assert res.returncode == EXIT_CODES["model id"], res.stderr
    line = the_line(res, "error: unknown model id 'tiny-qwn' (did you mean tiny-qwen?")
    assert "models download" not in line
    download = pool_cli("models", "download", "tiny-qwn", "--pool-root", str(tmp_path),
                        cwd=tmp_path)
    assert download.returncode == EXIT_CODES["model id"]
    assert "did you mean tiny-qwen?" in the_line(download, "error: unknown model id")
    assert not (tmp_path / ".test-models").exists()  # nothing half-written


def test_mistyped_backend_in_the_cli_has_the_backend_status(tmp_path: Path) -> None:
    res = pool_cli("worker", "spawn", "cpuu", "--model", "tiny-qwen", "--pool-root",
                   str(tmp_path), cwd=tmp_path)
    assert res.returncode == EXIT_CODES["backend"]
    assert "did you mean cpu?" in the_line(res, "error: unknown backend 'cpuu'")


def test_spawn_without_a_binary_names_the_reference_worker(tmp_path: Path) -> None:
    """Issue 28 item 7: `worker spawn cpu` without a binary must mention --worker reference."""
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    catalog = tmp_path / ".test-models" / "tiny-qwen"
    catalog.mkdir(parents=True)
    (catalog / "model.safetensors").write_bytes(b"x")
    (tmp_path / ".test-models" / "catalog.json").write_text(
        '{"models": [{"id": "tiny-qwen", "name": "Tiny", "path": ".test-models/tiny-qwen", '
        '"format": "safetensors", "size_gb": 0.0, "architecture": "qwen", "downloaded": true, '
        '"backends": ["cpu"], "metadata": {"repo": "llorch-test/tiny-qwen"}}]}')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "HF_"))}
    env["PATH"] = env_path
    res = subprocess.run([str(LLORCH_POOL), "worker", "spawn", "cpu", "--model", "tiny-qwen",
                          "--pool-root", str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert res.returncode == 1, res.stderr
    assert "--worker reference" in the_line(res, "error: no llorch-cpu-candled")


def test_did_you_mean_is_close_matches_only() -> None:
    assert did_you_mean("tiny-qwn", ["tiny-qwen", "tinyllama", "phi3"]) == ["tiny-qwen"]
    assert did_you_mean("zzz", ["cpu", "cuda", "metal"]) == []
    err = UnknownName("pool", "wrkstation", ["mac", "workstation"])
    assert err.exit_code == EXIT_CODES["pool"]
    assert err.one_line() == ("unknown pool 'wrkstation' (did you mean workstation?; "
                              "known: mac, workstation)")


def test_the_exit_status_table_is_documented() -> None:
    """docs/DESIGN.md lists every kind with its status, as choices.EXIT_CODES has them."""
    text = DESIGN.read_text(encoding="utf-8")
    for kind, code in EXIT_CODES.items():
        assert f"| {code} | {kind} |" in text, (kind, code)


def test_pytest_m_cpu_in_a_pool_directory_says_how_to_run_the_gate(tmp_path: Path) -> None:
    """Issue 28 item 9: it said `no tests ran` and nothing else. The hint's command, run as
    printed (collection only here), finds the gate's tests and keeps the pool root."""
    pool = tmp_path / "pool"
    (pool / ".test-models").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLORCH_", "PYTEST_"))}
    res = subprocess.run([sys.executable, "-m", "pytest", "-m", "cpu", "-p", "no:cacheprovider"],
                         cwd=pool, env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 5, res.stdout  # still "no tests collected" for scripts
    hint = next(ln for ln in res.stdout.splitlines() if ln.startswith("llorch-harness: "))
    tests_hw = Path(__file__).resolve().parents[1] / "tests_hw"
    command = f"pytest -m cpu {tests_hw} --pool-root={pool}"
    assert hint == (f"llorch-harness: no gate tests in {pool} (the gate's tests are not "
                    f"here); run: {command}")
    ran = subprocess.run([sys.executable, "-m", *command.split(), "-p", "no:cacheprovider",
                          "--co"], cwd=pool, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr
    assert "<Function test_qwen_works[cpu]>" in ran.stdout
    assert f"pool root: {pool} (--pool-root or $LLORCH_POOL_ROOT)" in ran.stdout


def test_a_mistyped_checklist_item_has_the_item_status(tmp_path: Path) -> None:
    """`llorch-harness bisect --item` takes checklist item names (choices.EXIT_CODES)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    res = subprocess.run([str(LLORCH_POOL.parent / "llorch-harness"), "bisect", "--llorch-repo",
                          str(tmp_path), "--good", "a", "--bad", "b", "--backend", "cpu",
                          "--item", "No broadcastng errors"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == EXIT_CODES["checklist item"], res.stderr
    assert "did you mean 'No broadcasting errors'" in the_line(res, "error: --item ")


def test_history_backend_typo_has_the_backend_status(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    res = subprocess.run([str(LLORCH_POOL.parent / "llorch-harness"), "history", "--backend",
                          "cdua", "--results-db", str(tmp_path / "none.sqlite")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == EXIT_CODES["backend"], res.stderr
    assert "did you mean cuda?" in the_line(res, "error: unknown backend 'cdua'")


def test_llorch_checks_a_backend_name_before_anything_is_forwarded(tmp_path: Path) -> None:
    """`llorch pool ... --host` refuses a mistyped backend locally, with the backend status;
    the host does not exist, so reaching ssh at all would say something else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    res = subprocess.run([str(LLORCH_POOL.parent / "llorch"), "pool", "models", "register", "m",
                          "--name", "M", "--repo", "org/m", "--architecture", "qwen2",
                          "--backends", "cpu,cdua", "--host", "no-such-host.invalid"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == EXIT_CODES["backend"], res.stderr
    assert "did you mean cuda?" in the_line(res, "error: unknown backend 'cdua'")


@pytest.mark.parametrize("tool", ["llorch-harness", "llorch"])
def test_bisect_backend_typo_has_the_backend_status(tmp_path: Path, tool: str) -> None:
    """`llorch-harness bisect` and `llorch bisect --host` (which must refuse it before ssh:
    the host is not in any pools file) check --backend as every other command does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    host = ["--host", "no-such-pool"] if tool == "llorch" else []
    res = subprocess.run([str(LLORCH_POOL.parent / tool), "bisect", *host, "--backend", "cdua",
                          "--good", "a", "--bad", "b", "--llorch-repo", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                         check=False, stdin=subprocess.DEVNULL)
    assert res.returncode == EXIT_CODES["backend"], res.stdout + res.stderr
    assert "did you mean cuda?" in the_line(res, "error: unknown backend 'cdua'")


@pytest.mark.parametrize(("argv", "said"), [
    (["llorch-harness", "tiny-model", "build", "--architecture", "qwn", "DIR"],
     "unknown architecture 'qwn' (did you mean qwen2?; known: qwen2, llama, phi3, mistral)"),
    (["llorch-harness", "tiny-model", "build", "--vocab", "qwen", "DIR"],
     "unknown vocabulary 'qwen' (did you mean qwen2.5?; known: qwen2.5, corpus)"),
    (["llorch-pool", "worker", "spawn", "cpu", "--model", "m", "--worker", "refrence"],
     "unknown worker kind 'refrence' (did you mean reference?; known: llorch, reference)"),
])
def test_a_mistyped_option_value_says_what_was_meant(tmp_path: Path, argv: list[str],
                                                     said: str) -> None:
    """Names without an exit status of their own stay usage errors (2), with a did-you-mean
    where argparse's choices would only list them; nothing is written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    args = [str(tmp_path / "out") if a == "DIR" else a for a in argv[1:]]
    res = subprocess.run([str(LLORCH_POOL.parent / argv[0]), *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, check=False,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stdout + res.stderr
    (error,) = [ln for ln in res.stderr.splitlines() if ": error: " in ln]
    assert error.endswith(said), error
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_a_host_close_to_a_pool_name_is_named_when_ssh_fails(tmp_path: Path) -> None:
    """`llorch pool status --host gpu-bx` with a pool `gpu-box` in the file: an ad-hoc host
    is legal, so real ssh is tried (here it is refused on a closed loopback port), and its
    failure names the pool the user probably meant."""
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host gpu-bx\n  HostName 127.0.0.1\n  Port {port}\n")
    pools = tmp_path / "pools.toml"
    pools.write_text('[pools.gpu-box]\nhost = "127.0.0.1"\nroot = "/srv/pool"\n')
    pools.chmod(0o600)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")},
           "LLORCH_SSH_CONFIG": str(cfg)}
    res = subprocess.run([str(LLORCH_POOL.parent / "llorch"), "--pools-file", str(pools),
                          "pool", "status", "--host", "gpu-bx"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, check=False,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 255, res.stdout + res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert "cannot reach pool gpu-bx over ssh" in line and "refused" in line, line
    assert "'gpu-bx' is not a pool in the pools file: did you mean gpu-box?" in line, line
