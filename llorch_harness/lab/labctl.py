"""The embedded lab for the command lines: tiny models on a local hub in the background.

Why: the gate starts its own hub in-process, but a person trying `llorch-pool` by hand needed
the downloads guide's "Offline labs" section to put one together, and a download without
`HF_ENDPOINT` went to the public hub. `llorch-harness lab up` builds the tiny models once,
serves them with `llorch-harness hub serve` as a detached process, and records it in
`DIR/lab.json`; `lab env` prints the environment to export; `lab down` stops exactly that
process (checked by pid, start time and command line, never by name).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import atomic_write_text, read_regular_text

LAB_DIR_ENV = "LLORCH_LAB_DIR"
STATE_FILE = "lab.json"
HUB_DIR = "hub"
BUILT_MARK = ".built"  # written once every tiny repo is complete
HUB_MODULE = "llorch_harness.cli.hub_cmd"
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LabState:
    """A running lab: the hub's process and where it serves."""

    pid: int
    create_time: float
    url: str
    hub_root: str
    log: str

    def env(self) -> dict[str, str]:
        """What a shell running llorch-pool needs (Xet off: the local hub speaks plain HTTP)."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1"}


def lab_dir(given: str | None) -> Path:
    """--dir, else $LLORCH_LAB_DIR, else the user's data directory (platformdirs)."""
    raw = given or os.environ.get(LAB_DIR_ENV, "").strip()
    if raw:
        return Path(raw).expanduser().absolute()
    import platformdirs

    return platformdirs.user_data_path("llorch-harness") / "lab"


def _alive(state: LabState) -> bool:
    """Is the recorded hub still that very process (pid, start time, command line)?"""
    try:
        proc = psutil.Process(state.pid)
        return (abs(proc.create_time() - state.create_time) < 1.0
                and HUB_MODULE in proc.cmdline() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def read_state(directory: Path) -> LabState | None:
    """The running lab in `directory`, or None (no record, or its process is gone)."""
    path = directory / STATE_FILE
    if not path.exists():
        return None
    try:
        state = LabState(**json.loads(read_regular_text(path)))
    except (ValueError, TypeError) as exc:
        raise HarnessError(f"unreadable lab record {path}: {exc}",
                           "remove it, then run: llorch-harness lab up") from None
    return state if _alive(state) else None


def build_hub_root(directory: Path) -> Path:
    """The tiny repos under DIR/hub, built once (a second `lab up` reuses them)."""
    from llorch_harness.lab.hub import build_embedded_hub_root

    root = directory / HUB_DIR
    if not (root / BUILT_MARK).exists():
        build_embedded_hub_root(root)
        (root / BUILT_MARK).write_text("tiny models built by llorch-harness lab up\n")
    return root


def _wait_url(proc: subprocess.Popen[bytes], log: Path) -> str:
    """The URL from the hub's `hub serving DIR at URL` line, once it is listening."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("hub serving ") and " at http" in line:
                return line.rsplit(" at ", 1)[1].strip()
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise HarnessError(f"the lab's hub exited with status {proc.returncode}: "
                               f"{' | '.join(tail)}", f"see {log}")
        time.sleep(0.1)
    proc.terminate()
    raise HarnessError(f"the lab's hub did not start within {READY_TIMEOUT_S:g}s", f"see {log}")


def up(directory: Path, port: int = 0) -> tuple[LabState, bool]:
    """Start the lab (or find it running): (state, started now)."""
    running = read_state(directory)
    if running is not None:
        return running, False
    directory.mkdir(parents=True, exist_ok=True)
    root = build_hub_root(directory)
    log = directory / "hub.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", HUB_MODULE, str(root), "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = _wait_url(proc, log)
    state = LabState(pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(),
                     url=url, hub_root=str(root), log=str(log))
    atomic_write_text(directory / STATE_FILE, json.dumps(asdict(state), indent=2) + "\n")
    return state, True


def down(directory: Path, grace: float = 10.0) -> LabState | None:
    """Stop the lab's hub (SIGTERM, then SIGKILL after `grace`); None if none was running."""
    state = read_state(directory)
    (directory / STATE_FILE).unlink(missing_ok=True)
    if state is None:
        return None
    try:
        proc = psutil.Process(state.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(grace)
    except psutil.NoSuchProcess:
        pass  # it ended on its own meanwhile
    return state
