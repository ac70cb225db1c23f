"""A scripted `nvidia-smi` for machines without an NVIDIA GPU.

It answers the queries the harness makes (`-L`, the plain header, `--query-gpu`,
`--query-compute-apps`, `--query-remapped-rows`) from a JSON state file the test writes
and may rewrite while a run goes on. Compute processes are found live: every process of
this user whose environment holds FAKE_GPU_MIB=N (and FAKE_GPU_UUID) counts as holding
N MiB on that GPU while it runs, so a leftover child really keeps its memory.
A field listed in "unknown_fields" is refused the way a driver that lacks it does.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

STATE_ENV = "FAKE_SMI_STATE"
MIB_ENV = "FAKE_GPU_MIB"
UUID_ENV = "FAKE_GPU_UUID"

SCRIPT = r'''#!{python}
import json, os, sys
import psutil
state = json.load(open(os.environ["FAKE_SMI_STATE"]))
args = sys.argv[1:]
if state.get("log"):
    with open(state["log"], "a") as fh:
        fh.write(" ".join(args) + "\n")
if state.get("fail"):
    print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    sys.exit(9)
gpus = state.get("gpus", [])

def apps():
    out = list(state.get("apps", []))
    for p in psutil.process_iter():
        try:
            env = p.environ()
        except (psutil.Error, OSError):
            continue
        if "FAKE_GPU_MIB" in env and p.pid != os.getpid():
            out.append({{"pid": p.pid, "gpu_uuid": env.get("FAKE_GPU_UUID", gpus[0]["uuid"]),
                        "used_memory": float(env["FAKE_GPU_MIB"]), "process_name": p.name()}})
    return out

def used(g):
    extra = sum(a["used_memory"] for a in apps() if a["gpu_uuid"] == g["uuid"])
    return g.get("memory.used", 0) + extra

def fields_of(arg):
    names = arg.split("=", 1)[1].split(",")
    for n in names:
        if n in state.get("unknown_fields", []):
            print(f'Field "{{n}}" is not a valid field to query.', file=sys.stderr)
            sys.exit(2)
    return names

def emit(rows, names):
    for row in rows:
        print(", ".join(str(row.get(n, "[N/A]")) for n in names))

ids = [a.split("=", 1)[1] for a in args if a.startswith("--id=")]
sel = [g for g in gpus if not ids or str(g["index"]) in ids]
if not args:
    print("| NVIDIA-SMI {{d}}   Driver Version: {{d}}   CUDA Version: {{c}}     |".format(
        d=state.get("driver", "550.54.15"), c=state.get("cuda_version", "12.4")))
elif args[0] == "-L":
    for g in gpus:
        print(f"GPU {{g['index']}}: {{g['name']}} (UUID: {{g['uuid']}})")
elif args[0].startswith("--query-gpu="):
    names = fields_of(args[0])
    emit([dict(g, **{{"memory.used": used(g), "driver_version": state.get("driver", "550.54.15")}})
          for g in sel], names)
elif args[0].startswith("--query-compute-apps="):
    emit(apps(), fields_of(args[0]))
elif args[0].startswith("--query-remapped-rows="):
    names = fields_of(args[0])
    emit([dict(g, gpu_uuid=g["uuid"]) for g in gpus], names)
else:
    print(f"unknown arguments {{args}}", file=sys.stderr)
    sys.exit(2)
'''


def gpu(index: int = 0, **over: Any) -> dict[str, Any]:
    """One healthy GPU, fields as nvidia-smi names them (nounits)."""
    g: dict[str, Any] = {
        "index": index, "uuid": f"GPU-fake-{index:04d}", "name": "NVIDIA Fake 4090",
        "memory.total": 24564, "memory.used": 300, "persistence_mode": "Enabled",
        "temperature.gpu": 45, "ecc.errors.uncorrected.volatile.total": 0,
        "retired_pages.pending": "No", "clocks_event_reasons.active": "0x0000000000000000",
        "remapped_rows.pending": 0, "remapped_rows.failure": 0,
    }
    g.update(over)
    return g


def install(dest: Path, state: dict[str, Any]) -> dict[str, str]:
    """Write the script and its state under dest; the environment that puts it on PATH."""
    bindir = dest / "fakesmi-bin"
    bindir.mkdir(parents=True, exist_ok=True)
    exe = bindir / "nvidia-smi"
    exe.write_text(SCRIPT.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    state_path = dest / "fakesmi-state.json"
    write_state(state_path, state)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            STATE_ENV: str(state_path), "LLORCH_NVML": "0"}


def write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


NOMINAL_THERM = "Note: No thermal warning level has been recorded"


def _tool(bindir: Path, name: str, body: str) -> None:
    exe = bindir / name
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def install_mac(bindir: Path, therm: str = NOMINAL_THERM, pressure: str = "1") -> Path:
    """A scripted Apple Silicon's tools (sysctl, sw_vers, pmset, memory_pressure) in bindir:
    an M2 Pro with 32 GiB, the given `pmset -g therm` text and pressure level."""
    bindir.mkdir(parents=True, exist_ok=True)
    _tool(bindir, "sysctl", 'case "$2" in\n machdep.cpu.brand_string) echo "Apple M2 Pro";;\n'
          ' hw.memsize) echo 34359738368;;\n'
          f' kern.memorystatus_vm_pressure_level) echo {pressure};;\n *) exit 1;;\nesac')
    _tool(bindir, "sw_vers", "echo 14.6.1")
    _tool(bindir, "pmset", f"printf '%s\\n' '{therm}'")
    _tool(bindir, "memory_pressure", "echo 'System-wide memory free percentage: 61%'")
    return bindir
