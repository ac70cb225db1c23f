"""Pure-function checks of the reference worker's input handling: `/execute` bodies, the
fault-switch variable and the clap-like command line. The same rules are exercised over
real HTTP and real processes in `test_refworker_server.py`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llorch_harness.refworker.__main__ import CliExit, parse_args
from llorch_harness.refworker.faults import Faults, FaultSpecError, parse_faults
from llorch_harness.refworker.validation import (
    DEFAULT_SEED,
    U64_MAX,
    ExecuteRequest,
    validate_execute,
    validate_execute_obj,
)

BASE: dict[str, Any] = {"job_id": "job-1", "prompt": "Hello", "max_tokens": 8}


def body(**changes: Any) -> bytes:
    data = {**BASE, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not _DROP}).encode()


_DROP = object()

# (id, raw body, set of fields that must be named)
INVALID: list[tuple[str, bytes, set[str]]] = [
    ("malformed-json", b'{"job_id": "a", "prompt": ', {"body"}),
    ("empty-body", b"", {"body"}),
    ("not-utf8", b'{"job_id": "\xff"}', {"body"}),
    ("array-body", b"[1, 2]", {"body"}),
    ("string-body", b'"hello"', {"body"}),
    ("nan-literal", b'{"job_id":"a","prompt":"b","max_tokens":1,"temperature":NaN}', {"body"}),
    ("duplicate-key", b'{"job_id":"a","job_id":"b","prompt":"p","max_tokens":1}', {"job_id"}),
    ("all-missing", b"{}", {"job_id", "prompt", "max_tokens"}),
    ("nulls-for-required", body(job_id=None, prompt=None, max_tokens=None),
     {"job_id", "prompt", "max_tokens"}),
    ("empty-job-id", body(job_id=""), {"job_id"}),
    ("job-id-number", body(job_id=7), {"job_id"}),
    ("empty-prompt", body(prompt=""), {"prompt"}),
    ("prompt-32769", body(prompt="x" * 32769), {"prompt"}),
    ("prompt-list", body(prompt=["a"]), {"prompt"}),
    ("max-tokens-0", body(max_tokens=0), {"max_tokens"}),
    ("max-tokens-2049", body(max_tokens=2049), {"max_tokens"}),
    ("max-tokens-bool", body(max_tokens=True), {"max_tokens"}),
    ("max-tokens-float", body(max_tokens=5.0), {"max_tokens"}),
    ("max-tokens-string", body(max_tokens="8"), {"max_tokens"}),
    ("temperature-high", body(temperature=2.01), {"temperature"}),
    ("temperature-negative", body(temperature=-0.1), {"temperature"}),
    ("temperature-bool", body(temperature=False), {"temperature"}),
    ("temperature-string", body(temperature="0.5"), {"temperature"}),
    ("seed-negative", body(seed=-1), {"seed"}),
    ("seed-too-big", body(seed=U64_MAX + 1), {"seed"}),
    ("seed-float", body(seed=1.5), {"seed"}),
    ("top-p-high", body(top_p=1.5), {"top_p"}),
    ("top-k-negative", body(top_k=-1), {"top_k"}),
    ("top-k-float", body(top_k=2.5), {"top_k"}),
    ("rep-penalty-high", body(repetition_penalty=2.5), {"repetition_penalty"}),
    ("min-p-negative", body(min_p=-0.5), {"min_p"}),
    ("stop-five", body(stop=["a", "b", "c", "d", "e"]), {"stop"}),
    ("stop-empty-string", body(stop=[""]), {"stop"}),
    ("stop-101-chars", body(stop=["s" * 101]), {"stop"}),
    ("stop-not-list", body(stop="END"), {"stop"}),
    ("stop-item-number", body(stop=[1]), {"stop"}),
    ("many-at-once", body(job_id="", prompt="", max_tokens=True, temperature=3, top_p=-1,
                          top_k="x", repetition_penalty=None, min_p=2, stop=["a"] * 5, seed=-3),
     {"job_id", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "stop",
      "seed"}),
]


@pytest.mark.parametrize(("raw", "fields"), [(r, f) for _, r, f in INVALID],
                         ids=[i for i, _, _ in INVALID])
def test_invalid_bodies_name_every_bad_field(raw: bytes, fields: set[str]) -> None:
    result = validate_execute(raw)
    assert result.request is None
    named = {e.field for e in result.errors}
    assert named == fields
    for err in result.body()["errors"]:
        assert set(err) >= {"field", "constraint", "message"}
        assert set(err) <= {"field", "constraint", "message", "value"}
        assert all(isinstance(v, str) and v != "" for k, v in err.items() if k != "value")


def test_defaults_when_optional_fields_absent_or_null() -> None:
    got = validate_execute(body(temperature=None, seed=None, stop=None, top_k=None))
    assert got.errors == []
    assert got.request == ExecuteRequest(job_id="job-1", prompt="Hello", max_tokens=8)
    assert got.request.seed == DEFAULT_SEED
    assert got.request.temperature == 1.0 and got.request.top_p == 1.0


def test_boundaries_are_inclusive_and_unknown_fields_ignored() -> None:
    got = validate_execute(body(
        prompt="x" * 32768, max_tokens=2048, temperature=2, seed=U64_MAX, top_p=0, top_k=0,
        repetition_penalty=2.0, min_p=1, stop=["a", "b" * 100, "c", "d"], extra={"x": 1},
    ))
    assert got.errors == []
    req = got.request
    assert req is not None
    assert (req.max_tokens, req.seed, req.temperature, req.stop[1]) == (2048, U64_MAX, 2.0,
                                                                      "b" * 100)
    assert isinstance(req.temperature, float)


def test_prompt_length_counts_characters_not_bytes() -> None:
    assert validate_execute(body(prompt="é" * 32768)).errors == []
    assert {e.field for e in validate_execute(body(prompt="é" * 32769)).errors} == {"prompt"}


def test_missing_field_has_no_value_and_long_value_is_truncated() -> None:
    errors = validate_execute_obj({"prompt": "y" * 40000, "max_tokens": 1}).errors
    by_field = {e.field: e for e in errors}
    assert by_field["job_id"].constraint == "required"
    assert by_field["job_id"].value is None
    assert "value" not in by_field["job_id"].to_json()
    assert by_field["prompt"].constraint == "length"
    assert by_field["prompt"].value is not None and len(by_field["prompt"].value) < 200


# -- fault switches -----------------------------------------------------------------------

def test_fault_parsing() -> None:
    assert parse_faults(None) == Faults()
    assert parse_faults(" ") == Faults()
    f = parse_faults("broadcast, drift,slow_start=1.5,slow_execute=0.25")
    assert f.broadcast and f.drift and f.slow_start == 1.5 and not f.stall
    assert f.active == ["broadcast", "drift", "slow_start=1.5", "slow_execute=0.25"]


@pytest.mark.parametrize("spec", ["bogus", "broadcast,nope", "slow_start", "slow_start=-1",
                                  "slow_start=abc", "drift=1"])
def test_bad_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        parse_faults(spec)


# -- clap-like command line ---------------------------------------------------------------

REQUIRED = ["--worker-id", "w", "--model", "/m", "--port", "8001", "--callback-url", "http://x"]


def test_cli_parses_required_and_host_default() -> None:
    args = parse_args(REQUIRED)
    assert (args.worker_id, str(args.model), args.port, args.host) == ("w", "/m", 8001,
                                                                       "127.0.0.1")
    assert parse_args([*REQUIRED[:-2], "--callback-url=http://y", "--host", "0.0.0.0"]).host \
        == "0.0.0.0"


@pytest.mark.parametrize(("argv", "needle"), [
    ([*REQUIRED, "--backend", "cpu"], "unexpected argument '--backend' found"),
    ([*REQUIRED, "--cuda-device", "0"], "unexpected argument '--cuda-device' found"),
    ([*REQUIRED, "--metal-device=0"], "unexpected argument '--metal-device' found"),
    ([*REQUIRED, "--gpu", "0"], "unexpected argument '--gpu' found"),
    ([*REQUIRED, "extra"], "unexpected argument 'extra' found"),
    (REQUIRED[:4], "--port <PORT>"),
    ([*REQUIRED, "--port", "9"], "cannot be used multiple times"),
    ([*REQUIRED[:5], "70000", *REQUIRED[6:]], "70000 is not in 0..=65535"),
    ([*REQUIRED[:5], "abc", *REQUIRED[6:]], "invalid digit"),
    ([*REQUIRED, "--host"], "a value is required for '--host <HOST>'"),
])
def test_cli_errors_exit_2_clap_style(argv: list[str], needle: str) -> None:
    with pytest.raises(CliExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert info.value.text.startswith("error: ")
    assert needle in info.value.text
    assert "For more information, try '--help'." in info.value.text
