"""Issue 26 item 2: a failure whose cause lies outside the worker is "could not check (lab:
CAUSE)", never FAIL; transient causes are retried once and the retry shows.

Each cause through the real component: a local hub that answers 503 then 200, one that is
down, one that always answers 503; a disk too small for the model; a real sshd that
refuses, never speaks, has another host key or refuses the login, beside a remote command
that ran and failed; a device lease another run holds; a pool with no device tool. Then a
gate run (pytester, -n 2) where these meet a worker failure and a lost xdist worker: the
terminal, the gate JSON and the HTML each have the lab section and the verdict line names
the class.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llorch_harness import labretry
from llorch_harness.errors import LabFailure, PoolUnreachable
from llorch_harness.gate import labcause
from llorch_harness.lab.hub import LocalHub, build_embedded_hub_root
from llorch_harness.pool import devicehealth, leases
from llorch_harness.pool.download import download_model
from llorch_harness.pool.paths import PoolPaths
from llorch_harness.remote.poolsfile import load_pools_file
from llorch_harness.remote.ssh import RemotePool
from tests.sshd import SshdServer, free_port, make_sshd_fixture
from tests.test_remote import pool_entry, write_pools

pytest_plugins = ["pytester"]
sshd = make_sshd_fixture()
MODEL = "tiny-qwen"
LISTING = "/api/models/*"  # the revision lookup: the first request of a download
GUARD_S = 120  # anti-hang only


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_embedded_hub_root(tmp_path_factory.mktemp("hubroot"))


@pytest.fixture
def hub(hub_root: Path) -> Iterator[LocalHub]:
    with LocalHub(hub_root) as h:
        yield h


@pytest.fixture(autouse=True)
def no_retries_left_over() -> Iterator[None]:
    labretry.drain()
    yield
    labretry.drain()


def _pool(tmp_path: Path) -> PoolPaths:
    return PoolPaths.at(tmp_path / "pool")


# --------------------------------------------------------------------------- the hub


def test_hub_503_then_200_is_retried_once_and_the_retry_is_recorded(hub: LocalHub,
                                                                     tmp_path: Path) -> None:
    hub.faults.fail_5xx(503, times=1, path_glob=LISTING)
    res = download_model(_pool(tmp_path), MODEL, endpoint=hub.url, out=open(os.devnull, "w"))
    assert res.size_bytes > 0 and not res.already_downloaded
    assert [r.status for r in hub.requests if r.fault] == [503]
    retries = labretry.drain()
    assert len(retries) == 1, retries
    assert retries[0]["cause"] == "hub 5xx" and retries[0]["outcome"] == "succeeded"
    assert "listing" in retries[0]["what"] and "503" in retries[0]["detail"]


def test_hub_always_5xx_is_a_lab_failure_after_one_retry(hub: LocalHub, tmp_path: Path) -> None:
    hub.faults.fail_5xx(503, times=None, path_glob=LISTING)
    with pytest.raises(LabFailure) as info:
        download_model(_pool(tmp_path), MODEL, endpoint=hub.url, out=open(os.devnull, "w"))
    assert info.value.cause == "hub 5xx" and info.value.retried
    assert "503" in info.value.one_line() and f"download of {MODEL}" in info.value.one_line()
    assert len([r for r in hub.requests if r.status == 503]) == 2  # the try and one retry
    assert labretry.drain()[0]["outcome"] == "failed again: hub 5xx"


def test_hub_down_is_unreachable_and_not_retried(hub_root: Path, tmp_path: Path) -> None:
    with LocalHub(hub_root) as gone:
        url = gone.url  # closed on exit: the port now refuses
    with pytest.raises(LabFailure) as info:
        download_model(_pool(tmp_path), MODEL, endpoint=url, out=open(os.devnull, "w"))
    assert info.value.cause == "hub unreachable" and not info.value.retried
    assert labretry.drain() == []  # a refusal is not transient: no retry


def test_a_missing_file_on_the_hub_stays_a_plain_error(hub: LocalHub, tmp_path: Path) -> None:
    """A 404 says something about the model, not the lab's availability."""
    hub.faults.not_found("model.safetensors", "EntryNotFound")
    with pytest.raises(Exception) as info:
        download_model(_pool(tmp_path), MODEL, endpoint=hub.url, out=open(os.devnull, "w"))
    assert not isinstance(info.value, LabFailure)
    assert labcause.classify(info.value) is None


def test_a_disk_too_small_is_disk_full(hub: LocalHub, tmp_path: Path) -> None:
    import shutil

    keep = shutil.disk_usage(tmp_path).free + 2**40
    with pytest.raises(LabFailure) as info:
        download_model(_pool(tmp_path), MODEL, endpoint=hub.url, keep_free=keep,
                       out=open(os.devnull, "w"))
    assert info.value.cause == "disk full" and "not enough disk space" in info.value.message


def test_enospc_from_anywhere_is_disk_full() -> None:
    import errno

    try:
        raise RuntimeError("writing the record") from OSError(errno.ENOSPC, "No space left",
                                                              "/pool/x")
    except RuntimeError as exc:
        lab = labcause.classify(exc)
    assert lab is not None and lab.cause == "disk full" and "/pool/x" in lab.detail
    assert labcause.classify(AssertionError("tokens differ")) is None


# --------------------------------------------------------------------------- ssh


def _run(tmp_path: Path, server: SshdServer, name: str, **over: object) -> object:
    pf = write_pools(tmp_path, server, {name: pool_entry(server, tmp_path, **over)},
                     name=f"{name}.toml")
    return RemotePool(load_pools_file(pf).pools[name]).run(["status"], capture=True,
                                                           timeout=GUARD_S)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts and never says a word (ssh waits for the banner)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield sock.getsockname()[1]
    stop.set()
    t.join(5)
    for c in held:
        c.close()
    sock.close()


@pytest.mark.parametrize(("over", "kind"), [
    ({"port": "free"}, "connection refused"),
    ({"host": "badkey"}, "host key"),
    ({"user": "nobody-at-all"}, "authentication"),
])
def test_unreachable_pool_names_the_ssh_cause(tmp_path: Path, sshd: SshdServer, over: dict,
                                              kind: str) -> None:
    over = {k: (free_port() if v == "free" else v) for k, v in over.items()}
    with pytest.raises(PoolUnreachable) as info:
        _run(tmp_path, sshd, "p", **over)
    err = info.value
    assert isinstance(err, LabFailure) and err.exit_code == 255
    assert err.cause == f"pool unreachable over ssh ({kind})", err.detail
    assert labcause.classify(err) is err


def test_ssh_timeout_is_a_transient_lab_cause(tmp_path: Path, sshd: SshdServer,
                                              silent_port: int) -> None:
    with pytest.raises(PoolUnreachable) as info:
        _run(tmp_path, sshd, "slow", port=silent_port, connect_timeout=2)
    assert info.value.cause == "pool unreachable over ssh (timeout)", info.value.detail
    assert info.value.transient and info.value.retried  # tried twice: nothing ran there
    retries = labretry.drain()
    assert len(retries) == 1 and retries[0]["outcome"].startswith("failed again"), retries


def test_a_remote_command_that_ran_and_failed_is_no_lab_cause(tmp_path: Path,
                                                              sshd: SshdServer) -> None:
    res = RemotePool(load_pools_file(write_pools(
        tmp_path, sshd, {"p": pool_entry(sshd, tmp_path)})).pools["p"]).run(
        ["models", "verify", "no-such-model"], capture=True, timeout=GUARD_S)
    assert res.returncode not in (0, 255)  # it ran there and failed: the worker's side


# --------------------------------------------------------------------------- lease, device


def test_a_lease_held_by_another_run_is_not_obtained_in_time(tmp_path: Path) -> None:
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    lease_dir = tmp_path / "leases"
    holder = leases.lease_for_spawn("cuda", 0, env, lease_dir, 0, "pool-a", "holder", None)
    try:
        code = (
            "import sys\nfrom llorch_harness.pool import leases\n"
            "from llorch_harness.errors import LabFailure\n"
            "try:\n"
            f"    leases.lease_for_spawn('cuda', 0, {env!r}, {str(lease_dir)!r}, 0.5,"
            " 'pool-b', 'waiter', None)\n"
            "except LabFailure as e:\n    print(e.cause); sys.exit(3)\n")
        import subprocess

        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=GUARD_S, check=False)
    finally:
        if holder is not None:
            holder.release()
    assert res.returncode == 3, res.stderr
    assert res.stdout.strip() == "device lease not obtained"


def test_a_pool_with_no_device_tool_cannot_read_device_health(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi; no driver for NVML here
    readings = devicehealth.collect("cuda", [0])
    assert readings and readings[0].source == "none"
    with pytest.raises(LabFailure) as info:
        devicehealth.require_readable("cuda", readings)
    assert info.value.cause == "device health unreadable"
    assert "nvidia-smi not found" in info.value.detail


# --------------------------------------------------------------------------- the gate

GATE_TESTS = '''
import os
import shutil
import pytest
from pathlib import Path
from llorch_harness.lab.hub import LocalHub
from llorch_harness.pool.download import download_model
from llorch_harness.pool.paths import PoolPaths

ROOT = Path(os.environ["LABTEST_HUB_ROOT"])
D, S, M = "Model Downloads", "Worker Spawning", "Worker Management"


@pytest.mark.cpu
@pytest.mark.gate(D, "Catalog updated correctly")
def test_hub_down(tmp_path):
    with LocalHub(ROOT) as hub:
        url = hub.url
    download_model(PoolPaths.at(tmp_path / "p"), "tiny-qwen", endpoint=url)


@pytest.mark.cpu
@pytest.mark.gate(D, "File sizes are accurate")
def test_hub_503_then_200(tmp_path):
    with LocalHub(ROOT) as hub:
        hub.faults.fail_5xx(503, times=1, path_glob="/api/models/*")
        assert download_model(PoolPaths.at(tmp_path / "p"), "tiny-qwen",
                              endpoint=hub.url).size_bytes > 0


@pytest.mark.cpu
@pytest.mark.gate(S, "Worker info is saved")
def test_disk_full(tmp_path):
    with LocalHub(ROOT) as hub:
        download_model(PoolPaths.at(tmp_path / "p"), "tiny-qwen", endpoint=hub.url,
                       keep_free=shutil.disk_usage(tmp_path).free + 2**40)


@pytest.mark.cpu
@pytest.mark.gate(S, "Logs are written to files")
def test_worker_fault():
    assert False, "the worker wrote no log line"


@pytest.mark.cpu
@pytest.mark.gate(M, "Process status is accurate")
def test_pytest_worker_lost():
    once = Path(__file__).with_name("killed-once")
    if os.environ.get("PYTEST_XDIST_WORKER") and not once.exists():
        once.touch()
        os._exit(9)  # the pytest process dies, as when the OOM killer takes it
'''


def _gate(pytester: pytest.Pytester, hub_root: Path, *args: str) -> tuple[object, dict]:
    pytester.makeconftest("llorch_gate_suite = True\n")
    pytester.makepyfile(test_lab=GATE_TESTS)
    out = pytester.path / "out"
    res = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-m", "cpu", "--pool-root", str(pytester.path / "pool"),
        "--gate-json", str(out / "g.json"), "--html", str(out / "r.html"),
        "--self-contained-html", *args, timeout=600)
    return res, json.loads((out / "g.json").read_text())


@pytest.mark.slow
def test_gate_names_lab_and_worker_failures_apart(pytester: pytest.Pytester, hub_root: Path,
                                                  monkeypatch) -> None:
    monkeypatch.setenv("LABTEST_HUB_ROOT", str(hub_root))
    res, doc = _gate(pytester, hub_root, "-n", "2")
    text = "\n".join(res.outlines)  # type: ignore[attr-defined]
    items = {r["nodeid"].rpartition("::")[2]: r for r in doc["items"]}
    assert items["test_worker_fault"]["status"] == "fail"
    for name, cause in (("test_hub_down", "hub unreachable"), ("test_disk_full", "disk full"),
                        ("test_pytest_worker_lost", "xdist worker lost")):
        assert items[name]["status"] == "error", (name, items[name], text[-4000:])
        assert items[name]["lab_cause"] == cause
        assert items[name]["reason"].startswith(f"could not check (lab: {cause})")
    assert items["test_hub_503_then_200"]["status"] == "pass"
    assert doc["verdict"] == "fail"
    assert doc["verdict_line"] == ("FAIL (worker: 1 item; lab: hub unreachable, disk full, "
                                   "xdist worker lost)")
    assert {f["cause"] for f in doc["lab_failures"]} == {"hub unreachable", "disk full",
                                                         "xdist worker lost"}
    retry = [r for r in doc["retries"] if r["nodeid"].endswith("test_hub_503_then_200")]
    assert retry and retry[0]["cause"] == "hub 5xx" and retry[0]["outcome"] == "succeeded"
    # the terminal: its own section, the retry, the verdict line naming both classes
    assert "Could not check: lab failures (not the worker's fault):" in text
    assert "Retried once (transient lab causes):" in text
    assert ("CP3 gate verdict: FAIL (worker: 1 item; lab: hub unreachable, disk full, "
            "xdist worker lost)") in text
    from tests.browser import open_page

    # the report as a person sees it: the DOM after pytest-html's scripts ran, in Chromium
    dom = open_page(pytester.path / "out" / "r.html").dom
    assert 'id="llorch-lab-failures"' in dom and "lab: xdist worker lost" in dom
    assert "COULD NOT CHECK" in dom and "Retried once" in dom
    assert "verdict: <span" in dom and "FAIL (worker: 1 item; lab: hub unreachable" in dom


@pytest.mark.slow
def test_only_lab_failures_make_the_run_incomplete(pytester: pytest.Pytester, hub_root: Path,
                                                   monkeypatch) -> None:
    monkeypatch.setenv("LABTEST_HUB_ROOT", str(hub_root))
    res, doc = _gate(pytester, hub_root, "-k", "hub_down or 503")
    assert doc["verdict"] == "incomplete"
    assert doc["verdict_line"] == "INCOMPLETE (lab: hub unreachable)"
    assert "CP3 gate verdict: INCOMPLETE (lab: hub unreachable)" in "\n".join(res.outlines)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the merge


def _lab_doc(pool: str, backend: str, fail_item: bool) -> dict:
    from tests.test_gatemerge import pool_doc

    hub_item = ("Model Downloads", "Catalog updated correctly")
    status = {hub_item: ("error", "could not check (lab: hub unreachable): refused")}
    if fail_item:
        status[("Worker Spawning", "Logs are written to files")] = ("fail", "no log line")
    doc = pool_doc(pool, backend, status=status)
    for it in doc["items"]:
        if (it["section"], it["item"]) == hub_item:
            it["lab_cause"] = "hub unreachable"
    doc["exitstatus"] = 1
    return doc


def test_merge_lists_lab_failures_apart_and_is_incomplete(tmp_path: Path) -> None:
    from llorch_harness.gate import merge as gm

    pools = [gm.parse_result(_lab_doc("mac", "metal", False), tmp_path / "m.json", "mac"),
             gm.parse_result(_lab_doc("ws", "cuda", False), tmp_path / "w.json", "ws")]
    merged = gm.merge(pools, expect_pools=["mac", "ws"])
    assert merged.verdict == "incomplete" and merged.exit_code == 1
    assert merged.problems == [] and len(merged.lab_problems) == 2
    assert merged.lab_problems[0].startswith(
        "COULD NOT CHECK (lab: hub unreachable) Model Downloads / Catalog updated correctly")
    assert merged.verdict_line == "INCOMPLETE (lab: hub unreachable)"
    doc = gm.to_json(merged, {}, tmp_path)
    assert doc["verdict_line"] == merged.verdict_line and doc["lab_failures"]
    page = gm.render_html(merged, {}, tmp_path)
    assert 'id="lab-failures"' in page and "verdict: INCOMPLETE (lab: hub unreachable)" in page
    assert gm.summary_lines(merged)[-1] == "CP3 verdict: INCOMPLETE (lab: hub unreachable)"


def test_merge_with_a_worker_failure_still_fails(tmp_path: Path) -> None:
    from llorch_harness.gate import merge as gm

    pools = [gm.parse_result(_lab_doc("mac", "metal", True), tmp_path / "m.json", "mac"),
             gm.parse_result(_lab_doc("ws", "cuda", False), tmp_path / "w.json", "ws")]
    merged = gm.merge(pools, expect_pools=["mac", "ws"])
    assert merged.verdict == "fail"
    assert merged.verdict_line == ("FAIL (worker: 1 item; 1 other problem; "
                                   "lab: hub unreachable)")  # the other: pytest exited 1
    assert any(p.startswith("FAILED Worker Spawning / Logs") for p in merged.problems)


def test_a_lab_cause_on_a_passed_item_is_bad_input(tmp_path: Path) -> None:
    from llorch_harness.errors import HarnessError
    from llorch_harness.gate import merge as gm

    doc = _lab_doc("ws", "cuda", False)
    doc["items"][0]["lab_cause"] = "hub unreachable"
    doc["items"][0]["status"] = "pass"
    with pytest.raises(HarnessError, match="lab_cause must be a string on an error item"):
        gm.parse_result(doc, tmp_path / "w.json", "ws")


def test_the_gates_remote_commands_turn_an_unreachable_pool_into_a_lab_failure(
        tmp_path: Path, sshd: SshdServer, monkeypatch) -> None:
    """tests_hw's `llorch ... --host` helper: ssh refused is the lab's; a command that ran
    on the pool and failed is a result the test judges."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tests_hw"))
    import gatehelpers

    pf = write_pools(tmp_path, sshd, {
        "dead": pool_entry(sshd, tmp_path, port=free_port()),
        "live": pool_entry(sshd, tmp_path)})
    with pytest.raises(LabFailure) as info:
        gatehelpers.run_module(gatehelpers.LLORCH_MODULE, [
            "--pools-file", str(pf), "pool", "models", "catalog", "--host", "dead"])
    assert info.value.cause == "pool unreachable over ssh (connection refused)"
    res = gatehelpers.run_module(gatehelpers.LLORCH_MODULE, [
        "--pools-file", str(pf), "pool", "models", "verify", "no-such-model", "--host", "live"])
    assert res.returncode not in (0, 255)


def test_a_device_tool_that_hangs_cannot_read_device_health(monkeypatch, tmp_path) -> None:
    """A real `nvidia-smi` stand-in that never answers: stopped at its timeout, and the
    device's health is unreadable (could not check), not a finding about the device."""
    from llorch_harness.pool.devicehealth import smi

    tool = tmp_path / "nvidia-smi"
    tool.write_text("#!/bin/sh\nexec sleep 600\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setattr(smi, "TIMEOUT_S", 1.0)
    readings = devicehealth.collect("cuda", [0])
    assert readings and readings[0].source == "none", readings
    with pytest.raises(LabFailure) as info:
        devicehealth.require_readable("cuda", readings)
    assert info.value.cause == "device health unreadable"
    assert "nvidia-smi" in info.value.detail
