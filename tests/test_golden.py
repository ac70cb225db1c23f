"""Golden files: round trip, refusal of broken or escaping paths, token comparison."""

from __future__ import annotations

import json

import pytest

from llorch_harness.checks.golden import (
    Golden,
    GoldenPrompt,
    compare_tokens,
    cross_backend_detail,
    cross_backend_prefixes,
    golden_backends,
    golden_path,
    load_golden,
    save_golden,
)
from llorch_harness.errors import HarnessError


def _golden(backend: str, toks: list[str], model: str = "tiny-qwen") -> Golden:
    return Golden(model_id=model, backend=backend,
                  prompts={"cp3": GoldenPrompt("Hello, how are you?", 4, toks, "".join(toks)),
                           "short": GoldenPrompt("Hi", 4, ["a", "b", "c", "d"], "abcd")},
                  worker_binary_sha256="ab" * 32)


def test_round_trip(tmp_path) -> None:
    g = _golden("cpu", ["I", " am", " fine", "."])
    path = save_golden(tmp_path, g)
    assert path == (tmp_path / "tiny-qwen" / "cpu.json").resolve()
    obj = json.loads(path.read_text())
    assert {"model_id", "backend", "prompts", "recorded_at", "harness_version",
            "worker_binary_sha256"} <= set(obj)
    assert obj["prompts"]["cp3"]["token_texts"] == ["I", " am", " fine", "."]
    back = load_golden(tmp_path, "tiny-qwen", "cpu")
    assert back is not None
    assert back.prompts == g.prompts
    assert back.worker_binary_sha256 == "ab" * 32
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temp file


def test_missing_is_none(tmp_path) -> None:
    assert load_golden(tmp_path, "tiny-qwen", "cuda") is None


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"model_id":"tiny-qwen","backend":"cpu","prompts":{"x":{"prompt":1}}}',
     '{"model_id":"other","backend":"cpu","prompts":{}}'],
)
def test_broken_file_is_an_error_naming_it(tmp_path, content: str) -> None:
    p = tmp_path / "tiny-qwen" / "cpu.json"
    p.parent.mkdir()
    p.write_text(content)
    with pytest.raises(HarnessError) as ei:
        load_golden(tmp_path, "tiny-qwen", "cpu")
    assert "cpu.json" in ei.value.message and ei.value.hint


@pytest.mark.parametrize(("model", "backend"), [("../x", "cpu"), ("m", "../cpu"), ("m", "C/D"),
                                                 ("/abs", "cpu")])
def test_escaping_names_refused(tmp_path, model: str, backend: str) -> None:
    with pytest.raises(HarnessError):
        golden_path(tmp_path, model, backend)


def test_compare_tokens() -> None:
    c = compare_tokens(["a", "b", "c"], ["a", "b", "c"])
    assert c.equal and c.common_prefix == 3 and c.first_diff_index is None
    c = compare_tokens(["a", "b", "c"], ["a", "x", "c"])
    assert (c.equal, c.common_prefix, c.first_diff_index, c.expected_at, c.got_at) == (
        False, 1, 1, "b", "x")
    assert "differs at token 1: expected 'b', got 'x'" in c.describe()
    c = compare_tokens(["a", "b"], ["a", "b", "c"])
    assert (c.equal, c.common_prefix, c.first_diff_index, c.expected_at, c.got_at) == (
        False, 2, 2, None, "c")
    c = compare_tokens([], [])
    assert c.equal and c.common_prefix == 0


def test_cross_backend_prefixes(tmp_path) -> None:
    save_golden(tmp_path, _golden("cpu", ["I", " am", " fine", "."]))
    save_golden(tmp_path, _golden("cuda", ["I", " am", " good", "."]))
    save_golden(tmp_path, _golden("metal", ["I", " am", " fine", "."]))
    other = _golden("rocm", ["I"])
    other.prompts["cp3"].prompt = "different prompt"  # not comparable: only "short" is shared
    save_golden(tmp_path, other)
    assert golden_backends(tmp_path, "tiny-qwen") == ["cpu", "cuda", "metal", "rocm"]
    pre = cross_backend_prefixes(tmp_path, "tiny-qwen")
    assert pre[("cpu", "cuda")] == 2
    assert pre[("cpu", "metal")] == 4
    assert pre[("cpu", "rocm")] == 4  # only the "short" prompt counts
    assert cross_backend_detail(tmp_path, "tiny-qwen")[("cpu", "rocm")] == {"short": 4}
    assert cross_backend_prefixes(tmp_path, "nothing-here") == {}
