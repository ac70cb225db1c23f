"""Device health: a scripted nvidia-smi on PATH, NVML's mapping, the Mac's tools, judge, diff."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from llorch_harness.pool import devicehealth
from llorch_harness.pool.devicehealth import DeviceHealth, GpuProcess, apple, nvml
from tests import fakesmi


def _use(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state: dict) -> Path:
    for k, v in fakesmi.install(tmp_path, state).items():
        monkeypatch.setenv(k, v)
    return tmp_path / "fakesmi-state.json"


def test_healthy_gpu_read_through_nvidia_smi(monkeypatch, tmp_path: Path) -> None:
    _use(monkeypatch, tmp_path, {"gpus": [fakesmi.gpu(0), fakesmi.gpu(1)], "cuda_version": "12.6",
                                 "driver": "560.35.03"})
    [h] = devicehealth.collect("cuda", [1])
    assert (h.source, h.index, h.uuid, h.name) == ("nvidia-smi", 1, "GPU-fake-0001",
                                                   "NVIDIA Fake 4090")
    assert (h.driver_version, h.cuda_version) == ("560.35.03", "12.6")
    assert (h.memory_total_mib, h.memory_used_mib, h.persistence_mode) == (24564, 300, True)
    assert (h.ecc_uncorrected, h.retired_pages_pending, h.remapped_rows_pending) == (0, False,
                                                                                      False)
    assert h.temperature_c == 45 and h.throttle_reasons == [] and h.errors == []
    assert devicehealth.judge(h) == []
    assert devicehealth.gpu_uuids() == {0: "GPU-fake-0000", 1: "GPU-fake-0001"}


def test_unhealthy_gpu_gets_every_reason(monkeypatch, tmp_path: Path) -> None:
    bad = fakesmi.gpu(0, **{"ecc.errors.uncorrected.volatile.total": 3,
                            "retired_pages.pending": "Yes", "remapped_rows.pending": 1,
                            "clocks_event_reasons.active": "0x0000000000000041",
                            "temperature.gpu": 93})
    _use(monkeypatch, tmp_path, {"gpus": [bad], "apps": [
        {"pid": 4000001, "gpu_uuid": "GPU-fake-0000", "used_memory": 20000,
         "process_name": "someone-elses-training"}]})
    [h] = devicehealth.collect("cuda", [0])
    assert h.throttle_reasons == ["gpu_idle", "hw_thermal_slowdown"]
    reasons = devicehealth.judge(h)
    text = "; ".join(reasons)
    assert "3 uncorrected ECC error(s)" in text and "page retirement pending" in text
    assert "row remapping pending" in text and "thermal throttling at 93 C" in text
    assert "other processes hold 20000 of 24564 MiB (pid 4000001 someone-elses-training" in text
    assert len(reasons) == 5
    assert "other processes" not in "; ".join(devicehealth.judge(h, own_pids=[4000001]))


def test_a_live_process_holding_memory_is_listed(monkeypatch, tmp_path: Path) -> None:
    _use(monkeypatch, tmp_path, {"gpus": [fakesmi.gpu(0)]})
    env = dict(os.environ, FAKE_GPU_MIB="20000", FAKE_GPU_UUID="GPU-fake-0000")
    hog = subprocess.Popen(["sleep", "60"], env=env)
    try:
        _wait_environ(hog.pid)
        [h] = devicehealth.collect("cuda", [0])
        assert [(p.pid, p.used_mib) for p in h.processes] == [(hog.pid, 20000)]
        assert h.memory_used_mib == 20300
        assert any("other processes hold 20000" in r for r in devicehealth.judge(h))
    finally:
        hog.kill()
        hog.wait()
    [after] = devicehealth.collect("cuda", [0])
    assert after.processes == [] and devicehealth.judge(after) == []
    changed = devicehealth.diff(h, after)
    assert changed["memory_used_mib"] == {"before": 20300, "after": 300}
    assert changed["processes"] == {"before": [hog.pid], "after": []}


def _wait_environ(pid: int) -> None:
    import psutil

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if "FAKE_GPU_MIB" in psutil.Process(pid).environ():
                return
        except psutil.Error:
            pass
        time.sleep(0.01)


def test_fields_an_older_driver_lacks_are_noted_not_fatal(monkeypatch, tmp_path: Path) -> None:
    old = fakesmi.gpu(0, **{"clocks_throttle_reasons.active": "0x0000000000000020"})
    _use(monkeypatch, tmp_path, {"gpus": [old], "unknown_fields": [
        "clocks_event_reasons.active", "ecc.errors.uncorrected.volatile.total"]})
    [h] = devicehealth.collect("cuda", [0])
    assert h.throttle_reasons == ["sw_thermal_slowdown"]  # the older spelling answered
    assert h.ecc_uncorrected is None
    assert any(e.startswith("ecc.errors.uncorrected.volatile.total:") for e in h.errors)
    assert h.memory_total_mib == 24564


def test_no_driver_gives_a_reading_that_says_why(monkeypatch, tmp_path: Path) -> None:
    _use(monkeypatch, tmp_path, {"fail": True, "gpus": []})
    [h] = devicehealth.collect("cuda", [0])
    assert h.source == "none" and "exit 9" in h.errors[0]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    [h] = devicehealth.collect("cuda", [0])
    assert "nvidia-smi not found" in h.errors[0]
    assert devicehealth.gpu_uuids() == {} and devicehealth.compute_apps() is None
    assert devicehealth.collect("cpu", [0]) == []


def test_reading_survives_json(monkeypatch, tmp_path: Path) -> None:
    h = DeviceHealth(backend="cuda", index=0, source="nvml", processes=[GpuProcess(1, 2.0)])
    assert DeviceHealth.from_json(h.to_json()) == h


# ---------------------------------------------------------------- NVML's mapping

class _FakeNvml(SimpleNamespace):
    """The handful of pynvml calls the reader makes (the real library needs a GPU)."""


def _fake_nvml(pending: int = 0) -> _FakeNvml:
    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    def not_supported(*_a: object) -> None:
        raise NVMLError_NotSupported("Not Supported")

    mib = 1024 * 1024
    return _FakeNvml(
        NVMLError=NVMLError, NVMLError_NotSupported=NVMLError_NotSupported,
        NVML_MEMORY_ERROR_TYPE_UNCORRECTED=1, NVML_VOLATILE_ECC=0, NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 1,
        nvmlSystemGetDriverVersion=lambda: "550.54.15",
        nvmlSystemGetCudaDriverVersion_v2=lambda: 12040,
        nvmlDeviceGetHandleByIndex=lambda i: f"h{i}",
        nvmlDeviceGetName=lambda h: b"NVIDIA H100", nvmlDeviceGetUUID=lambda h: "GPU-h100",
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=80 * 1024 * mib, used=512 * mib),
        nvmlDeviceGetPersistenceMode=lambda h: 1,
        nvmlDeviceGetTotalEccErrors=lambda h, kind, counter: 0,
        nvmlDeviceGetRetiredPagesPendingStatus=lambda h: pending,
        nvmlDeviceGetRemappedRows=not_supported,
        nvmlDeviceGetTemperature=lambda h, s: 51,
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0x4,
        nvmlDeviceGetComputeRunningProcesses=lambda h: [
            SimpleNamespace(pid=77, usedGpuMemory=256 * mib),
            SimpleNamespace(pid=78, usedGpuMemory=None)],
    )


def test_nvml_reading_maps_every_field(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(pending=1))
    monkeypatch.delenv(nvml.DISABLE_ENV, raising=False)
    [h] = devicehealth.collect("cuda", [0])
    assert (h.source, h.name, h.uuid, h.cuda_version) == ("nvml", "NVIDIA H100", "GPU-h100",
                                                          "12.4")
    assert (h.memory_total_mib, h.memory_used_mib) == (81920, 512)
    assert h.persistence_mode is True and h.ecc_uncorrected == 0 and h.temperature_c == 51
    assert h.retired_pages_pending is True and h.remapped_rows_pending is None
    assert h.throttle_reasons == ["sw_power_cap"] and h.errors == []
    assert [(p.pid, p.used_mib) for p in h.processes] == [(77, 256), (78, None)]
    assert devicehealth.judge(h) == ["page retirement pending (reset the GPU or reboot)"]
    assert devicehealth.gpu_uuids() == {0: "GPU-h100"}
    monkeypatch.setenv(nvml.DISABLE_ENV, "0")
    assert nvml.collect([0]) is None


def test_without_the_driver_library_nvml_steps_aside(monkeypatch) -> None:
    pytest.importorskip("pynvml")
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has the NVIDIA driver library: NVML answers for real")
    monkeypatch.delenv(nvml.DISABLE_ENV, raising=False)
    assert not nvml.available() and nvml.collect() is None


# ---------------------------------------------------------------- Apple Silicon

def _mac(tmp_path: Path, therm: str, pressure: str) -> Path:
    return fakesmi.install_mac(tmp_path / "macbin", therm, pressure)


def test_apple_silicon_reading(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(_mac(tmp_path, "Note: No thermal warning level has been "
                                                   "recorded", "1")))
    [h] = devicehealth.collect("metal", [0])
    assert (h.source, h.chip, h.macos_version) == ("apple", "Apple M2 Pro", "14.6.1")
    assert h.unified_memory_bytes == 32 * 1024**3 and h.memory_total_mib == 32768
    assert (h.thermal_state, h.memory_pressure, h.memory_free_percent) == ("nominal", "normal",
                                                                           61)
    assert devicehealth.judge(h) == [] and h.errors == []


def test_a_hot_mac_under_pressure_is_unhealthy(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(_mac(tmp_path, "CPU_Speed_Limit \t= 70", "4")))
    h = apple.collect(0)
    assert (h.cpu_speed_limit, h.thermal_state) == (70, "serious")
    assert devicehealth.judge(h) == ["thermal state serious, CPU speed limit 70%",
                                     "memory pressure critical"]


def test_thermal_state_scale() -> None:
    assert [apple.thermal_state(s, lv) for s, lv in
            ((None, None), (90, None), (100, 2), (40, 0), (100, 3))] == [
        "nominal", "fair", "serious", "critical", "critical"]


def test_a_mac_without_its_tools_says_so(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    h = apple.collect(0)
    assert h.chip is None and h.thermal_state is None and len(h.errors) >= 4


def test_session_readings_before_after_and_change(monkeypatch, tmp_path: Path) -> None:
    from llorch_harness.pool.devicehealth.session import SessionHealth

    state = _use(monkeypatch, tmp_path, {"gpus": [fakesmi.gpu(0)]})
    s = SessionHealth.start(["cpu", "cuda"])
    assert list(s.before) == ["cuda:0"] and s.backends == ["cuda"]
    hot = fakesmi.gpu(0, **{"temperature.gpu": 91, "clocks_event_reasons.active": "0x40"})
    fakesmi.write_state(state, {"gpus": [hot]})
    s.finish()
    data = s.to_json()["cuda:0"]
    assert data["unhealthy_before"] == [] and data["changed"]["temperature_c"] == {
        "before": 45, "after": 91}
    assert data["unhealthy_after"] == ["thermal throttling at 91 C (hw_thermal_slowdown)"]
    rows = s.metadata_rows("llorch ")
    assert rows["llorch device cuda:0 before"].endswith(", 45 C, healthy")
    after = rows["llorch device cuda:0 after"]
    assert "UNHEALTHY: thermal throttling at 91 C" in after
    assert "temperature_c 45.0 -> 91.0" in after
