"""Helpers shared by the gate modules: running the CLIs as users do, backend params."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llorch_harness.errors import SSH_FAILED, LabFailure, ssh_failure_kind
from llorch_harness.redaction import redact

ALL_BACKENDS = (pytest.mark.cpu, pytest.mark.cuda, pytest.mark.metal)
CLI_TIMEOUT_S = 600.0
POOL_MODULE = "llorch_harness.cli.pool_main"
LLORCH_MODULE = "llorch_harness.cli.llorch_main"
# the inference checks of test_qwen_inference.py that run once per model (CP4's
# "Every model works on every backend of this pool" needs each of them to pass)
MODEL_CHECKS = (
    "test_output_agrees_with_reference", "test_greedy_repeat_identical",
    "test_interleaved_prompt_lengths", "test_restart_gives_same_tokens",
    "test_no_error_patterns", "test_seeded_sampling", "test_streams_obey_contract",
    "test_tokens_generated", "test_golden_tokens", "test_concurrent_requests_identical",
    "test_no_state_left_by_rejected_or_failed_requests", "test_prompt_near_the_context_limit",
)


def pool_level(fn: Any) -> Any:
    """A pool-level item concerns every pool: all three backend markers, run once on the
    first usable selected backend (so `-m metal` on the mac selects it)."""
    for mark in ALL_BACKENDS:
        fn = mark(fn)
    return fn


def backend_param(backend: str, *marks: Any) -> Any:
    """A `backend` parameter carrying its backend marker (so `-m metal` selects it)."""
    return pytest.param(backend, marks=(getattr(pytest.mark, backend), *marks), id=backend)


@dataclass
class CliResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        shown = " ".join(self.argv[2:]) if self.argv[:2] == [sys.executable, "-m"] else " ".join(
            self.argv)
        return redact(
            f"$ {shown}\nexit status {self.returncode}\n--- stdout ---\n{self.stdout[-4000:]}"
            f"\n--- stderr ---\n{self.stderr[-4000:]}"
        )

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_module(module: str, args: list[str], *, env: dict[str, str] | None = None,
               cwd: Path | None = None, timeout: float = CLI_TIMEOUT_S) -> CliResult:
    res = run_command([sys.executable, "-m", module, *args], env=env, cwd=cwd, timeout=timeout)
    if module == LLORCH_MODULE:
        raise_if_unreachable(res)
    return res


def raise_if_unreachable(res: CliResult) -> None:
    """`llorch ... --host H` whose ssh never reached the pool (status 255, `cannot reach
    pool`): the lab's failure (errors.LabFailure), never a FAIL of the worker. A remote
    command that ran and failed keeps its own status and stays the test's to judge."""
    line = next((ln for ln in res.stderr.splitlines() if "cannot reach pool" in ln), None)
    if res.returncode == SSH_FAILED and line is not None:
        detail = line.partition(" over ssh: ")[2] or line
        raise LabFailure(f"pool unreachable over ssh ({ssh_failure_kind(detail)})",
                         redact(line.removeprefix("error: ")))


def run_command(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                timeout: float = CLI_TIMEOUT_S) -> CliResult:
    """A command as users run it: our environment plus `env`, no stdin, output captured."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    full_env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env,
                         cwd=cwd, stdin=subprocess.DEVNULL, check=False)
    return CliResult(argv, res.returncode, res.stdout, res.stderr)


def llorch_pool(paths: Any, *args: str, env: dict[str, str] | None = None,
                timeout: float = CLI_TIMEOUT_S) -> CliResult:
    """`llorch-pool ARGS --pool-root ROOT`, the command the CP3 gate names."""
    return run_module(POOL_MODULE, [*args, "--pool-root", str(paths.root)], env=env,
                      timeout=timeout)


def expect(cond: bool, expected: str, got: str, where: str) -> None:
    """Fail with the three things a reader needs: what we wanted, what came, where to look."""
    if not cond:
        pytest.fail(redact(f"expected: {expected}\ngot: {got}\nlook at: {where}"), pytrace=False)


def spawn_args(lab: Any, backend: str, model_id: str, worker_id: str,
               ready_timeout: float | None = None) -> list[str]:
    st = lab.backends[backend]
    args = ["worker", "spawn", backend, "--model", model_id, "--port", "0",
            "--worker", st.worker or lab.worker_kind, "--worker-id", worker_id,
            "--ready-timeout", f"{ready_timeout or lab.settings.ready_timeout:g}", "--json"]
    if lab.settings.bin_dir:
        args += ["--llorch-bin-dir", lab.settings.bin_dir]
    return args
