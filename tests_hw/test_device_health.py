"""CP3 gate extra items about the device and the worker's memory.

"Device healthy": a card with uncorrected ECC errors, pages waiting for retirement or rows
for remapping, another process holding most of its memory, or thermal throttling (a Mac:
serious or critical thermal state, critical memory pressure) fails here, with the reason,
so a bad card is never blamed on the worker nor a bad worker on the card.

"No memory growth per request" (CP4 asks for no memory leaks): a fresh worker answers the
same greedy request again and again; the memory its processes hold (GPU memory on cuda,
resident memory elsewhere) must not keep growing. The item records the worker life's memory
at ready, at the peak during the requests and after the stop, beside `/health`'s vram_bytes.
"""

from __future__ import annotations

import json

import pytest
from gatehelpers import backend_param, expect

from llorch_harness.checks import inference_checks as ic
from llorch_harness.checks.workerclient import health
from llorch_harness.gate.checklist import GATE_DETAILS
from llorch_harness.plugin.fixtures import note_log
from llorch_harness.pool import devicehealth, memwatch
from llorch_harness.pool.backends import GPU_BACKENDS, PREFERENCE

SECTION = "Qwen Testing"
HEALTH_ITEM = "Device healthy"
GROWTH_ITEM = "No memory growth per request"
REQUESTS = 9  # one warm-up, then eight identical requests
PROMPT = ic.GATE_PROMPTS["cp3"]


def _details(request: pytest.FixtureRequest, data: dict) -> None:
    """Measurements that the item carries in the gate JSON (`items[].details`)."""
    request.node.user_properties.append((GATE_DETAILS, json.dumps(data, default=str)))


@pytest.mark.gate(SECTION, HEALTH_ITEM)
@pytest.mark.parametrize("backend", [backend_param(b) for b in GPU_BACKENDS])
def test_device_healthy(backend, worker_factory, gate_record, request):
    """The device the gate's workers use, read now (NVML, else nvidia-smi; a Mac's tools)."""
    own = [pid for h in worker_factory.spawned if h.poll() is None
           for pid in memwatch.tree_pids(h.pid)]
    readings = devicehealth.collect(backend, [0])
    gate_record["device health"] = [h.to_json() for h in readings]
    _details(request, {"device_health": gate_record["device health"]})
    # unreadable (no NVML, no nvidia-smi, a tool that hangs): could not check (lab: ...)
    devicehealth.require_readable(backend, readings)
    reasons = [f"{backend}:{h.index} {h.name or ''}: {r}" for h in readings
               for r in devicehealth.judge(h, own)]
    expect(not reasons, "no uncorrected ECC errors, no pending page retirement or row "
           "remapping, most memory free of other processes, no thermal throttling",
           "; ".join(reasons), "nvidia-smi -q" if backend == "cuda" else "pmset -g therm")


@pytest.mark.gate(SECTION, GROWTH_ITEM)
@pytest.mark.parametrize("backend", [backend_param(b) for b in PREFERENCE])
def test_no_memory_growth_per_request(backend, worker_factory, gate_record, request):
    """Memory after each of several identical requests; the later half may not sit above
    the earlier half by more than the threshold (docs/gate.md)."""
    before = memwatch.MemoryWatch.device_used_mib(backend, 0)
    handle = worker_factory.spawn(backend, worker_id=worker_factory.default_id(backend, 0,
                                                                               "memory"))
    note_log(gate_record, handle.log_path)
    uuid = devicehealth.gpu_uuids().get(0) if backend == "cuda" else None
    answer = health(handle.uri) or {}
    watch = memwatch.MemoryWatch(backend, handle.pid, index=0, uuid=uuid,
                                 vram_reported=answer.get("vram_bytes"), device_before_mib=before)
    readings: list[int] = []
    try:
        watch.sample("ready")
        with watch.peak():
            for i in range(REQUESTS):
                res = ic.run_request(handle.uri, PROMPT, ic.GATE_MAX_TOKENS,
                                     f"{backend}-memory-{i}", log_path=handle.log_path)
                end = res.terminal or {}
                expect(end.get("type") == "end" and not res.problems, "every request ends",
                       f"HTTP {res.status_code}, {end or 'no terminal event'}, "
                       f"{'; '.join(p.message for p in res.problems)}", str(handle.log_path))
                s = watch.sample(f"request {i + 1}")
                readings.append(s.gpu_bytes if s.gpu_bytes is not None else s.rss_bytes)
    finally:
        worker_factory.stop(handle)
        watch.after_stop()
        gate_record["memory"] = watch.to_json()
    kind = "gpu" if watch.samples[-1].gpu_bytes is not None else "rss"
    growth = memwatch.judge_growth(readings, what=kind)
    gate_record["memory growth"] = growth.to_json()
    _details(request, {"memory": gate_record["memory"], "memory_growth": growth.to_json()})
    expect(growth.ok, f"{kind} memory flat over {REQUESTS - 1} identical requests",
           growth.describe(), str(handle.log_path))
