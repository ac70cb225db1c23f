"""`LLORCH_REF_WIRE=legacy`: the reference worker's older per-token wire, kept as a stand-in
for other worker builds (one token event per sampled token, lower-case stop reasons, a
`metrics` event, stop strings and the config's EOS honoured). The HTTP front (axum's
rejections, validation, logs) is the same as on the default wire."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .test_refworker_server import (
    Spawner,
    Worker,
    completed_for,
    execute,
    req,
    token_texts,
)
from .test_refworker_server import spawn as spawn
from .test_refworker_server import tiny_model as tiny_model

PROMPT = "The quick brown fox"


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=httpx.Timeout(60.0)) as c:
        yield c


def check_legacy(events: list[dict], max_tokens: int) -> list[dict]:
    kinds = [e["type"] for e in events]
    tokens = [e for e in events if e["type"] == "token"]
    assert kinds == ["started", *["token"] * len(tokens), "metrics", "end"], kinds
    assert [t["i"] for t in tokens] == list(range(len(tokens)))
    end = events[-1]
    assert end["tokens_out"] == len(tokens) <= max_tokens
    assert end["stop_reason"] in {"max_tokens", "eos", "stop_sequence"}
    assert set(events[-2]) == {"type", "tokens_per_sec", "vram_bytes"}
    return tokens


@pytest.fixture
def legacy(spawn: Spawner) -> Worker:
    w = spawn(wire="legacy")
    w.wait_ready()
    return w


def test_one_event_per_token_and_lower_case_reasons(legacy: Worker, tiny_model: Path,
                                                    client: httpx.Client) -> None:
    _, events = execute(client, legacy, req("l-1", PROMPT, 12))
    tokens = check_legacy(events, 12)
    assert len(tokens) == 12 and events[-1]["stop_reason"] == "max_tokens"
    assert events[0]["model"] == tiny_model.name and events[0]["started_at"] != "0"
    assert completed_for(legacy, "l-1")["tokens_generated"] == 12


def test_stop_strings_are_honoured(legacy: Worker, client: httpx.Client) -> None:
    _, full = execute(client, legacy, req("l-2", PROMPT, 16))
    word = next(t.strip() for t in token_texts(full)[3:] if len(t.strip()) >= 2)
    _, stopped = execute(client, legacy, req("l-3", PROMPT, 16, stop=["never-there", word]))
    check_legacy(stopped, 16)
    end = stopped[-1]
    assert (end["stop_reason"], end["stop_sequence_matched"]) == ("stop_sequence", word)
    assert len(token_texts(stopped)) < 16


def test_same_http_front_as_the_default_wire(legacy: Worker, client: httpx.Client) -> None:
    assert client.post(f"{legacy.url}/execute", content=b"{}").status_code == 415
    bad = client.post(f"{legacy.url}/execute", json={"job_id": "x", "prompt": "p"})
    assert bad.status_code == 422
    invalid = client.post(f"{legacy.url}/execute", json=req("", max_tokens=0))
    assert [e["field"] for e in invalid.json()["errors"]] == ["job_id", "max_tokens"]


def test_legacy_broadcast_fault_keeps_candles_text(spawn: Spawner, client: httpx.Client) -> None:
    w = spawn(wire="legacy", faults="broadcast")
    w.wait_ready()
    _, first = execute(client, w, req("lb-1", "Hello world"))
    _, second = execute(client, w, req("lb-2", "Hello there, how are you today my dear friend?"))
    assert first[-1]["type"] == "end"
    assert [e["type"] for e in second] == ["error"]
    assert second[0]["message"].startswith("cannot broadcast [")
