"""The `hf` command line: CP3's supported manual download path, and the gate's check of it.

Why a module: CP3 tells operators to download with `hf download`; the deprecated
`huggingface-cli` is gone in huggingface_hub >= 1.0, and the seed's one-flag-many-patterns
command line no longer works (only the first pattern is taken as `--include`). This
module finds the right binary and builds the command line that works.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llorch_harness.redaction import redact

DEFAULT_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.json", "tokenizer.model")
HF_CLI_NAME = "hf"
VERSION_TIMEOUT_S = 60.0
_VERSION_RE = re.compile(r"\b(\d+\.\d+(?:\.\d+)?(?:[.\-+][0-9A-Za-z.]+)?)\b")
MIN_MAJOR = 1  # `hf` replaced `huggingface-cli` in huggingface_hub 1.0


@dataclass(frozen=True)
class HfCliStatus:
    """What the gate reports about `hf`: where, which version, and whether it runs."""

    path: Path | None
    version: str | None
    ok: bool
    message: str


def find_hf_cli() -> Path | None:
    """`hf` beside the running interpreter (the venv that has huggingface_hub), else on PATH.

    Never `huggingface-cli`: it is deprecated and absent from current huggingface_hub.
    """
    exe_name = HF_CLI_NAME + (".exe" if os.name == "nt" else "")
    beside = Path(sys.executable).parent / exe_name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(HF_CLI_NAME)
    return Path(found) if found else None


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_DISABLE_UPDATE_CHECK"] = "1"
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return env


def _parse_version(text: str) -> str | None:
    match = _VERSION_RE.search(text)
    return match.group(1) if match else None


def check_hf_cli(timeout: float = VERSION_TIMEOUT_S) -> HfCliStatus:
    """Run `hf --version` (then `hf version`) and say whether the CLI is usable."""
    path = find_hf_cli()
    if path is None:
        return HfCliStatus(None, None, False,
                           "hf CLI not found (install: pip install 'huggingface_hub[cli]'; "
                           "never use the deprecated huggingface-cli)")
    last = ""
    for args in (["--version"], ["version"]):
        try:
            proc = subprocess.run(
                [str(path), *args], capture_output=True, text=True, timeout=timeout,
                env=_cli_env(), stdin=subprocess.DEVNULL, check=False,
            )
        except subprocess.TimeoutExpired:
            last = f"`{path} {' '.join(args)}` did not finish within {timeout:.0f} s"
            continue
        except OSError as exc:
            return HfCliStatus(path, None, False, f"cannot run {path}: {exc.strerror or exc}")
        version = _parse_version(proc.stdout) if proc.returncode == 0 else None
        if version:
            major = int(version.split(".", 1)[0])
            if major < MIN_MAJOR:
                return HfCliStatus(path, version, False,
                                   f"hf {version} at {path} is too old (need >= {MIN_MAJOR}.0; "
                                   "pip install -U 'huggingface_hub[cli]')")
            return HfCliStatus(path, version, True, f"hf {version} at {path}")
        tail = redact((proc.stderr or proc.stdout).strip()).splitlines()
        last = f"`{path} {' '.join(args)}` exited {proc.returncode}" + (
            f": {tail[-1][:200]}" if tail else "")
    return HfCliStatus(path, None, False, last or f"{path} printed no version")


def hf_download_command(
    repo: str,
    local_dir: Path | str,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    *,
    hf: Path | str | None = None,
    revision: str | None = None,
) -> list[str]:
    """argv for `hf download` that works with hf 2.x: one `--include` per pattern, JSON output.

    `--format json` because the CLI changes its human output when it thinks an agent runs
    it; JSON (`{"path": ...}`) is stable to parse. Use `shlex.join()` to show it.
    """
    from llorch_harness.pool.paths import validate_repo_id

    validate_repo_id(repo)
    binary = str(hf) if hf is not None else str(find_hf_cli() or HF_CLI_NAME)
    cmd = [binary, "download", repo]
    for pattern in patterns:
        cmd += ["--include", pattern]
    if revision:
        cmd += ["--revision", revision]
    cmd += ["--local-dir", str(local_dir), "--format", "json"]
    return cmd
