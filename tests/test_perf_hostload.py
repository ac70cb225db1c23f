"""The host's conditions over a measuring window, with real processes: CPU time of processes
outside the harness's tree counts as other processes' load, a child the harness waited for
counts as its own; a hog on every core makes the host busy, and a wait for quiet gives up
at its bound; the GPU's throttle reasons and other processes' use through a scripted
nvidia-smi; a Mac's thermal state through a scripted pmset."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llorch_harness.perf import devload
from llorch_harness.perf.hostload import BusyPolicy, HostWindow, wait_for_quiet
from tests import fakesmi, perfhog

BURN_S = 1.0  # CPU seconds each measured process burns (a budget, not a duration)


def _me() -> list[int]:
    return [os.getpid()]


def test_cpu_of_processes_outside_the_tree_is_other_processes_load():
    window = HostWindow(BusyPolicy(), own_roots=_me)
    with window.watching():
        procs = perfhog.start(1, cpu_budget_s=BURN_S)
        perfhog.wait_done(procs)
    cond = window.conditions
    assert cond is not None
    assert cond.others_cpu_s >= 0.9 * BURN_S, cond.to_json()
    assert cond.own_cpu_s < cond.others_cpu_s  # the spinner was not ours


def test_a_child_the_harness_waited_for_is_its_own_load():
    """A worker that started and stopped inside the window is counted through its parent."""
    window = HostWindow(BusyPolicy(), own_roots=_me)
    with window.watching():
        subprocess.run([sys.executable, "-c", perfhog.SPIN, str(BURN_S), "600"], check=True,
                       timeout=300)
    cond = window.conditions
    assert cond is not None and cond.own_cpu_s >= 0.9 * BURN_S, cond.to_json()
    doc = cond.to_json()
    assert doc["cores"] >= 1 and doc["window_s"] > 0 and "other processes used" in doc["text"]
    if hasattr(os, "getloadavg"):
        assert doc["load_avg"] is not None and len(doc["load_avg"]) == 3


@pytest.mark.slow
def test_a_hog_on_every_core_makes_the_host_busy_and_the_wait_gives_up():
    policy = BusyPolicy(quiet_wait_s=2.0, probe_s=1.0)
    with perfhog.hog() as procs:
        window = HostWindow(policy, own_roots=_me)
        with window.watching():
            perfhog.wait_cpu(procs, BURN_S)  # the window lasts until the hog used 1 s of CPU
        cond = window.conditions
        assert cond is not None and cond.busy, cond.to_json()
        assert "cores" in cond.busy_reasons[0] and cond.others_share > policy.cpu_share
        quiet, probe, waited = wait_for_quiet(policy, own_roots=_me)
    assert not quiet and probe is not None and probe.busy
    assert waited >= policy.quiet_wait_s


def test_a_throttled_or_shared_gpu_is_busy(tmp_path, monkeypatch):
    hot = fakesmi.gpu(0, **{"clocks_event_reasons.active": "0x20", "clocks.sm": 1100,
                            "clocks.max.sm": 2520, "utilization.gpu": 3})
    for k, v in fakesmi.install(tmp_path, {"gpus": [hot]}).items():
        monkeypatch.setenv(k, v)
    r = devload.read("cuda", 0)
    assert r is not None and r.source == "nvidia-smi"
    assert (r.sm_clock_mhz, r.sm_clock_max_mhz, r.utilization_pct) == (1100, 2520, 3)
    assert devload.busy_reasons([r], set(), 0.25) == [
        "GPU 0 throttled: sw_thermal_slowdown (SM clock 1100 of 2520 MHz)"]
    shared = fakesmi.gpu(0, **{"utilization.gpu": 80, "clocks.sm": 2500})
    other = {"pid": 4242, "gpu_uuid": shared["uuid"], "used_memory": 9000,
             "process_name": "trainer"}
    fakesmi.write_state(tmp_path / "fakesmi-state.json", {"gpus": [shared], "apps": [other]})
    r = devload.read("cuda", 0)
    assert r is not None
    (why,) = devload.busy_reasons([r], set(), 0.25)
    assert why == "GPU 0 80% busy with other processes on it (pid 4242 trainer)"
    assert devload.busy_reasons([r], {4242}, 0.25) == []  # our own worker's last work
    assert "SM clock 2500" in devload.describe([r])
    quiet = fakesmi.gpu(0, **{"utilization.gpu": 0, "clocks_event_reasons.active": "0x1"})
    fakesmi.write_state(tmp_path / "fakesmi-state.json", {"gpus": [quiet]})
    r = devload.read("cuda", 0)
    assert r is not None and devload.busy_reasons([r], set(), 0.25) == []  # idle is no throttle


def test_a_mac_with_a_cpu_speed_limit_is_busy(tmp_path, monkeypatch):
    bindir = fakesmi.install_mac(tmp_path / "mac", therm="CPU_Speed_Limit = 70")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    r = devload.read("metal", 0)
    assert r is not None and r.thermal_state == "serious" and r.cpu_speed_limit == 70
    assert devload.busy_reasons([r], set(), 0.25) == [
        "thermal state serious, CPU speed limit 70%"]
