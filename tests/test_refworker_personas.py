"""The reference worker playing llorch-cuda-candled / llorch-metal-candled
(`LLORCH_REF_BACKEND`), and the two real CP3 bugs as fault switches (`qwen_cache_bug`,
`decode_positions`), each against the real process on a real port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llorch_harness.lab.refworker.inference import FORWARD_FAILED

from .test_refworker_server import (
    CallbackRecorder,
    Spawner,
    Worker,
    check_stream,
    completed_for,
    execute,
    free_port,
    req,
    token_texts,
)
from .test_refworker_server import spawn as spawn
from .test_refworker_server import tiny_model as tiny_model

LONG = "Hello there, how are you today my dear friend?"
ONE_TOKEN = "Hello"  # a single token in the tiny tokenizer

GPU_STARTUP = {
    "cuda": [
        "Starting llorch-cuda-candled", "Initializing CUDA device", "Initializing CUDA device 1",
        "~device_init", "Device verification passed: Cuda(CudaDevice(DeviceId(1)))",
        "CUDA device 1 initialized and verified", "Loading model to GPU...",
        "Detected model architecture", "Loaded Qwen model",
        "Model and tokenizer loaded successfully", "~model_load",
        "Model loaded successfully on GPU", "Starting GPU warmup...", "~warmup",
        "GPU warmup complete (cache will be reset before inference)", "~warmup",
        "GPU warmup complete - ready for inference", "Calling back to pool manager",
        "~callback_ready", "Pool manager callback successful", "Callback sent to pool-managerd",
        "Worker ready, starting HTTP server", "HTTP server initialized", "~server_start",
        "llorch-cuda-candled ready on port {port} (GPU 1)", "HTTP server listening",
        "~server_bind"],
    "metal": [
        "Starting llorch-metal-candled", "Initializing Apple Metal device (GPU)",
        "Initializing Apple Metal device (GPU) 0", "~device_init",
        "Device verification passed: Metal(MetalDevice(DeviceId(1)))",
        "Metal device 0 initialized and verified", "Loading model to Metal GPU...",
        "Detected model architecture", "Loaded Qwen model",
        "Model and tokenizer loaded successfully", "~model_load",
        "Model loaded successfully on Metal GPU", "Starting GPU warmup...", "~warmup",
        "GPU warmup complete (cache will be reset before inference)", "~warmup",
        "Metal GPU warmup complete - ready for inference", "Calling back to pool manager",
        "~callback_ready", "Pool manager callback successful", "Callback sent to pool-managerd",
        "Worker ready, starting HTTP server", "HTTP server initialized", "~server_start",
        "llorch-metal-candled ready on port {port} (Metal GPU 0)", "HTTP server listening",
        "~server_bind"],
}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=httpx.Timeout(60.0)) as c:
        yield c


def started_gpu(spawn: Spawner, backend: str, extra: list[str]) -> tuple[Worker, dict]:
    port = free_port()
    recorder = CallbackRecorder(probe_port=port)
    try:
        w = spawn(port=port, callback_url=recorder.url, backend=backend, extra=extra)
        w.wait_ready()
    finally:
        recorder.close()
    assert len(recorder.records) == 1
    return w, recorder.records[0]["body"]


@pytest.mark.parametrize(("backend", "extra"), [("cuda", ["--cuda-device", "1"]),
                                                ("metal", [])])
def test_gpu_persona_startup_vram_and_requests(spawn: Spawner, tiny_model: Path,
                                               client: httpx.Client, backend: str,
                                               extra: list[str]) -> None:
    w, callback = started_gpu(spawn, backend, extra)
    expected = [m.format(port=w.port) for m in GPU_STARTUP[backend]]
    assert w.messages()[:len(expected)] == expected
    start = w.logs()[0]["fields"]
    device_key = f"{backend}_device"
    assert start[device_key] == (1 if backend == "cuda" else 0)
    assert start["backend"] == backend
    assert (start.get("status") == "pre-release") is (backend == "metal")
    size = (tiny_model / "model.safetensors").stat().st_size
    assert callback["vram_bytes"] == size
    health = client.get(f"{w.url}/health").json()
    assert health == {"status": "healthy", "vram_bytes": size if backend == "cuda" else 0}
    # a healthy worker resets the cache: the warm-up does not pollute the first request
    _, events = execute(client, w, req("gpu-1", LONG, 6))
    _, again = execute(client, w, req("gpu-2", LONG, 6))
    check_stream(events, 6)
    assert events[-1]["type"] == "end" and token_texts(events) == token_texts(again)


@pytest.mark.parametrize(("backend", "flag"), [("cuda", "--metal-device"),
                                               ("metal", "--cuda-device"), ("cuda", "--gpu")])
def test_gpu_persona_refuses_other_flags(spawn: Spawner, backend: str,
                                         flag: str) -> None:
    w = spawn(backend=backend, extra=[flag, "0"])
    assert w.wait_exit() == 2
    assert f"error: unexpected argument '{flag}' found" in w.stderr()
    assert f"Usage: llorch-{backend}-candled" in w.stderr()


# -- qwen_cache_bug ------------------------------------------------------------------------

def no_candle_text(w: Worker, *streams: list[dict]) -> None:
    everything = w.stdout() + w.stderr() + repr(streams)
    assert "broadcast_add" not in everything and "shape mismatch" not in everything


def test_qwen_cache_bug_on_cpu_fails_from_the_second_request(spawn: Spawner,
                                                             client: httpx.Client) -> None:
    w = spawn(faults="qwen_cache_bug")
    w.wait_ready()
    _, first = execute(client, w, req("q-1", LONG, 6))
    _, second = execute(client, w, req("q-2", LONG, 6))
    _, third = execute(client, w, req("q-3", "Hi there", 6))
    _, single = execute(client, w, req("q-4", ONE_TOKEN, 6))
    assert first[-1]["type"] == "end"
    for events in (second, third):
        assert events == [{"type": "error", "code": "INFERENCE_FAILED", "message": FORWARD_FAILED}]
    check_stream(single, 6)
    assert single[-1]["type"] == "end"  # one token: no mask, runs on the polluted cache
    for job in ("q-2", "q-3"):
        rec = w.wait_message("Inference failed", job_id=job)
        assert rec["level"] == "WARN" and rec["fields"]["error"] == FORWARD_FAILED
    recs = w.logs()
    resets = [r for r in recs
              if r["fields"].get("message") == "Cache reset not implemented for Qwen"]
    assert len(resets) == 4 and all(r["level"] == "WARN" for r in resets)
    claims = [r for r in recs if r["fields"].get("action") == "cache_reset"]
    assert len(claims) == 4
    assert claims[0]["fields"]["human"] == (
        "Reset KV cache before inference to clear warmup pollution")
    msgs = w.messages()
    i = msgs.index("Cache reset not implemented for Qwen")
    assert msgs[i - 3:i + 2] == ["~execute_request", "~inference_start", "~tokenize",
                                 "Cache reset not implemented for Qwen", "~cache_reset"]
    no_candle_text(w, first, second, third, single)


def test_qwen_cache_bug_on_cuda_fails_from_the_first_request(spawn: Spawner,
                                                             client: httpx.Client) -> None:
    w = spawn(faults="qwen_cache_bug", backend="cuda")
    w.wait_ready()
    _, first = execute(client, w, req("qc-1", LONG, 4))
    _, single = execute(client, w, req("qc-2", ONE_TOKEN, 4))
    assert first == [{"type": "error", "code": "INFERENCE_FAILED", "message": FORWARD_FAILED}]
    assert single[-1]["type"] == "end"
    no_candle_text(w, first, single)


# -- decode_positions ----------------------------------------------------------------------

def test_decode_positions_is_deterministic_but_wrong(spawn: Spawner,
                                                     client: httpx.Client) -> None:
    healthy = spawn()
    buggy = spawn(faults="decode_positions")
    healthy.wait_ready()
    buggy.wait_ready()
    right = token_texts(execute(client, healthy, req("dp-0", LONG, 16))[1])
    runs = [token_texts(execute(client, buggy, req(f"dp-{i}", LONG, 16))[1]) for i in (1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != right
    assert runs[0][0] == right[0]  # the prompt pass is right; the decode steps are not
    assert completed_for(buggy, "dp-1")["tokens_generated"] == 16
    assert not [r for r in buggy.logs() if r["level"] == "WARN"
                and r["fields"].get("message") != "Test-only fault switches active"]
