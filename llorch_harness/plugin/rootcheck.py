"""Refuse a run whose rootdir an option's value moved (issue 20 #16), with public pytest only.

pytest picks the rootdir and ini file from the command line before it loads plugins from
entry points, so in `--llorch-bin-dir DIR` it cannot know that DIR is a value: an existing
DIR counts as a test path, and the run may be rooted there, without pyproject.toml
(testpaths, markers, xfail_strict). pytest offers no public way to move the rootdir once
chosen, so the gate detects the case and asks for the joined form `--llorch-bin-dir=DIR`.

Detected when, with neither --rootdir nor -c given, an existing path on the command line
was consumed as an option's value (it is not among the final test paths) and pytest's
documented rootdir rules, applied to the real test paths, give another rootdir or ini file
than the one the run got. Runs without such a value are never checked.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest

CONFIG_FILES = ("pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini", "pyproject.toml",
                "tox.ini", "setup.cfg")


def _as_path(arg: str, base: Path) -> Path | None:
    """The existing path a command-line word names (`file.py::test` counts), else None."""
    if not arg or arg.startswith("-"):
        return None
    path = Path(arg.split("::", 1)[0])
    path = path if path.is_absolute() else base / path
    try:
        return path.absolute() if path.exists() else None
    except (OSError, ValueError):
        return None


def command_words(config: pytest.Config) -> list[str]:
    """The words pytest's first look at the command line saw: $PYTEST_ADDOPTS, then argv."""
    try:
        extra = shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    except ValueError:
        extra = []
    return [*extra, *(str(a) for a in config.invocation_params.args)]


def stray_values(config: pytest.Config) -> list[tuple[str, str]]:
    """(option, value): existing paths written after an option that took them as its value."""
    if config.getoption("rootdir", None) or config.getoption("inifilename", None):
        return []
    base = config.invocation_params.dir
    positional = {str(a) for a in config.getoption("file_or_dir", None) or []}
    words = command_words(config)
    out = []
    for i, word in enumerate(words):
        if word in positional or _as_path(word, base) is None:
            continue
        before = words[i - 1] if i else ""
        if before.startswith("-") and "=" not in before:
            out.append((before, word))
    return out


def _dirs(config: pytest.Config) -> list[Path]:
    """The real test paths as pytest's rootdir rules see them (files count as their dir)."""
    base = config.invocation_params.dir
    found = [_as_path(str(a), base) for a in config.getoption("file_or_dir", None) or []]
    return [p if p.is_dir() else p.parent for p in found if p is not None]


def _common(paths: list[Path], fallback: Path) -> Path:
    return Path(os.path.commonpath(paths)) if paths else fallback


def _holds_pytest_config(path: Path) -> bool | None:
    """True: pytest reads its configuration from this file; None: a pyproject.toml without
    it (a rootdir of last resort); False: neither."""
    if path.name in CONFIG_FILES[:4]:  # pytest.toml, pytest.ini and their dot forms
        return True
    try:
        text = path.read_text(encoding="utf-8")
        if path.name == "pyproject.toml":
            tool = tomllib.loads(text).get("tool", {}).get("pytest")
            return True if isinstance(tool, dict) and tool else None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    section = "pytest" if path.name == "tox.ini" else "tool:pytest"
    return re.search(rf"^\s*\[{re.escape(section)}\]\s*$", text, re.MULTILINE) is not None


def _locate(anchors: list[Path]) -> tuple[Path | None, Path | None]:
    """The first configuration file in an anchor or above, as pytest searches for it."""
    pyproject: Path | None = None
    for anchor in anchors:
        for base in (anchor, *anchor.parents):
            for name in CONFIG_FILES:
                path = base / name
                if not path.is_file():
                    continue
                holds = _holds_pytest_config(path)
                if holds is None and pyproject is None:
                    pyproject = path
                if holds:
                    return base, path
    return (pyproject.parent, pyproject) if pyproject else (None, None)


def expected_setup(config: pytest.Config) -> tuple[Path, Path | None]:
    """(rootdir, ini file) by pytest's documented rules for the real test paths alone."""
    invocation = config.invocation_params.dir.absolute()
    dirs = _dirs(config)
    ancestor = _common(dirs, invocation)
    root, ini = _locate([ancestor])
    if root is not None:
        return root, ini
    setup_py = next((d for d in (ancestor, *ancestor.parents) if (d / "setup.py").is_file()),
                    None)
    if setup_py is not None:
        return setup_py, None
    root, ini = _locate(dirs or [invocation])
    if root is not None:
        return root, ini
    root = _common([invocation, ancestor], ancestor)
    return (ancestor if root == Path(root.anchor) else root), None


def moved_rootdir(config: pytest.Config) -> str | None:
    """A one-line reason when an option's value moved the rootdir or ini file, else None."""
    strays = stray_values(config)
    if not strays:
        return None
    root, ini = expected_setup(config)
    if (root, ini) == (config.rootpath, config.inipath):
        return None
    flag, value = strays[0]
    got = f"rootdir {config.rootpath}" + (f" (ini {config.inipath})" if config.inipath else "")
    want = f"{root}" + (f" (ini {ini})" if ini else "")
    return (f"pytest took {value} (the value of {flag}) for a test path and chose {got} "
            f"instead of {want}; write the option joined to its value: {flag}={value}")
