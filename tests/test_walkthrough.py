"""docs/walkthrough.md runs as written (issue 28 item 7).

Every ```bash block of the page, in order, becomes one bash script run in an empty
directory with the installed entry points on PATH and nothing else from this machine's
setup (no LLORCH_* or HF_* variables, no llorch binaries, the user's data directory in a
temp dir): the real `llorch-harness lab up` (a hub process on a real port), real downloads
through huggingface_hub, a real reference worker. The ```text example's command must
answer what the page shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "walkthrough.md"
BIN = Path(sys.executable).parent


def blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLORCH_", "HF_", "PYTEST_", "HUGGING"))}
    env.update(PATH=f"{BIN}:/usr/bin:/bin", XDG_DATA_HOME=str(tmp_path / "data"),
               HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf-home"))
    return env


def test_the_page_has_commands() -> None:
    commands = [ln for b in blocks("bash") for ln in b.splitlines() if ln.strip()]
    assert any(c.startswith("llorch-harness lab up") for c in commands)
    assert commands[-1] == "llorch-harness lab down"


@pytest.mark.slow
def test_walkthrough_runs_as_written(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    script = "set -euo pipefail\ntrap 'echo \"FAILED: $BASH_COMMAND\" >&2' ERR\n" + \
        "\n".join(blocks("bash"))
    try:
        res = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True,
                             text=True, timeout=900, check=False)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-6000:]
        assert "Embedded lab up: hub at http://127.0.0.1:" in res.stdout
        assert f"Pool root: {work / 'my-pool'} (from the current directory)" in res.stdout
        assert "Downloading model.safetensors: " in res.stdout
        assert "Worker worker-cpu-0 is not running (no record in this pool)" in res.stdout
        assert "Embedded lab down: hub" in res.stdout
        assert '"pool_root"' in (work / "my-pool" / "status.json").read_text()
    finally:  # whatever failed, nothing of the walkthrough keeps running
        subprocess.run([str(BIN / "llorch-pool"), "worker", "stop", "--all", "--pool-root",
                        str(work / "my-pool")], env=env, capture_output=True, timeout=120,
                       check=False)
        subprocess.run([str(BIN / "llorch-harness"), "lab", "down"], env=env,
                       capture_output=True, timeout=120, check=False)


def test_the_typo_example_answers_as_shown(tmp_path: Path) -> None:
    (example,) = blocks("text")
    lines = example.splitlines()
    command, shown, status = lines[0][2:], lines[1], lines[3]
    res = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=clean_env(tmp_path),
                         capture_output=True, text=True, timeout=120, check=False)
    assert str(res.returncode) == status
    prefix = shown.split("...")[0]
    assert res.stderr.startswith(prefix), (prefix, res.stderr)
    assert res.stdout == ""
