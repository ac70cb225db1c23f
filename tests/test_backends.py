"""One backend table (issue 13): every list of backends and every binary lookup derives
from `pool/backends.py`, so changing the table changes them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from llorch_harness.cli import llorch_main, pool_main
from llorch_harness.errors import HarnessError
from llorch_harness.gate import checklist
from llorch_harness.plugin import labs
from llorch_harness.pool import backends
from llorch_harness.remote import poolsfile


def test_the_derived_lists() -> None:
    assert backends.BACKEND_NAMES == tuple(backends.BACKENDS) == ("cpu", "cuda", "metal")
    assert backends.PREFERENCE == ("metal", "cuda", "cpu")  # a GPU speaks for a pool first
    assert backends.GPU_BACKENDS == ("metal", "cuda")
    assert backends.CPU in backends.BACKENDS and not backends.BACKENDS[backends.CPU].gpu


def test_every_consumer_uses_the_table() -> None:
    assert poolsfile.VALID_BACKENDS is backends.BACKEND_NAMES
    assert labs.BACKEND_NAMES is backends.BACKEND_NAMES
    assert labs.BACKEND_ORDER is backends.PREFERENCE
    assert checklist.GateItem("s", "i").backends is backends.BACKEND_NAMES
    for name in backends.BACKENDS:
        assert labs.binary_names(name) is backends.BACKENDS[name].binaries


def test_cli_backend_arguments_follow_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """`models register --backends` defaults to all of them, and `llorch` refuses a
    backend the table does not know before anything is forwarded."""
    ns = pool_main.build_parser().parse_args(["models", "register", "m", "--name", "n",
                                              "--repo", "o/m", "--architecture", "a"])
    assert ns.backends.split(",") == list(backends.BACKEND_NAMES)
    ns = llorch_main.build_parser().parse_args(["pool", "worker", "spawn", "rocm", "--model",
                                                "m", "--host", "h"])
    with pytest.raises(HarnessError, match="unknown backend 'rocm'"):
        llorch_main.remote_args(("worker", "spawn"), ns)


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_one_binary_lookup_for_spawn_and_the_gate(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Directory order wins; in one directory the current name beats the older one; the
    gate's lab decision (labs.find_backend_binary) and spawn (backends.find_binary) agree."""
    first, second = tmp_path / "first", tmp_path / "second"
    older = _exe(first / "llorch-candled")
    newer = _exe(second / "llorch-cpu-candled")
    monkeypatch.delenv(backends.BIN_DIR_ENV, raising=False)
    monkeypatch.setenv("PATH", f"{first}:{second}")
    assert backends.locate_binary("cpu", [first, second]) == older
    assert backends.find_binary("cpu") == older
    assert labs.find_backend_binary("cpu", None, f"{first}:{second}") == older
    newest = _exe(first / "llorch-cpu-candled")
    assert backends.locate_binary("cpu", [first, second]) == newest
    assert backends.find_binary("cpu", second) == newer  # --llorch-bin-dir before PATH
    assert labs.find_backend_binary("cpu", str(second), f"{first}") == newer
    assert backends.locate_binary("cuda", [first, second]) is None
    assert labs.find_backend_binary("metal", None, f"{first}:{second}") is None


def test_absent_reasons_name_why(monkeypatch: pytest.MonkeyPatch) -> None:
    reasons = backends.absent_reasons({"cpu": "x86_64"})
    assert reasons["cpu"] is None
    assert reasons["cuda"] is not None and "NVIDIA" in reasons["cuda"]
    assert reasons["metal"] == "not Apple Silicon macOS (Metal needs an arm64 Mac)"
    assert backends.absent_reasons({"cpu": "", "cuda": "1 GPU", "metal": "M2"}) == {
        "cpu": None, "cuda": None, "metal": None}
