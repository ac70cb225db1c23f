"""`llorch bisect --host POOL`: the bisect on a pool over a real ssh to the loopback sshd
(host key checking on), its progress on this terminal, its JSON and HTML brought back, the
pool's temp dir removed. The remote bisect finds its own items (the whole gate once at
--good and at --bad), so this is also the test of finding the items; its range is one commit
(the search itself is tested in tests/test_bisect_e2e.py), which keeps it to four gate runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from llorch_harness.choices import EXIT_CODES
from tests.bisect_standin import build_repo, install_cargo
from tests.sshd import SshdServer, make_sshd_fixture
from tests.test_gaterun import write_pools_file

sshd = make_sshd_fixture()
GUARD_S = 1800
WORKS = "Qwen works on CPU (this pool)"


def llorch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLORCH_", "HF_", "PYTEST_"))}
    env["HOME"] = str(tmp_path / "home")
    return subprocess.run([sys.executable, "-m", "llorch_harness.cli.llorch_main", "bisect",
                           *args], capture_output=True, text=True, timeout=GUARD_S,
                          cwd=tmp_path, env=env, stdin=subprocess.DEVNULL)


def pool_setup(tmp_path: Path, sshd: SshdServer) -> tuple[Path, list[str]]:
    main, _ = build_repo(tmp_path / "llama-orch", 20, faults={18: "wrong_rope_base"})
    tools = install_cargo(tmp_path / "tools").parent
    checkout = tmp_path / "harness checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "root").mkdir()
    pools = {"ws": {"host": sshd.alias, "root": str(tmp_path / "root"), "backends": ["cpu"],
                    "checkout": str(checkout),
                    "env": {"PATH": f"{tools}:{Path(sys.executable).parent}:/usr/bin:/bin",
                            "LLORCH_LEASE_DIR": str(tmp_path / "leases"),
                            "HF_TOKEN": "hf_CANARYsecretVALUE123"}}}
    return write_pools_file(tmp_path / "pools.toml", sshd, pools), main


def test_a_bisect_on_a_pool_finds_its_items_and_brings_the_reports_back(
        tmp_path: Path, sshd: SshdServer) -> None:
    pools_file, main = pool_setup(tmp_path, sshd)
    (tmp_path / "out").mkdir()
    res = llorch(tmp_path, "--host", "ws", "--pools-file", str(pools_file),
                 "--llorch-repo", str(tmp_path / "llama-orch"), "--good", main[17],
                 "--bad", main[18], "--backend", "cpu", "--runs", "1",
                 "--gate-model", "tiny-llama", "--json", str(tmp_path / "out" / "b.json"),
                 "--html", str(tmp_path / "out" / "b.html"))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert "[find items] good" in res.stdout and "[bad]" in res.stdout  # progress, live
    doc = json.loads((tmp_path / "out" / "b.json").read_text())
    assert doc["answer"]["first_bad"]["sha"] == main[18], out[-6000:]
    assert doc["answer"]["parent"]["sha"] == main[17]
    assert doc["items_from"].startswith("found") and WORKS in doc["items"]
    assert all(i in doc["items"] for i in doc["answer"]["items"])
    assert doc["pool_root"] == str((tmp_path / "root").resolve())  # the pool's root
    assert [s["label"] for s in doc["steps"][:2]] == ["find items at good", "find items at bad"]
    html = (tmp_path / "out" / "b.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and main[18] in html
    assert "hf_CANARYsecretVALUE123" not in out + html + json.dumps(doc)
    # the pool's temp dir (named by the remote bisect's own "json: DIR/bisect.json" line) is
    # gone; other runs' temp dirs on this machine are none of this test's business
    used = re.findall(r"^json: (/\S*/llorch-bisect\.[A-Za-z0-9]+)/bisect\.json$", res.stdout,
                      re.MULTILINE)
    assert len(used) == 1 and not Path(used[0]).exists(), res.stdout[-3000:]


def test_a_dry_run_prints_the_quoted_command_and_a_typo_costs_no_ssh(
        tmp_path: Path, sshd: SshdServer) -> None:
    pools_file, main = pool_setup(tmp_path, sshd)
    res = llorch(tmp_path, "--host", "ws", "--pools-file", str(pools_file), "--dry-run",
                 "--llorch-repo", "/srv/llama orch", "--good", "v1", "--bad", "main",
                 "--backend", "cpu", "--item", WORKS, "--build-cmd", "cargo build $(x)")
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    assert line.startswith("ssh ") and "harness_main bisect" in line
    assert "'--llorch-repo=/srv/llama orch'" in line.replace("'\"'\"'", "'")
    assert "hf_CANARYsecretVALUE123" not in line
    bad = llorch(tmp_path, "--host", "ws", "--pools-file", str(pools_file),
                 "--llorch-repo", "/x", "--good", "a", "--bad", "b", "--backend", "cpu",
                 "--item", "Qwen works on cpu")
    assert bad.returncode == EXIT_CODES["checklist item"], bad.stderr
    assert bad.stderr.startswith("error: --item 'Qwen works on cpu'")
    assert "did you mean" in bad.stderr and "'Qwen works on CPU (this pool)'" in bad.stderr
