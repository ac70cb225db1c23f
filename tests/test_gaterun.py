"""`llorch-harness gate run`: the gate on two pools over a real ssh to a real sshd (issue 9.2/9.4).

Two pool roots and two checkouts stand for the mac and the workstation; both are reached
through the loopback sshd of `tests/sshd.py`, host key checking on. The light tests run a
real remote pytest with the real plugin on trivial gate tests (fast, always). The end-to-end
test runs the real `tests_hw` gate in this checkout on both pools, with the reference
worker installed under the metal and cuda binary names, then breaks one pool.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llorch_harness.gate import checklist as gate
from tests import fakesmi
from tests.marked import kill_all, marked, new_marker, wait_for, wait_none
from tests.sshd import BAD_KEY_ALIAS, SshdServer, make_sshd_fixture
from tests.test_gatemerge import harness_argv

sshd = make_sshd_fixture()

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
HANG_GUARD_S = 300
E2E_GUARD_S = 1200


# --------------------------------------------------------------------------- helpers


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_pools_file(path: Path, server: SshdServer, pools: dict[str, dict[str, Any]]) -> Path:
    lines = [f"ssh_config = {toml_str(str(server.config))}", ""]
    for name, keys in pools.items():
        keys = dict(keys)
        env = keys.pop("env", {})
        lines.append(f"[pools.{name}]")
        for k, v in keys.items():
            lines.append(f"{k} = " + (f"[{', '.join(map(toml_str, v))}]" if isinstance(v, list)
                                      else toml_str(str(v))))
        if env:
            lines.append(f"[pools.{name}.env]")
            lines += [f"{k} = {toml_str(v)}" for k, v in env.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def gate_run(tmp_path: Path, pools_file: Path, pools: str, out: Path, *extra: str,
             guard: float = HANG_GUARD_S) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLORCH_", "HF_", "PYTEST_"))}
    env["HOME"] = str(tmp_path / "home")  # no ~/.ssh, no ~/.config/llorch from the developer
    return subprocess.run(
        [*harness_argv(), "gate", "run", "--pools", pools, "--pools-file", str(pools_file),
         "--out", str(out), *extra],
        capture_output=True, text=True, timeout=guard, cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL)


def fake_binary(bin_dir: Path, backend: str, body: str = "exit 1") -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / f"llorch-{backend}-candled"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def light_checkout(base: Path) -> Path:
    """A 'harness checkout' with the real venv and one trivial test per gate item; a test
    fails when its item is named in $GATE_FAIL_ITEM (set through the pool's env)."""
    co = base / "checkout dir $(x)"  # spaces and shell syntax: must travel quoted
    co.mkdir(parents=True)
    (co / ".venv").symlink_to(VENV)
    body = ["import os", "import pytest", ""]
    for n, g in enumerate(gate.checklist()):
        marks = [f"@pytest.mark.{b}" for b in g.backends]
        body += [f"@pytest.mark.gate({g.section!r}, {g.item!r})", *marks,
                 f"def test_item_{n}():",
                 f"    assert os.environ.get('GATE_FAIL_ITEM') != {g.item!r}, 'broken here'",
                 ""]
    (co / "test_gate_items.py").write_text("\n".join(body))
    return co


def light_pool(server: SshdServer, base: Path, name: str, backend: str,
               **env: str) -> dict[str, Any]:
    root = base / f"{name}-root"
    root.mkdir(parents=True)
    fake_binary(root / "bin", backend)
    return {"host": server.alias, "root": str(root), "backends": [backend],
            "checkout": str(light_checkout(base / name)),
            "env": {"LLORCH_BIN_DIR": str(root / "bin"), "LLORCH_BACKEND_AVAILABLE": backend,
                    **env}}


def remote_tmp_dirs(log: Path) -> list[str]:
    return re.findall(r"--gate-json=(/\S+/llorch-gate\.[A-Za-z0-9]+)/", log.read_text())


# --------------------------------------------------------------------------- light runs


def test_two_pools_pass_then_one_broken_pool_fails_naming_item(tmp_path: Path,
                                                               sshd: SshdServer) -> None:
    pools = {"mac": light_pool(sshd, tmp_path, "mac", "metal"),
             "workstation": light_pool(sshd, tmp_path, "workstation", "cuda")}
    pf = write_pools_file(tmp_path / "pools.toml", sshd, pools)
    out = tmp_path / "out"
    res = gate_run(tmp_path, pf, "mac,workstation", out)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[mac] starting on testpool: pytest -m metal" in res.stdout
    assert re.search(r"\[workstation\] done in \d+s: pytest exited 0", res.stdout)
    assert "CP3 verdict: PASS" in res.stdout
    merged = json.loads((out / "cp3.json").read_text())
    assert merged["verdict"] == "pass"
    assert {p["name"]: p["backends"] for p in merged["pools"]} == {
        "mac": ["metal"], "workstation": ["cuda"]}
    assert {p["name"]: p["report"] for p in merged["pools"]} == {
        "mac": "cp3-mac.html", "workstation": "cp3-workstation.html"}
    for name in ("mac", "workstation"):
        assert (out / f"cp3-{name}.html").read_text().lstrip().lower().startswith("<!doctype")
        assert (out / f"cp3-{name}.xml").exists()
        for d in remote_tmp_dirs(out / f"cp3-{name}.log"):
            assert not Path(d).exists(), f"remote temp dir {d} left behind"
    assert 'href="cp3-mac.html"' in (out / "cp3.html").read_text()

    pools["workstation"]["env"]["GATE_FAIL_ITEM"] = "No broadcasting errors"
    pf = write_pools_file(tmp_path / "pools.toml", sshd, pools)
    res = gate_run(tmp_path, pf, "mac,workstation", out)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "[workstation] done" in res.stdout and "pytest exited 1" in res.stdout
    assert ("FAILED Qwen Testing / No broadcasting errors on pool workstation: cuda: "
            "AssertionError: broken here") in res.stdout
    merged = json.loads((out / "cp3.json").read_text())
    assert merged["verdict"] == "fail"
    failed = [p for p in merged["problems"] if p.startswith("FAILED")]
    assert len(failed) == 1 and "on pool workstation" in failed[0]


def test_gate_models_reach_every_pool_and_model_support_is_written(tmp_path: Path,
                                                                  sshd: SshdServer) -> None:
    """`gate run --gate-models A,B --model-support F`: each pool's pytest gets the models (its
    gate JSON lists them) and the merged MODEL_SUPPORT.md has a row per model; a bad id is
    refused before any pool is asked."""
    pools = {"mac": light_pool(sshd, tmp_path, "mac", "metal"),
             "workstation": light_pool(sshd, tmp_path, "workstation", "cuda")}
    pf = write_pools_file(tmp_path / "pools.toml", sshd, pools)
    out = tmp_path / "out"
    support = tmp_path / "MODEL_SUPPORT.md"
    res = gate_run(tmp_path, pf, "mac,workstation", out, "--gate-models",
                   "tiny-qwen,tiny-llama", "--model-support", str(support))
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("mac", "workstation"):
        doc = json.loads((out / f"cp3-{name}.json").read_text())
        assert doc["gate_models"] == ["tiny-qwen", "tiny-llama"]
        assert "--gate-models=tiny-qwen,tiny-llama" in (out / f"cp3-{name}.log").read_text()
    text = support.read_text()
    table = text.split("## Tested models", 1)[1].split("##", 1)[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| tiny-")]
    assert [r.split("|")[1].strip() for r in rows] == ["tiny-qwen", "tiny-llama"], table
    assert "Metal (mac)" in table and "CUDA (workstation)" in table
    bad = gate_run(tmp_path, pf, "mac,workstation", out, "--gate-models", "tiny-qwen,../x")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --gate-models"), bad.stderr
    assert "starting on" not in bad.stdout


def test_unreachable_pool_is_reported_with_host_and_counts_as_missing(
        tmp_path: Path, sshd: SshdServer) -> None:
    mac = light_pool(sshd, tmp_path, "mac", "metal")
    ws = light_pool(sshd, tmp_path, "workstation", "cuda")
    ws["host"] = BAD_KEY_ALIAS  # known_hosts pinned to another key: ssh must refuse
    pf = write_pools_file(tmp_path / "pools.toml", sshd, {"mac": mac, "workstation": ws})
    out = tmp_path / "out"
    res = gate_run(tmp_path, pf, "mac,workstation", out)
    assert res.returncode == 1, res.stdout + res.stderr
    line = next(ln for ln in res.stdout.splitlines()
                if ln.startswith("[workstation] ") and "starting" not in ln)
    assert "UNREACHABLE (host badkey:" in line and "counts as a missing pool" in line
    assert "host key" in line.lower() or "Host key verification failed" in line
    merged = json.loads((out / "cp3.json").read_text())
    assert list(merged["missing_pools"]) == ["workstation"]
    assert "no pool ran the cuda backend (CP3 needs a cuda pool)" in merged["problems"]
    assert [p["name"] for p in merged["pools"]] == ["mac"]  # mac still ran and is merged
    assert not (out / "cp3-workstation.json").exists()


def test_pool_without_result_counts_as_missing(tmp_path: Path, sshd: SshdServer) -> None:
    """pytest that cannot start (here: no venv in the checkout) writes no result."""
    mac = light_pool(sshd, tmp_path, "mac", "metal")
    (Path(mac["checkout"]) / ".venv").unlink()
    ws = light_pool(sshd, tmp_path, "workstation", "cuda")
    pf = write_pools_file(tmp_path / "pools.toml", sshd, {"mac": mac, "workstation": ws})
    out = tmp_path / "out"
    res = gate_run(tmp_path, pf, "mac,workstation", out)
    assert res.returncode == 1
    assert re.search(r"\[mac\] NO RESULT: pytest exited 127 and wrote no gate result "
                     r"\(see .*cp3-mac\.log\)", res.stdout), res.stdout
    assert "missing pool mac: no result" in res.stdout


def test_values_reach_the_remote_inert(tmp_path: Path, sshd: SshdServer) -> None:
    """Checkout, root and env values with shell syntax run nothing; the run still works."""
    canary = tmp_path / "canary"
    hostile = f"$(touch {canary}) `touch {canary}`; touch {canary} 'q\" \\"
    mac = light_pool(sshd, tmp_path / f"r {hostile}", "mac", "metal", WEIRD=hostile)
    ws = light_pool(sshd, tmp_path, "workstation", "cuda")
    pf = write_pools_file(tmp_path / "pools.toml", sshd, {"mac": mac, "workstation": ws})
    res = gate_run(tmp_path, pf, "mac,workstation", tmp_path / "out")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not canary.exists()


def test_secret_env_values_are_never_printed(tmp_path: Path, sshd: SshdServer) -> None:
    token = "hf_CANARYsecretVALUE123"
    mac = light_pool(sshd, tmp_path, "mac", "metal", HF_TOKEN=token)
    ws = light_pool(sshd, tmp_path, "workstation", "cuda")
    pf = write_pools_file(tmp_path / "pools.toml", sshd, {"mac": mac, "workstation": ws})
    out = tmp_path / "out"
    res = gate_run(tmp_path, pf, "mac,workstation", out)
    assert res.returncode == 0, res.stdout + res.stderr
    assert token not in res.stdout + res.stderr
    for f in out.iterdir():
        assert token not in f.read_text(errors="replace"), f


@pytest.mark.parametrize(("change", "expected"), [
    ({"checkout": None}, "pools.mac.checkout: missing"),
    ({"backends": None}, "pools.mac.backends: missing"),
    ({"pools": "mac,nowhere"}, "unknown pool 'nowhere' (known: mac; pools file "),
    ({"pools": "mac,$(x)"}, "invalid pool name '$(x)'"),
    ({"host": "-oProxyCommand=touch x"}, "pools.mac.host"),
], ids=["no-checkout", "no-backends", "unknown-pool", "bad-name", "option-host"])
def test_bad_pools_input_is_one_line_exit_2(tmp_path: Path, sshd: SshdServer,
                                            change: dict[str, Any], expected: str) -> None:
    mac = light_pool(sshd, tmp_path, "mac", "metal")
    pools_arg = str(change.pop("pools", "mac"))
    for k, v in change.items():
        if v is None:
            mac.pop(k)
        else:
            mac[k] = v
    pf = write_pools_file(tmp_path / "pools.toml", sshd, {"mac": mac})
    res = gate_run(tmp_path, pf, pools_arg, tmp_path / "out")
    # a typed name that is not known has its own status (choices.EXIT_CODES), the rest 2
    assert res.returncode == (14 if "unknown pool" in expected else 2), res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    assert expected in res.stderr
    assert not (tmp_path / "out").exists()  # nothing ran


# --------------------------------------------------------------------------- end to end

WRAPPER = '''#!{python}
"""{name}: the reference worker playing this binary (LLORCH_REF_BACKEND={backend}):
it takes {flag} N itself, logs this binary's start-up lines and runs its warm-up."""
import os, sys
os.environ["LLORCH_REF_BACKEND"] = "{backend}"
os.execv({python!r}, [{python!r}, "-m", "llorch_harness.lab.refworker", *sys.argv[1:]])
'''


def install_worker(bin_dir: Path, backend: str) -> Path:
    """A contract-speaking worker installed as llorch-BACKEND-candled (cpu, cuda or metal)."""
    flag = {"cpu": "no device flag", "cuda": "--cuda-device", "metal": "--metal-device"}[backend]
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / f"llorch-{backend}-candled"
    path.write_text(WRAPPER.format(python=sys.executable, name=path.name, flag=flag,
                                   backend=backend))
    path.chmod(0o755)
    return path


LLAMA_ORCH_BASE_FILES = {
    "Cargo.toml": '[package]\nname = "llama-orch-stand-in"\nversion = "0.1.0"\n'
                  'edition = "2021"\n\n[dependencies]\n',
    "src/main.rs": "// TEAM-022: stand-in crate\nfn main() {\n    println!(\"llorch\");\n}\n",
}
LLAMA_ORCH_FILES = {  # the CP3 commit: signed deliverables and guides that show the commands
    "bin/pool-ctl/src/commands/models.rs": "// TEAM-022: model download automation\n",
    "bin/pool-ctl/src/commands/worker.rs": "// TEAM-022: worker spawning automation\n",
    "bin/llorch-ctl/src/commands/pool.rs": "// TEAM-022: remote commands\n",
    "docs/download-guide.md": "# Download guide\n\n```bash\nllorch-pool models download "
                              "qwen-0.5b\n```\n",
    "docs/worker-spawning.md": "# Worker spawning guide\n\n```bash\nllorch-pool worker spawn "
                               "metal --model qwen-0.5b --gpu 0\n```\n",
    "docs/troubleshooting.md": "# Troubleshooting guide\n\n## `Model qwen-0.5b not downloaded`"
                               "\n\n```bash\nllorch-pool models download qwen-0.5b\n```\n",
}
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}


def _commit(repo: Path, files: dict[str, str], message: str) -> str:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    env = {**os.environ, **GIT_ENV}
    for args in (["add", "-A"], ["commit", "-q", "-m", message]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, timeout=60)
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, env=env,
                          capture_output=True, text=True, timeout=60).stdout.strip()


def llama_orch_repo(base: Path) -> tuple[Path, Path, str]:
    """A tiny llama-orch stand-in checkout (a base commit, then the CP3 commit with signed
    deliverables and guides), the dir of a cargo with clippy (the real one when installed,
    else a stand-in that exits 0), and the base commit for --llorch-base."""
    repo = base / "llama-orch"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=60)
    base_sha = _commit(repo, LLAMA_ORCH_BASE_FILES, "base")
    _commit(repo, LLAMA_ORCH_FILES, "CP3")
    return (repo, *_cargo_dir(base), base_sha)


def _cargo_dir(base: Path) -> tuple[Path]:
    cargo = shutil.which("cargo")
    if cargo:
        probe = subprocess.run([cargo, "clippy", "--version"], capture_output=True,
                               timeout=60, stdin=subprocess.DEVNULL)
        if probe.returncode == 0:
            return (Path(cargo).parent,)
    stand_in = base / "cargo-bin"
    fake_binary(stand_in, "x")
    (stand_in / "llorch-x-candled").rename(stand_in / "cargo")
    (stand_in / "cargo").write_text("#!/bin/sh\nexit 0\n")
    return (stand_in,)


def checkout_copy(base: Path) -> Path:
    """This checkout's gate (tests_hw, pytest config) with the real venv: its own golden dir."""
    co = base / "checkout"
    co.mkdir(parents=True)
    shutil.copytree(REPO / "tests_hw", co / "tests_hw",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "markers.ini", "conftest.py"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, co / name)
    (co / ".venv").symlink_to(VENV)
    return co


def e2e_pool(server: SshdServer, base: Path, name: str, backend: str, repo: Path,
             cargo_dir: Path, llorch_base: str) -> dict[str, Any]:
    """A pool root with the worker installed, a pools.toml naming itself (the Remote
    Operations items drive it over ssh), and its own checkout copy."""
    root = base / f"{name}-root"
    root.mkdir(parents=True)
    install_worker(root / "bin", backend)
    write_pools_file(root / "pools.toml", server, {"self": {
        "host": server.alias, "root": str(root), "backends": [backend],
        "llorch_pool": str(VENV / "bin" / "llorch-pool"),
        "env": {"LLORCH_BIN_DIR": str(root / "bin")}}})
    # the device's own tools, scripted: a Mac's for metal, nvidia-smi for cuda ("Device healthy")
    tools: dict[str, str] = {"PATH": str(fakesmi.install_mac(root / "macbin"))}
    if backend == "cuda":
        tools = fakesmi.install(root, {"gpus": [fakesmi.gpu(0)]})
    path = os.pathsep.join([tools["PATH"].split(os.pathsep)[0], str(cargo_dir),
                            str(VENV / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    env = {**{k: v for k, v in tools.items() if k != "PATH"},
           "LLORCH_BIN_DIR": str(root / "bin"), "LLORCH_BACKEND_AVAILABLE": backend,
           "LLORCH_GATE_MODEL": "tiny-qwen", "LLORCH_POOL_ROOT": str(root),
           "LLORCH_REPO": str(repo), "LLORCH_BASE": llorch_base, "PATH": path,
           # two hosts in one: each pool leases its devices in its own host-wide directory
           "LLORCH_LEASE_DIR": str(root / "leases"),
           # the busy host is tests/test_perf_busy.py's: here the gate must judge the build
           "LLORCH_PERF_BUSY_SHARE": "1"}
    for var in ("RUSTUP_HOME", "CARGO_HOME"):
        if os.environ.get(var):
            env[var] = os.environ[var]
    return {"host": server.alias, "root": str(root), "backends": [backend],
            "checkout": str(checkout_copy(base / name)), "env": env}


def _tests_hw_complete() -> str | None:
    files = sorted((REPO / "tests_hw").glob("test_*.py"))
    text = "\n".join(f.read_text() for f in files)
    sections = {g.section for g in gate.checklist()}
    absent = sorted(s for s in sections if repr(s) not in text and f'"{s}"' not in text)
    return f"tests_hw has no tests for: {', '.join(absent)}" if absent else None


@pytest.mark.slow
def test_end_to_end_real_gate_on_two_pools_over_ssh(tmp_path: Path, sshd: SshdServer) -> None:
    """The real tests_hw gate on a 'mac' and a 'workstation' over ssh: record goldens, pass,
    then a broadcasting worker on the workstation fails the merged verdict there."""
    missing = _tests_hw_complete()
    if missing:
        pytest.skip(f"the CP3 gate (issue 5) is not complete yet: {missing}")
    repo, cargo_dir, base = llama_orch_repo(tmp_path)
    pools = {"mac": e2e_pool(sshd, tmp_path, "mac", "metal", repo, cargo_dir, base),
             "workstation": e2e_pool(sshd, tmp_path, "workstation", "cuda", repo, cargo_dir,
                                     base)}
    out = tmp_path / "out"
    for p in pools.values():  # first run on a trusted build: record the golden tokens
        p["env"]["LLORCH_UPDATE_GOLDEN"] = "1"
    pf = write_pools_file(tmp_path / "pools.toml", sshd, pools)
    res = gate_run(tmp_path, pf, "mac,workstation", out, guard=E2E_GUARD_S)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    for name, backend in (("mac", "metal"), ("workstation", "cuda")):
        golden = Path(pools[name]["checkout"]) / "tests_hw/golden/tiny-qwen" / f"{backend}.json"
        assert golden.is_file(), golden

    for p in pools.values():
        del p["env"]["LLORCH_UPDATE_GOLDEN"]
    pf = write_pools_file(tmp_path / "pools.toml", sshd, pools)
    res = gate_run(tmp_path, pf, "mac,workstation", out, guard=E2E_GUARD_S)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    merged = json.loads((out / "cp3.json").read_text())
    assert merged["verdict"] == "pass" and all(r["ok"] for r in merged["items"])
    assert {p["name"]: p["lab"] for p in merged["pools"]} == {"mac": "real",
                                                              "workstation": "real"}
    bins = {p["name"]: p["worker_binaries"] for p in merged["pools"]}
    assert bins["mac"]["metal"]["path"].endswith("llorch-metal-candled")
    assert bins["workstation"]["cuda"]["path"].endswith("llorch-cuda-candled")

    pools["workstation"]["env"]["LLORCH_REF_FAULTS"] = "broadcast"
    pf = write_pools_file(tmp_path / "pools.toml", sshd, pools)
    res = gate_run(tmp_path, pf, "mac,workstation", out, guard=E2E_GUARD_S)
    assert res.returncode == 1, res.stdout[-6000:]
    assert "FAILED Qwen Testing / No broadcasting errors on pool workstation" in res.stdout
    merged = json.loads((out / "cp3.json").read_text())
    bc = by_item_of(merged)[("Qwen Testing", "No broadcasting errors")]
    assert bc["pools"]["workstation"]["status"] == "fail"
    assert bc["pools"]["mac"]["status"] == "pass"
    assert not any("on pool mac" in p for p in merged["problems"]), merged["problems"]


def by_item_of(merged: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["section"], r["item"]): r for r in merged["items"]}


# --------------------------------------------------------------------------- stopping

SLEEPY_TEST = '''import os, subprocess, sys, time
import pytest


@pytest.mark.metal
def test_runs_until_stopped():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                      os.environ["GATE_MARKER"] + "-child"])
    time.sleep(600)
'''


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stopping_gate_run_ends_the_remote_gate(tmp_path: Path, sshd: SshdServer,
                                                sig: signal.Signals) -> None:
    """Issue 13: Ctrl-C or SIGTERM of `gate run` ends pytest on every pool (and what it
    started); no ssh, no remote pytest, no child is left, and the run exits 130."""
    marker = new_marker("gate")
    mac = light_pool(sshd, tmp_path, "mac", "metal", GATE_MARKER=marker)
    (Path(mac["checkout"]) / "test_gate_items.py").write_text(SLEEPY_TEST)
    pf = write_pools_file(tmp_path / "pools.toml", sshd, {"mac": mac})
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLORCH_", "HF_", "PYTEST_"))}
    env["HOME"] = str(tmp_path / "home")
    proc = subprocess.Popen(
        [*harness_argv(), "gate", "run", "--pools", "mac", "--pools-file", str(pf),
         "--out", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL)
    try:
        child = wait_for(f"{marker}-child", 1, HANG_GUARD_S)
        assert child, "the remote test never started"
        assert marked(marker, env_name="GATE_MARKER"), "no remote pytest found"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=HANG_GUARD_S)
        assert proc.returncode == 130, out + err
        assert "error: interrupted" in err
        assert wait_none(marker, 60, env_name="GATE_MARKER") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_all(marker, env_name="GATE_MARKER")
