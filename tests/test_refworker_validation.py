"""Pure-function checks of the reference worker's input handling: axum's `Json` extractor
(415/400/422 texts, serde's wording), `validate_all` (the 400 body), the test-only
environment (fault switches, persona, wire) and the clap-like command line. The same
rules are exercised over real HTTP and real processes in `test_refworker_server.py`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llorch_harness.lab.refworker.__main__ import CliExit, parse_args
from llorch_harness.lab.refworker.faults import Faults, FaultSpecError, parse_faults
from llorch_harness.lab.refworker.jsonbody import (
    JSON_CONTENT_TYPE_MESSAGE,
    JsonRejection,
    RawExecuteRequest,
    extract_execute,
    is_json_content_type,
    rust_float_display,
)
from llorch_harness.lab.refworker.persona import (
    PERSONAS,
    SettingError,
    persona_from_env,
    wire_from_env,
)
from llorch_harness.lab.refworker.validation import U64_MAX, errors_body, validate_all

BASE: dict[str, Any] = {"job_id": "job-1", "prompt": "Hello", "max_tokens": 8}
DATA = "Failed to deserialize the JSON body into the target type: "
SYNTAX = "Failed to parse the request body as JSON: "


def body(**changes: Any) -> bytes:
    data = {**BASE, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not _DROP}).encode()


_DROP = object()

# Bodies axum rejects before the handler: (id, raw body, status, exact text).
REJECTED: list[tuple[str, bytes, int, str]] = [
    ("empty-body", b"", 400, SYNTAX + "EOF while parsing a value at line 1 column 0"),
    ("malformed-json", b'{"job_id": "a", "prompt": ', 400,
     SYNTAX + "prompt: EOF while parsing a value at line 1 column 26"),
    ("nan-literal", b'{"job_id":"a","prompt":"b","max_tokens":1,"temperature":NaN}', 400,
     SYNTAX + "temperature: expected value at line 1 column 57"),
    ("trailing-garbage", body() + b" x", 400,
     SYNTAX + f"trailing characters at line 1 column {len(body()) + 2}"),
    ("trailing-comma", b'{"job_id":"a","prompt":"p","max_tokens":1,}', 400,
     SYNTAX + "trailing comma at line 1 column 43"),
    ("not-utf8", b'{"job_id": "\xff", "prompt": "p", "max_tokens": 1}', 400,
     SYNTAX + "job_id: invalid unicode code point at line 1 column 14"),
    ("all-missing", b"{}", 422, DATA + "missing field `job_id` at line 1 column 2"),
    ("max-tokens-missing", b'{"job_id":"a","prompt":"p"}', 422,
     DATA + "missing field `max_tokens` at line 1 column 27"),
    ("max-tokens-negative", b'{"job_id":"a","prompt":"p","max_tokens":-1}', 422,
     DATA + "max_tokens: invalid value: integer `-1`, expected u32 at line 1 column 42"),
    ("max-tokens-string", b'{"job_id":"a","prompt":"p","max_tokens":"8"}', 422,
     DATA + 'max_tokens: invalid type: string "8", expected u32 at line 1 column 43'),
    ("max-tokens-float", b'{"job_id":"a","prompt":"p","max_tokens":5.0}', 422,
     DATA + "max_tokens: invalid type: floating point `5.0`, expected u32 at line 1 column 43"),
    ("max-tokens-bool", b'{"job_id":"a","prompt":"p","max_tokens":true}', 422,
     DATA + "max_tokens: invalid type: boolean `true`, expected u32 at line 1 column 44"),
    ("max-tokens-u32-overflow", b'{"job_id":"a","prompt":"p","max_tokens":4294967296}', 422,
     DATA + "max_tokens: invalid value: integer `4294967296`, expected u32 at line 1 column 50"),
    ("job-id-number", b'{"job_id":7}', 422,
     DATA + "job_id: invalid type: integer `7`, expected a string at line 1 column 11"),
    ("job-id-null", b'{"job_id":null,"prompt":"p","max_tokens":1}', 422,
     DATA + "job_id: invalid type: null, expected a string at line 1 column 14"),
    ("duplicate-key", b'{"job_id":"a","job_id":"b","prompt":"p","max_tokens":1}', 422,
     DATA + "duplicate field `job_id` at line 1 column 22"),
    ("temperature-null", b'{"job_id":"a","prompt":"p","max_tokens":1,"temperature":null}', 422,
     DATA + "temperature: invalid type: null, expected f32 at line 1 column 60"),
    ("seed-negative", b'{"job_id":"a","prompt":"p","max_tokens":1,"seed":-1}', 422,
     DATA + "seed: invalid value: integer `-1`, expected u64 at line 1 column 51"),
    ("stop-not-list", b'{"job_id":"a","prompt":"p","max_tokens":1,"stop":"END"}', 422,
     DATA + 'stop: invalid type: string "END", expected a sequence at line 1 column 54'),
    ("stop-item-number", b'{"job_id":"a","prompt":"p","max_tokens":1,"stop":[1]}', 422,
     DATA + "stop[0]: invalid type: integer `1`, expected a string at line 1 column 51"),
    ("string-body", b'"hello"', 422,
     DATA + 'invalid type: string "hello", expected struct ExecuteRequest at line 1 column 7'),
    ("first-error-wins", b'{"max_tokens":-1,"prompt":', 422,
     DATA + "max_tokens: invalid value: integer `-1`, expected u32 at line 1 column 16"),
]

# Well-typed bodies that validate_all refuses: (id, raw body, fields named, in order).
INVALID: list[tuple[str, bytes, list[str]]] = [
    ("empty-job-id", body(job_id=""), ["job_id"]),
    ("empty-prompt", body(prompt=""), ["prompt"]),
    ("prompt-32769", body(prompt="x" * 32769), ["prompt"]),
    ("max-tokens-0", body(max_tokens=0), ["max_tokens"]),
    ("max-tokens-2049", body(max_tokens=2049), ["max_tokens"]),
    ("temperature-high", body(temperature=2.01), ["temperature"]),
    ("temperature-negative", body(temperature=-0.1), ["temperature"]),
    ("top-p-high", body(top_p=1.5), ["top_p"]),
    ("rep-penalty-high", body(repetition_penalty=2.5), ["repetition_penalty"]),
    ("min-p-negative", body(min_p=-0.5), ["min_p"]),
    ("stop-five", body(stop=["a", "b", "c", "d", "e"]), ["stop"]),
    ("stop-empty-string", body(stop=[""]), ["stop"]),
    ("stop-101-bytes", body(stop=["s" * 101]), ["stop"]),
    ("many-at-once", body(job_id="", prompt="", max_tokens=0, temperature=3, top_p=-1,
                          repetition_penalty=9, min_p=2, stop=["a"] * 4 + [""]),
     ["job_id", "prompt", "max_tokens", "temperature", "top_p", "repetition_penalty", "stop",
      "stop", "min_p"]),
]


def extract(raw: bytes, content_type: str | None = "application/json") -> RawExecuteRequest:
    return extract_execute(content_type, raw)


# -- axum's Json extractor -----------------------------------------------------------------

@pytest.mark.parametrize(("raw", "status", "text"), [(r, s, t) for _, r, s, t in REJECTED],
                         ids=[i for i, _, _, _ in REJECTED])
def test_rejections_have_axum_status_and_serde_text(raw: bytes, status: int, text: str) -> None:
    with pytest.raises(JsonRejection) as info:
        extract(raw)
    assert (info.value.status, info.value.text) == (status, text)


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/x-www-form",
                                          "json", "application/jsonx"])
def test_without_json_content_type_415(content_type: str | None) -> None:
    with pytest.raises(JsonRejection) as info:
        extract(body(), content_type)
    assert (info.value.status, info.value.text) == (415, JSON_CONTENT_TYPE_MESSAGE)


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON",
                                          "application/json; charset=utf-8",
                                          "application/vnd.api+json"])
def test_json_content_types_accepted(content_type: str) -> None:
    assert is_json_content_type(content_type)
    assert extract(body(), content_type).job_id == "job-1"


def test_defaults_unknown_fields_and_null_seed() -> None:
    got = extract(body(seed=None, extra={"x": [1, {"y": None}]}, zzz="ignored"))
    assert got == RawExecuteRequest(job_id="job-1", prompt="Hello", max_tokens=8)
    assert (got.temperature, got.top_p, got.top_k, got.seed, got.stop) == (1.0, 1.0, 0, None, ())


def test_floats_become_f32_and_integers_are_numbers() -> None:
    got = extract(body(temperature=0.7, top_p=1, seed=U64_MAX, top_k=2**32 - 1))
    assert got.temperature == pytest.approx(0.699999988079071, abs=0)
    assert (got.top_p, got.seed, got.top_k) == (1.0, U64_MAX, 2**32 - 1)
    assert extract(body(temperature=2.00000001)).temperature == 2.0  # rounds to f32 2.0


def test_a_positional_array_is_the_struct_too() -> None:
    """serde's derived Deserialize also accepts the fields as a sequence, in order."""
    assert extract(b'["j", "p", 3]') == RawExecuteRequest(job_id="j", prompt="p", max_tokens=3)
    with pytest.raises(JsonRejection) as info:
        extract(b"[]")
    assert info.value.status == 422
    assert "invalid length 0, expected struct ExecuteRequest with 10 elements" in info.value.text


def test_rust_float_display() -> None:
    assert [rust_float_display(v, f32=True) for v in (2.01, 3.0, -0.1, 1e20, float("inf"))] \
        == ["2.01", "3", "-0.1", "100000000000000000000", "inf"]
    assert rust_float_display(1e-7) == "0.0000001"


# -- validate_all --------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "fields"), [(r, f) for _, r, f in INVALID],
                         ids=[i for i, _, _ in INVALID])
def test_invalid_requests_name_every_bad_field_in_order(raw: bytes, fields: list[str]) -> None:
    errors = validate_all(extract(raw))
    assert [e.field for e in errors] == fields
    for err in errors_body(errors)["errors"]:
        assert list(err)[:3] == ["field", "constraint", "message"]
        assert err["message"].startswith(err["field"])


def test_error_texts_constraints_and_values() -> None:
    errors = errors_body(validate_all(extract(body(
        job_id="", prompt="x" * 32769, max_tokens=2049, temperature=2.01, top_p=-0.25,
        repetition_penalty=3, stop=["a", "", "é" * 51, "d", "e"], min_p=1.5))))["errors"]
    assert errors == [
        {"field": "job_id", "constraint": "non_empty", "message": "job_id must not be empty",
         "value": ""},
        {"field": "prompt", "constraint": "length(1..=32768)",
         "message": "prompt must be at most 32768 characters (got 32769)"},
        {"field": "max_tokens", "constraint": "range(1..=2048)",
         "message": "max_tokens must be at most 2048 (got 2049)", "value": "2049"},
        {"field": "temperature", "constraint": "range(0.0..=2.0)",
         "message": "temperature must be at most 2.0 (got 2.01)", "value": "2.01"},
        {"field": "top_p", "constraint": "range(0.0..=1.0)",
         "message": "top_p must be at least 0.0 (got -0.25)", "value": "-0.25"},
        {"field": "repetition_penalty", "constraint": "range(0.0..=2.0)",
         "message": "repetition_penalty must be at most 2.0 (got 3)", "value": "3"},
        {"field": "stop", "constraint": "max_count(4)",
         "message": "stop must have at most 4 sequences (got 5)", "value": "5"},
        {"field": "stop", "constraint": "non_empty",
         "message": "stop sequence 1 must not be empty"},
        {"field": "stop", "constraint": "max_length(100)",
         "message": "stop sequence 2 must be at most 100 characters (got 102)"},
        {"field": "min_p", "constraint": "range(0.0..=1.0)",
         "message": "min_p must be at most 1.0 (got 1.5)", "value": "1.5"},
    ]


def test_boundaries_are_inclusive() -> None:
    req = extract(body(prompt="é" * 32768, max_tokens=2048, temperature=2, seed=U64_MAX, top_p=0,
                       top_k=0, repetition_penalty=2.0, min_p=1,
                       stop=["a", "é" * 50, "c", "d"]))
    assert validate_all(req) == []
    assert validate_all(extract(body(max_tokens=1, temperature=0))) == []


# -- test-only environment -----------------------------------------------------------------

def test_fault_parsing() -> None:
    assert parse_faults(None) == Faults()
    assert parse_faults(" ") == Faults()
    f = parse_faults("broadcast, drift,slow_start=1.5,slow_execute=0.25")
    assert f.broadcast and f.drift and f.slow_start == 1.5 and not f.stall
    assert f.active == ["broadcast", "drift", "slow_start=1.5", "slow_execute=0.25"]
    g = parse_faults("qwen_cache_bug,decode_positions")
    assert g.qwen_cache_bug and g.decode_positions
    assert g.active == ["qwen_cache_bug", "decode_positions"]


@pytest.mark.parametrize("spec", ["bogus", "broadcast,nope", "slow_start", "slow_start=-1",
                                  "slow_start=abc", "drift=1", "qwen_cache_bug=1"])
def test_bad_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        parse_faults(spec)


def test_persona_and_wire_settings() -> None:
    assert persona_from_env({}) is PERSONAS["cpu"]
    assert persona_from_env({"LLORCH_REF_BACKEND": "cuda"}).binary == "llorch-cuda-candled"
    assert wire_from_env({}) == "cp3" and wire_from_env({"LLORCH_REF_WIRE": "legacy"}) == "legacy"
    with pytest.raises(SettingError, match="unknown LLORCH_REF_BACKEND value 'rocm'"):
        persona_from_env({"LLORCH_REF_BACKEND": "rocm"})
    with pytest.raises(SettingError, match="unknown LLORCH_REF_WIRE value 'v2'"):
        wire_from_env({"LLORCH_REF_WIRE": "v2"})


# -- clap-like command line ---------------------------------------------------------------

REQUIRED = ["--worker-id", "w", "--model", "/m", "--port", "8001", "--callback-url", "http://x"]


def test_cli_parses_required_and_host_default() -> None:
    args = parse_args(REQUIRED)
    assert (args.worker_id, str(args.model), args.port, args.host, args.device) == (
        "w", "/m", 8001, "127.0.0.1", 0)
    assert parse_args([*REQUIRED[:-2], "--callback-url=http://y", "--host", "0.0.0.0"]).host \
        == "0.0.0.0"


@pytest.mark.parametrize(("backend", "flag"), [("cuda", "--cuda-device"),
                                               ("metal", "--metal-device")])
def test_gpu_personas_take_their_device_flag(backend: str, flag: str) -> None:
    persona = PERSONAS[backend]
    assert parse_args(REQUIRED, persona).device == 0
    assert parse_args([*REQUIRED, flag, "3"], persona).device == 3
    assert parse_args([*REQUIRED, f"{flag}=2"], persona).device == 2
    other = "--metal-device" if backend == "cuda" else "--cuda-device"
    with pytest.raises(CliExit) as info:
        parse_args([*REQUIRED, other, "0"], persona)
    assert info.value.code == 2 and f"unexpected argument '{other}' found" in info.value.text
    assert f"Usage: llorch-{backend}-candled" in info.value.text
    with pytest.raises(CliExit) as info:
        parse_args([*REQUIRED, flag, "x"], persona)
    assert f"invalid value 'x' for '{flag} <{persona.device_value}>'" in info.value.text


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
