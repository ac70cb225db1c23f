"""The reference worker as a real process on a real port, checked against the llorch-candled
wire contract: command line, start-up order, logs, /health, /execute (SSE and 400s), shutdown,
and every fault switch. Uses the real numpy engine and the tiny model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from llorch_harness.tinymodel import build_tiny_model

from .test_refworker_validation import INVALID

TEST_MODE_CALLBACK = "http://localhost:9999/ready"
CONSOLE_SCRIPT = Path(sys.executable).parent / "llorch-ref-candled"
READY_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0
TERMINAL = {"end", "error"}


# -- helpers: ports, callback server, worker processes --------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


@dataclass
class CallbackRecorder:
    """A real HTTP server that receives the ready callback and, at that moment, probes
    whether the worker's port already accepts connections."""

    status: int = 200
    probe_port: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                refused = None if recorder.probe_port is None else port_refuses(
                    recorder.probe_port)
                recorder.records.append({"path": self.path, "body": json.loads(raw),
                                         "port_refused": refused})
                self.send_response(recorder.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_a: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/workers/ready"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    out_path: Path
    err_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout().splitlines() if line.strip()]

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def wait_log(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.logs():
                if pred(rec):
                    return rec
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"log line not seen; stdout:\n{self.stdout()}\n{self.stderr()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"worker exited {self.proc.returncode}: {self.stderr()}")
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise AssertionError("worker never became healthy")

    def kill(self) -> None:
        """SIGKILL the worker's whole session (it is its own process-group leader)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_TIMEOUT)


class Spawner:
    """Starts workers and guarantees none outlives the test that started it."""

    def __init__(self, base: Path, model: Path) -> None:
        self.base = base
        self.model = model
        self.workers: list[Worker] = []

    def __call__(self, *, model: Path | None = None, port: int | None = None,
                 callback_url: str = TEST_MODE_CALLBACK, faults: str | None = None,
                 extra: list[str] | None = None, console_script: bool = False,
                 argv: list[str] | None = None) -> Worker:
        port = free_port() if port is None else port
        name = f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        out_path, err_path = self.base / f"{name}.out", self.base / f"{name}.err"
        prog = [str(CONSOLE_SCRIPT)] if console_script else [sys.executable, "-m",
                                                              "llorch_harness.refworker"]
        if argv is None:
            argv = ["--worker-id", name, "--model", str(model or self.model), "--port", str(port),
                    "--callback-url", callback_url, *(extra or [])]
        env = {k: v for k, v in os.environ.items() if k != "LLORCH_REF_FAULTS"}
        env["LLORCH_HARNESS_POOL"] = str(self.base)  # conftest's leak sweep looks for this
        if faults is not None:
            env["LLORCH_REF_FAULTS"] = faults
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen([*prog, *argv], stdout=out, stderr=err, env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        worker = Worker(proc, port, out_path, err_path)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for w in self.workers:
            w.kill()


def execute(client: httpx.Client, worker: Worker, payload: dict[str, Any],
            headers: dict[str, str] | None = None) -> tuple[httpx.Headers, list[dict[str, Any]]]:
    with connect_sse(client, "POST", f"{worker.url}/execute", json=payload,
                     headers=dict(headers or {})) as source:
        source.response.raise_for_status()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        events = []
        for sse in source.iter_sse():
            assert sse.event == "message"  # no `event:` line on the wire
            events.append(sse.json())
        return source.response.headers, events


def check_stream(events: list[dict[str, Any]], max_tokens: int) -> list[dict[str, Any]]:
    """Contract order and counts; returns the token events."""
    kinds = [e["type"] for e in events]
    assert sum(k in TERMINAL for k in kinds) == 1 and kinds[-1] in TERMINAL, kinds
    if kinds == ["error"]:
        return []
    assert kinds[0] == "started"
    assert set(events[0]) == {"type", "job_id", "model", "started_at"}
    tokens = [e for e in events if e["type"] == "token"]
    assert [t["i"] for t in tokens] == list(range(len(tokens)))
    assert kinds == ["started", *["token"] * len(tokens), *(["metrics"] if "metrics" in kinds
                                                            else []), kinds[-1]]
    end = events[-1]
    assert end["type"] == "end"
    assert end["tokens_out"] == len(tokens) <= max_tokens
    assert isinstance(end["decode_time_ms"], int) and end["decode_time_ms"] >= 0
    assert end["stop_reason"] in {"max_tokens", "eos", "stop_sequence"}
    assert ("stop_sequence_matched" in end) == (end["stop_reason"] == "stop_sequence")
    return tokens


def req(job: str, prompt: str = "Hello world", max_tokens: int = 12, **kw: Any) -> dict:
    return {"job_id": job, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **kw}


def token_texts(events: list[dict[str, Any]]) -> list[str]:
    return [e["t"] for e in events if e["type"] == "token"]


def warn_lines(worker: Worker) -> list[dict[str, Any]]:
    return [r for r in worker.logs() if r["level"] == "WARN"]


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("tiny-qwen")
    build_tiny_model(model_dir, seed=0)
    return model_dir


@pytest.fixture(scope="module")
def module_spawner(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path_factory.mktemp("workers"), tiny_model)
    try:
        yield spawner
    finally:
        spawner.close()


@pytest.fixture
def spawn(tmp_path: Path, tiny_model: Path) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path, tiny_model)
    try:
        yield spawner
    finally:
        spawner.close()


@pytest.fixture(scope="module")
def started(module_spawner: Spawner) -> Iterator[tuple[Worker, CallbackRecorder]]:
    """One long-lived worker, started by the console script with a real callback receiver."""
    port = free_port()
    recorder = CallbackRecorder(probe_port=port)
    try:
        worker = module_spawner(port=port, callback_url=recorder.url, console_script=True)
        worker.wait_ready()
        yield worker, recorder
    finally:
        recorder.close()


@pytest.fixture(scope="module")
def worker(started: tuple[Worker, CallbackRecorder]) -> Worker:
    return started[0]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=httpx.Timeout(60.0)) as c:
        yield c


# -- start-up -------------------------------------------------------------------------------

def test_callback_arrives_before_port_accepts(started: tuple[Worker, CallbackRecorder]) -> None:
    worker, recorder = started
    assert len(recorder.records) == 1
    rec = recorder.records[0]
    assert rec["path"] == "/v1/workers/ready"
    assert rec["port_refused"] is True, "the port accepted before the callback was answered"
    body = rec["body"]
    assert set(body) == {"worker_id", "vram_bytes", "uri"}
    assert body["uri"] == f"http://localhost:{worker.port}"
    assert isinstance(body["vram_bytes"], int) and body["vram_bytes"] >= 0
    messages = [r["fields"]["message"] for r in worker.logs()]
    order = [messages.index(m) for m in ("Model loaded successfully", "Callback sent",
                                         "Server listening")]
    assert order == sorted(order)


def test_logs_are_tracing_json_lines(worker: Worker) -> None:
    records = worker.logs()
    assert records
    for rec in records:
        assert list(rec) == ["timestamp", "level", "fields", "target"]
        assert rec["timestamp"].endswith("Z") and "T" in rec["timestamp"]
        assert rec["level"] in {"TRACE", "DEBUG", "INFO", "WARN", "ERROR"}
        assert isinstance(rec["fields"]["message"], str)
        assert rec["target"].startswith("llorch_candled")
    listening = next(r for r in records if r["fields"]["message"] == "Server listening")
    assert listening["fields"]["addr"] == f"127.0.0.1:{worker.port}"


def test_health(worker: Worker, client: httpx.Client) -> None:
    resp = client.get(f"{worker.url}/health")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"status": "healthy", "vram_bytes": 0}


# -- /execute ------------------------------------------------------------------------------

def test_valid_request_stream_obeys_contract(worker: Worker, client: httpx.Client) -> None:
    _, events = execute(client, worker, req("job-contract", max_tokens=7))
    tokens = check_stream(events, 7)
    assert events[0]["job_id"] == "job-contract"
    assert events[-1]["type"] == "end"
    assert 0 < len(tokens) <= 7
    rec = worker.wait_log(lambda r: r["fields"].get("message") == "Inference completed"
                          and r["fields"].get("job_id") == "job-contract")
    assert rec["fields"]["tokens"] == len(tokens)


def test_sampled_request_with_all_fields(worker: Worker, client: httpx.Client) -> None:
    payload = req("job-sampled", max_tokens=20, temperature=0.8, top_p=0.9, top_k=20,
                  min_p=0.05, repetition_penalty=1.1, seed=7, stop=["zz", "qq"])
    _, first = execute(client, worker, payload)
    _, second = execute(client, worker, {**payload, "job_id": "job-sampled-2"})
    check_stream(first, 20)
    assert token_texts(first) == token_texts(second)  # same seed, same tokens


def test_greedy_twice_gives_identical_tokens(worker: Worker, client: httpx.Client) -> None:
    runs = [execute(client, worker, req(f"greedy-{i}", "The quick brown fox", 16))[1]
            for i in range(2)]
    for events in runs:
        check_stream(events, 16)
    assert token_texts(runs[0]) == token_texts(runs[1])
    assert len(token_texts(runs[0])) > 0


@pytest.mark.parametrize(("raw", "fields"), [(r, f) for _, r, f in INVALID],
                         ids=[i for i, _, _ in INVALID])
def test_invalid_body_gets_400_naming_each_field(worker: Worker, client: httpx.Client,
                                                 raw: bytes, fields: set[str]) -> None:
    resp = client.post(f"{worker.url}/execute", content=raw,
                       headers={"content-type": "application/json"})
    assert resp.status_code == 400
    errors = resp.json()["errors"]
    assert {e["field"] for e in errors} == fields
    for e in errors:
        assert {"field", "constraint", "message"} <= set(e) <= {"field", "constraint",
                                                                "message", "value"}


def test_longest_prompt_never_kills_the_worker(worker: Worker, client: httpx.Client) -> None:
    prompt = ("lorem ipsum dolor sit amet " * 2000)[:32768]
    _, events = execute(client, worker, req("job-long", prompt, 4))
    check_stream(events, 4)
    assert events[-1]["type"] == "error"  # longer than the tiny model's 512-token context
    assert events[-1]["code"] == "INFERENCE_FAILED" and events == events[-1:]
    rec = worker.wait_log(lambda r: r["level"] == "WARN"
                          and r["fields"].get("job_id") == "job-long")
    assert rec["fields"]["error"] == events[-1]["message"]
    assert client.get(f"{worker.url}/health").status_code == 200
    _, after = execute(client, worker, req("job-after-long", max_tokens=3))
    assert after[-1]["type"] == "end"


def test_oversized_body_gets_413_and_worker_survives(worker: Worker,
                                                     client: httpx.Client) -> None:
    resp = client.post(f"{worker.url}/execute", content=b"x" * (3 * 1024 * 1024))
    assert resp.status_code == 413
    assert client.get(f"{worker.url}/health").status_code == 200


def test_unknown_path_404_wrong_method_405(worker: Worker, client: httpx.Client) -> None:
    assert client.get(f"{worker.url}/nope").status_code == 404
    assert client.get(f"{worker.url}/execute").status_code == 405
    assert client.post(f"{worker.url}/health", json={}).status_code == 405


def test_correlation_id_echoed_or_generated(worker: Worker, client: httpx.Client) -> None:
    cid = "corr-1234"
    assert client.get(f"{worker.url}/health",
                      headers={"X-Correlation-ID": cid}).headers["x-correlation-id"] == cid
    headers, _ = execute(client, worker, req("job-corr", max_tokens=2),
                         headers={"X-Correlation-ID": cid})
    assert headers["x-correlation-id"] == cid
    bad = client.post(f"{worker.url}/execute", json={}, headers={"X-Correlation-ID": cid})
    assert bad.headers["x-correlation-id"] == cid
    generated = client.get(f"{worker.url}/health").headers["x-correlation-id"]
    assert uuid.UUID(generated).version == 4


# -- command line and start-up failures ----------------------------------------------------

@pytest.mark.parametrize("extra", [["--backend", "cpu"], ["--cuda-device", "0"],
                                   ["--metal-device", "0"], ["--gpu", "0"]])
def test_foreign_flags_exit_2(spawn: Spawner, extra: list[str]) -> None:
    w = spawn(extra=extra)
    assert w.wait_exit() == 2
    err = w.stderr()
    assert f"error: unexpected argument '{extra[0]}' found" in err
    assert "Usage: llorch-ref-candled" in err


def test_missing_required_exits_2(spawn: Spawner) -> None:
    w = spawn(argv=["--worker-id", "w", "--port", "1"], console_script=True)
    assert w.wait_exit() == 2
    assert "the following required arguments were not provided" in w.stderr()
    assert "--model <MODEL>" in w.stderr()


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json", "model.safetensors"])
def test_missing_model_file_exits_nonzero_naming_it(spawn: Spawner, tiny_model: Path,
                                                    tmp_path: Path, missing: str) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / missing).unlink()
    w = spawn(model=broken)
    code = w.wait_exit()
    assert code != 0
    err = w.stderr()
    assert err.startswith("Error: ")
    assert (missing if missing != "model.safetensors" else "safetensors") in err
    assert port_refuses(w.port)


def test_callback_non_2xx_exits_nonzero(spawn: Spawner) -> None:
    recorder = CallbackRecorder(status=500)
    try:
        w = spawn(callback_url=recorder.url)
        assert w.wait_exit() != 0
    finally:
        recorder.close()
    assert len(recorder.records) == 1
    assert "500" in w.stderr()
    assert port_refuses(w.port)


def test_callback_unreachable_exits_nonzero(spawn: Spawner) -> None:
    w = spawn(callback_url=f"http://127.0.0.1:{free_port()}/ready")
    assert w.wait_exit() != 0
    assert "callback" in w.stderr().lower()


def test_port_in_use_exits_nonzero(spawn: Spawner) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        w = spawn(port=port)
        assert w.wait_exit() != 0
    assert str(port) in w.stderr() and "in use" in w.stderr().lower()


def test_unknown_fault_exits_2(spawn: Spawner) -> None:
    w = spawn(faults="broadcast,explode")
    assert w.wait_exit() == 2
    assert "unknown fault 'explode'" in w.stderr()


# -- shutdown ------------------------------------------------------------------------------

def test_sigint_finishes_in_flight_request_and_exits_0(spawn: Spawner) -> None:
    w = spawn(faults="slow_execute=2")  # keeps the request in flight when SIGINT lands
    w.wait_ready()
    box: dict[str, Any] = {}

    def long_request() -> None:
        with httpx.Client(trust_env=False, timeout=60.0) as c:
            box["events"] = execute(c, w, req("job-inflight", max_tokens=8))[1]

    # An idle keep-alive connection must not hold the shutdown up.
    idle = httpx.Client(trust_env=False, timeout=10.0)
    try:
        assert idle.get(f"{w.url}/health").status_code == 200
        t = threading.Thread(target=long_request)
        t.start()
        w.wait_log(lambda r: r["fields"].get("job_id") == "job-inflight")
        w.proc.send_signal(signal.SIGINT)
        t.join(timeout=60)
        assert w.wait_exit() == 0
    finally:
        idle.close()
    assert box["events"][-1]["type"] == "end"
    messages = [r["fields"]["message"] for r in w.logs()]
    assert messages.index("Shutting down") < messages.index("Inference completed")
    assert port_refuses(w.port)


def test_sigterm_ends_the_process_at_once(spawn: Spawner) -> None:
    w = spawn()
    w.wait_ready()
    w.proc.send_signal(signal.SIGTERM)
    assert w.wait_exit() == -signal.SIGTERM
    assert "Shutting down" not in w.stdout()


# -- fault switches ------------------------------------------------------------------------

def test_active_faults_logged_as_warn(spawn: Spawner) -> None:
    w = spawn(faults="nan")
    w.wait_ready()
    first_warn = warn_lines(w)[0]
    assert first_warn["fields"]["faults"] == "nan"
    with httpx.Client(trust_env=False, timeout=60.0) as c:
        execute(c, w, req("job-nan", max_tokens=2))
    assert any("NaN" in json.dumps(r) for r in w.logs())


def test_fault_broadcast(spawn: Spawner) -> None:
    w = spawn(faults="broadcast")
    w.wait_ready()
    with httpx.Client(trust_env=False, timeout=60.0) as c:
        _, first = execute(c, w, req("b-1", "Hello world"))
        _, same = execute(c, w, req("b-2", "Hello world"))
        _, second = execute(c, w, req("b-3", "Hello there, how are you today my dear friend?"))
        check_stream(second, 12)
    assert first[-1]["type"] == "end" and same[-1]["type"] == "end"
    assert token_texts(first) == token_texts(same)  # same length: no error, no drift
    assert [e["type"] for e in second] == ["error"]
    assert second[0]["code"] == "INFERENCE_FAILED"
    assert "cannot broadcast" in second[0]["message"]
    rec = w.wait_log(lambda r: r["level"] == "WARN" and r["fields"].get("job_id") == "b-3")
    assert "cannot broadcast" in rec["fields"]["error"]


def test_fault_drift(spawn: Spawner) -> None:
    w = spawn(faults="drift")
    w.wait_ready()
    with httpx.Client(trust_env=False, timeout=60.0) as c:
        runs = [execute(c, w, req(f"d-{i}", "The quick brown fox", 16))[1] for i in range(2)]
    for events in runs:
        check_stream(events, 16)
        assert events[-1]["type"] == "end"
    assert token_texts(runs[0]) != token_texts(runs[1])
    assert not any(r["fields"].get("job_id", "").startswith("d-") for r in warn_lines(w))


def test_fault_panic_after_first(spawn: Spawner) -> None:
    w = spawn(faults="panic_after_first")
    w.wait_ready()
    with httpx.Client(trust_env=False, timeout=60.0) as c:
        _, events = execute(c, w, req("p-1", max_tokens=4))
    check_stream(events, 4)
    assert events[-1]["type"] == "end"
    assert w.wait_exit() == 101
    err = w.stderr()
    assert err.startswith("thread 'main' panicked at src/")
    assert ".rs:" in err.splitlines()[0]


def test_fault_never_ready(spawn: Spawner) -> None:
    recorder = CallbackRecorder()
    try:
        w = spawn(callback_url=recorder.url, faults="never_ready")
        w.wait_log(lambda r: "never_ready" in r["fields"].get("message", ""))
        time.sleep(1.0)
        assert w.proc.poll() is None
        assert recorder.records == []
        assert port_refuses(w.port)
    finally:
        recorder.close()


def test_fault_ignore_signals(spawn: Spawner) -> None:
    w = spawn(faults="ignore_signals")
    w.wait_ready()
    w.proc.send_signal(signal.SIGINT)
    w.proc.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        w.proc.wait(timeout=1.5)
    with httpx.Client(trust_env=False, timeout=10.0) as c:
        assert c.get(f"{w.url}/health").status_code == 200
    w.proc.send_signal(signal.SIGKILL)
    assert w.wait_exit() == -signal.SIGKILL


def test_fault_warmup_pollution(spawn: Spawner) -> None:
    w = spawn(faults="warmup_pollution")
    w.wait_ready()
    with httpx.Client(trust_env=False, timeout=60.0) as c:
        _, first = execute(c, w, req("wp-1", "Hello there, how are you today my dear friend?"))
        _, second = execute(c, w, req("wp-2", "Hello there, how are you today my dear friend?"))
    assert [e["type"] for e in first] == ["error"]
    assert "cannot broadcast" in first[0]["message"]
    assert second[-1]["type"] == "end"


def test_fault_stall(spawn: Spawner) -> None:
    w = spawn(faults="stall")
    w.wait_ready()
    with httpx.Client(trust_env=False, timeout=httpx.Timeout(10.0, read=1.5)) as c:
        with pytest.raises(httpx.ReadTimeout):
            execute(c, w, req("s-1", max_tokens=2))
        assert c.get(f"{w.url}/health").status_code == 200


def raw_http(port: int, request: bytes) -> bytes:
    """Send bytes on a fresh connection; read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_chunked_request_body_and_http10_client(worker: Worker) -> None:
    payload = json.dumps(req("job-raw", max_tokens=3)).encode()
    half = len(payload) // 2
    body = (f"{half:x}\r\n".encode() + payload[:half] + b"\r\n"
            + f"{len(payload) - half:x}\r\n".encode() + payload[half:] + b"\r\n0\r\n\r\n")
    answer = raw_http(worker.port, b"POST /execute HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + body)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b'"type":"end"' in answer
    old = raw_http(worker.port, b"POST /execute HTTP/1.0\r\nContent-Length: "
                   + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    head, _, stream = old.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    events = [json.loads(line[6:]) for line in stream.decode().split("\n\n") if line]
    check_stream(events, 3)
    assert events[-1]["type"] == "end"


def test_boundary_values_are_served(worker: Worker, client: httpx.Client) -> None:
    """Edge values the contract allows must give a well-formed stream, never a dead worker."""
    for i, extra in enumerate([{"repetition_penalty": 0.0}, {"temperature": 2.0, "top_p": 0.0},
                               {"min_p": 1.0, "temperature": 0.7, "seed": 2**64 - 1},
                               {"top_k": 2**32 - 1, "temperature": 0.5}]):
        _, events = execute(client, worker, req(f"edge-{i}", max_tokens=4, **extra))
        check_stream(events, 4)
        assert events[-1]["type"] == "end", events[-1]
