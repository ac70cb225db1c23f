"""The torch engine of the reference worker on --device cpu, against the numpy engine."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from httpx_sse import connect_sse

from llorch_harness.lab.refworker.engine import Engine, GenerationParams
from llorch_harness.lab.refworker.faults import parse_faults
from llorch_harness.lab.refworker.inference import CandledBackend, SamplingConfig
from llorch_harness.lab.refworker.logs import JsonLogger
from llorch_harness.lab.refworker.qwen2 import CandleError, ModelLoadError
from llorch_harness.lab.refworker.torch_engine import (
    TorchEngine,
    device_usable,
    load_engine,
    parse_device,
    torch_available,
)
from llorch_harness.lab.tinymodel import build_tiny_model
from llorch_harness.pool.procs import free_port

pytestmark = pytest.mark.skipif(not torch_available(),
                                reason="torch engine needs the oracle extra (torch, transformers)")
PROMPTS = ("Hello, how are you?", "The capital of France is", "1 2 3 4 5 6 7 8")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "tiny-qwen"
    build_tiny_model(out, seed=0)
    return out


@pytest.fixture(scope="module")
def engines(tiny: Path) -> tuple[Engine, TorchEngine]:
    return Engine.load(tiny), TorchEngine.load(tiny, "cpu")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_equal_the_numpy_engine(engines, prompt: str) -> None:
    numpy_engine, torch_engine = engines
    params = GenerationParams(max_tokens=40, temperature=0.0)
    want = numpy_engine.generate(prompt, params)
    got = torch_engine.generate(prompt, params)
    assert got.token_ids == want.token_ids and got.pieces == want.pieces
    assert len(set(got.token_ids)) > 3  # a varied stream, not one token repeated


def test_the_cp3_loop_streams_the_same_pieces(engines) -> None:
    """inference.py's loop (the default wire) on both engines, greedy and seeded sampling."""
    outs = []
    for engine in engines:
        backend = CandledBackend(engine, JsonLogger(io.StringIO()), parse_faults(None))
        backend.warmup()
        greedy = backend.execute(PROMPTS[0], SamplingConfig(max_tokens=24, temperature=0.0))
        outs.append(greedy.token_ids)
    assert outs[0] == outs[1]


def test_logits_agree_and_the_cache_equals_no_cache(engines) -> None:
    numpy_engine, torch_engine = engines
    ids = numpy_engine.encode(PROMPTS[1])
    full = torch_engine.forward_logits(ids)
    np.testing.assert_allclose(full, numpy_engine.forward_logits(ids), atol=2e-4, rtol=1e-4)
    cache = torch_engine.model.new_cache()
    torch_engine.model.forward(ids[:-1], cache)
    last = torch_engine.model.forward(ids[-1:], cache)
    np.testing.assert_allclose(last[-1], full[-1], atol=2e-4, rtol=1e-4)
    assert cache.length == len(ids)


def test_candle_position_rules(engines) -> None:
    _, torch_engine = engines
    model = torch_engine.model
    cache = model.new_cache()
    model.forward([1, 2, 3], cache, position=0)
    with pytest.raises(CandleError, match=r"cannot broadcast \[2, 2\] to \[1, \d+, 2, 2\]"):
        model.forward([4, 5], cache, position=0)  # a stale cache under a prompt at 0
    model.forward([4], cache, position=0)  # one token: no mask, runs at the wrong place
    limit = torch_engine.max_context
    with pytest.raises(CandleError, match="narrow invalid args"):
        model.forward([4], cache, position=limit)
    with pytest.raises(ValueError, match="out of range"):
        model.forward([torch_engine.vocab_size], cache)


def test_vram_bytes_on_cpu_is_the_parameters_size(engines) -> None:
    _, torch_engine = engines
    n = torch_engine.vram_bytes()
    assert n > 0 and n % 4 == 0  # float32 parameters


def test_devices_and_engines_are_checked(tiny: Path) -> None:
    assert parse_device("cuda:1") == "cuda:1" and parse_device("mps") == "mps"
    for bad in ("gpu", "cuda:x", "cuda:"):
        with pytest.raises(ValueError, match="unknown device"):
            parse_device(bad)
    assert device_usable("cpu") is None
    import torch

    if not torch.cuda.is_available():
        assert "sees no CUDA device" in str(device_usable("cuda:0"))
        with pytest.raises(ModelLoadError, match="torch engine on cuda:0: torch .* sees no CUDA"):
            load_engine(tiny, "torch", "cuda:0")
    with pytest.raises(ModelLoadError, match="numpy engine runs on cpu only"):
        load_engine(tiny, "numpy", "cuda")
    assert isinstance(load_engine(tiny, "torch", "cpu"), TorchEngine)


def test_a_broken_directory_is_one_line(tmp_path: Path, tiny: Path) -> None:
    for name in ("tokenizer.json", "config.json"):  # no weights
        (tmp_path / name).write_bytes((tiny / name).read_bytes())
    with pytest.raises(ModelLoadError, match="transformers cannot load it") as err:
        TorchEngine.load(tmp_path, "cpu")
    assert "\n" not in err.value.one_line()
    with pytest.raises(ModelLoadError, match="tokenizer.json: missing"):
        TorchEngine.load(tmp_path / "nowhere", "cpu")


# ---------------------------------------------------------------- the worker process


class _Callbacks:
    """A real HTTP server that records the ready callbacks' bodies."""

    def __init__(self) -> None:
        bodies = self.bodies = []  # type: list[dict]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ready"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def run_worker(tmp_path: Path, tiny: Path):
    """Start `llorch-ref-candled` processes; every one is killed afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    callbacks = _Callbacks()

    def start(*extra: str, backend: str = "cpu") -> tuple[subprocess.Popen[bytes], int, Path]:
        port = free_port()
        log = tmp_path / f"w{len(procs)}.log"
        env = dict(os.environ, LLORCH_REF_BACKEND=backend, LLORCH_HARNESS_POOL=str(tmp_path))
        with log.open("wb") as out:
            p = subprocess.Popen(
                [sys.executable, "-m", "llorch_harness.lab.refworker", "--worker-id",
                 f"w{len(procs)}", "--model", str(tiny), "--port", str(port), "--callback-url",
                 callbacks.url, *extra], stdout=out, stderr=subprocess.STDOUT, env=env,
                stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(p)
        _wait_listening(p, log)
        return p, port, log

    start.callbacks = callbacks  # type: ignore[attr-defined]
    yield start
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    callbacks.close()


def _wait_listening(p: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if "HTTP server listening" in log.read_text(errors="replace"):
            return
        if p.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"worker not listening:\n{log.read_text(errors='replace')[-3000:]}")


def _pieces(port: int, prompt: str) -> list[str]:
    body = {"job_id": "j1", "prompt": prompt, "max_tokens": 24, "temperature": 0}
    with httpx.Client(trust_env=False, timeout=60) as client, connect_sse(
            client, "POST", f"http://127.0.0.1:{port}/execute", json=body) as source:
        events = [sse.json() for sse in source.iter_sse()]
    assert events[0]["type"] == "started" and events[-1]["type"] == "end", events
    return [e["t"] for e in events if e["type"] == "token"]


def test_the_torch_worker_speaks_the_same_contract(run_worker, tiny: Path) -> None:
    """Same command line plus --engine torch: callback and /health carry what torch measured,
    the SSE pieces equal the numpy worker's, the log names the engine, SIGINT ends it."""
    numpy_proc, numpy_port, _ = run_worker()
    torch_proc, torch_port, log = run_worker("--engine", "torch", "--cuda-device", "0",
                                             "--device", "cpu", backend="cuda")
    for prompt in PROMPTS:
        assert _pieces(torch_port, prompt) == _pieces(numpy_port, prompt)
    expected = TorchEngine.load(tiny, "cpu").vram_bytes()
    health = httpx.get(f"http://127.0.0.1:{torch_port}/health", trust_env=False).json()
    assert health == {"status": "healthy", "vram_bytes": expected}
    assert [b["vram_bytes"] for b in run_worker.callbacks.bodies if b["worker_id"] == "w1"] == [
        expected]
    lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
    ready = [ln["fields"] for ln in lines if ln["fields"].get("message") == "Reference engine "
             "ready"]
    assert ready == [{"message": "Reference engine ready", "engine": "torch", "device": "cpu",
                      "vram_bytes": expected}]
    assert any(ln["fields"].get("message") == "GPU warmup complete - ready for inference"
               for ln in lines)
    for p in (torch_proc, numpy_proc):
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 0
    assert "HTTP server shutdown complete" in log.read_text()


def test_bad_engine_flags_are_usage_errors(tiny: Path) -> None:
    base = [sys.executable, "-m", "llorch_harness.lab.refworker", "--worker-id", "w", "--model",
            str(tiny), "--port", "1", "--callback-url", "http://localhost:9999/x"]
    for extra, want in ((["--engine", "tensorflow"], "[possible values: numpy, torch]"),
                        (["--device", "gpu0"], "unknown device 'gpu0'")):
        res = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and want in res.stderr, res.stderr
    res = subprocess.run([*base, "--device", "cuda:0"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1 and "numpy engine runs on cpu only" in res.stderr


def test_the_embedded_lab_runs_gpu_items_where_torch_sees_the_device() -> None:
    """The lab decision: torch sees cuda here -> the cuda items run on the reference worker's
    torch engine, and the report's environment says so; torch does not see metal -> those
    items skip as before, and the lab's notes say why."""
    from llorch_harness.plugin import labs
    from llorch_harness.plugin.report import harness_metadata

    hardware = {"cpu": None, "cuda": None, "metal": None}
    d = labs.decide(labs.Settings(), hardware=hardware, path_env="",
                    torch_devices={"cuda": None, "metal": "torch 2.x sees no MPS (Metal) device"})
    assert d.lab == "embedded"
    cuda, metal = d.backends["cuda"], d.backends["metal"]
    assert cuda.usable and cuda.worker == "reference" and cuda.engine == "torch on cuda:0"
    assert not metal.usable and metal.reason.startswith("embedded lab has no metal worker")
    assert "metal: the reference worker's torch engine cannot run it: torch 2.x sees no MPS" \
        in " ".join(d.notes)
    rows = harness_metadata({**d.to_json(), "banner": d.banner()})
    assert rows["llorch cuda worker"] == "reference, torch on cuda:0"
    assert rows["llorch cpu worker"] == "reference, numpy on cpu"
    assert labs.item_verdict(d, ["cuda"]) == labs.ItemVerdict("run", "cuda")
