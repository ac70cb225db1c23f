"""`llorch-harness lab up|env|down`: the embedded lab for the command lines.

The work is in `llorch_harness.lab.labctl`; this module prints what a person needs: the
hub's URL, the environment to export (`eval "$(llorch-harness lab env)"`), the next
commands, and how to stop it.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from llorch_harness.cli.common import port_number, require_subcommand
from llorch_harness.errors import HarnessError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `lab up|env|down` to the `llorch-harness` subcommands."""
    lab = sub.add_parser("lab", help="the embedded lab (tiny models on a local hub) for the "
                         "llorch-pool commands")
    lab.set_defaults(func=require_subcommand(lab))
    lsub = lab.add_subparsers(dest="lab_command", metavar="ACTION")
    for name, help_text, func in (
            ("up", "build the tiny models, serve them on a local hub in the background, "
             "print the environment to export", cmd_up),
            ("env", "print the environment of the running lab as shell exports "
             "(eval \"$(llorch-harness lab env)\")", cmd_env),
            ("down", "stop the lab's hub (nothing running: says so, exit 0)", cmd_down)):
        p = lsub.add_parser(name, help=help_text)
        p.add_argument("--dir", metavar="DIR", default=None,
                       help="where the lab keeps its models, hub log and record (default "
                       "$LLORCH_LAB_DIR, else the user's data directory)")
        if name == "up":
            p.add_argument("--port", type=port_number, default=0,
                           help="the hub's port (default 0: a free one)")
        p.set_defaults(func=func)


def exports(env: dict[str, str]) -> list[str]:
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def cmd_up(args: argparse.Namespace) -> int:
    from llorch_harness.lab import labctl

    directory = labctl.lab_dir(args.dir)
    state, started = labctl.up(directory, args.port)
    print(f"Embedded lab {'up' if started else 'already up'}: hub at {state.url} serving "
          f"{state.hub_root} (pid {state.pid}, log {state.log})")
    print("Export this in the shell that runs llorch-pool (or: eval \"$(llorch-harness lab "
          f"env{_dir_flag(args, directory)})\"):")
    for line in exports(state.env()):
        print(f"  {line}")
    print("Then, in a pool directory: llorch-pool models download tiny-qwen; "
          "llorch-pool worker spawn cpu --model tiny-qwen --worker reference --port 0")
    print(f"Stop it with: llorch-harness lab down{_dir_flag(args, directory)}")
    return 0


def _dir_flag(args: argparse.Namespace, directory: Path) -> str:
    return f" --dir {shlex.quote(str(directory))}" if args.dir else ""


def cmd_env(args: argparse.Namespace) -> int:
    from llorch_harness.lab import labctl

    directory = labctl.lab_dir(args.dir)
    state = labctl.read_state(directory)
    if state is None:
        raise HarnessError(f"the embedded lab in {directory} is not up",
                           f"run: llorch-harness lab up{_dir_flag(args, directory)}")
    for line in exports(state.env()):
        print(line)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from llorch_harness.lab import labctl

    directory = labctl.lab_dir(args.dir)
    state = labctl.down(directory)
    if state is None:
        print(f"The embedded lab in {directory} is not up: nothing to stop")
    else:
        print(f"Embedded lab down: hub {state.url} (pid {state.pid}) stopped; unset "
              "HF_ENDPOINT in shells that exported it")
    return 0
