"""CP4's architectures in the reference worker and their tiny models (issue 16 items 1-2):
tiny-llama, tiny-phi3, tiny-mistral build reproducibly with each model's real layout,
load in the numpy engine in f32/f16/bf16 and in shards, give varied greedy output, and
run in the real worker process on a real port. transformers' side: test_architectures_oracle.py.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer

from llorch_harness.checks.inference_checks import GATE_PROMPTS
from llorch_harness.errors import HarnessError
from llorch_harness.lab.refworker.architectures import parse_config
from llorch_harness.lab.refworker.engine import Engine, GenerationParams, ModelLoadError
from llorch_harness.lab.refworker.weights import read_safetensors
from llorch_harness.lab.tiny.spm import PHI3_ADDED
from llorch_harness.lab.tinymodel import TINY_REPOS, build_tiny_model, export_variant

from .test_refworker_server import Spawner, check_stream, completed_for, execute, req, warn_lines

ARCHS = ("llama", "phi3", "mistral")
FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json"]
HF_CLASS = {"llama": "LlamaForCausalLM", "phi3": "Phi3ForCausalLM",
            "mistral": "MistralForCausalLM"}
DISPLAY = {"llama": ("Llama", "llama"), "phi3": ("Phi", "phi"), "mistral": ("Mistral", "mistral")}
LIGHTHOUSE = ("Write a short story about a lighthouse keeper who finds a message in a bottle. "
              "The keeper lives alone on a rocky island, far from the mainland, and the bottle "
              "arrives on a stormy night in late autumn.")
PROMPTS = [*GATE_PROMPTS.values(), LIGHTHOUSE, "The weather is sunny today."]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archs")
    for arch in ARCHS:
        build_tiny_model(root / f"tiny-{arch}", seed=0, architecture=arch)
    return {arch: root / f"tiny-{arch}" for arch in ARCHS}


def _contents(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _greedy(engine: Engine, prompt: str, n: int) -> list[int]:
    ids = engine.encode(prompt)
    cache = engine.model.new_cache(len(ids) + n)
    logits = engine.model.forward(ids, cache)[-1]
    out: list[int] = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = engine.model.forward([out[-1]], cache)[-1]
    return out


def _with_config(src: Path, dst: Path, **changes: object) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# -- the tiny models ----------------------------------------------------------------------


def test_hub_repos_name_every_architecture() -> None:
    assert TINY_REPOS == {"llorch-test/tiny-qwen": "qwen2", "llorch-test/tiny-llama": "llama",
                          "llorch-test/tiny-phi3": "phi3", "llorch-test/tiny-mistral": "mistral"}


@pytest.mark.parametrize("arch", ARCHS)
def test_files_config_and_tensors_follow_the_real_model(models: dict[str, Path], arch: str) -> None:
    d = models[arch]
    assert sorted(p.name for p in d.iterdir()) == FILES
    assert sum(p.stat().st_size for p in d.iterdir()) < 1_000_000
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == arch and cfg["architectures"] == [HF_CLASS[arch]]
    assert cfg["tie_word_embeddings"] is False and cfg["torch_dtype"] == "bfloat16"
    kv = {"llama": 2, "mistral": 2, "phi3": 4}[arch]  # GQA as TinyLlama 32/4, Mistral 32/8
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (4, kv)
    assert cfg.get("sliding_window") == {"llama": None, "mistral": None, "phi3": 2047}[arch]
    tensors = read_safetensors(d / "model.safetensors")
    names = {n.removeprefix("model.layers.0.") for n in tensors if n.startswith("model.layers.0.")}
    fused = {"self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight"}
    split = {f"self_attn.{x}_proj.weight" for x in "qkv"} | {
        f"mlp.{x}_proj.weight" for x in ("gate", "up")}
    assert names == {"input_layernorm.weight", "post_attention_layernorm.weight",
                     "self_attn.o_proj.weight", "mlp.down_proj.weight",
                     *(fused if arch == "phi3" else split)}  # no biases
    assert tensors["lm_head.weight"].shape == (cfg["vocab_size"], 64)
    header = json.loads((d / "model.safetensors").read_bytes()[8:][: int.from_bytes(
        (d / "model.safetensors").read_bytes()[:8], "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer_is_llama_style(models: dict[str, Path], arch: str) -> None:
    """<s> first, "</s>" = 2 (llorch-candled's EOS), byte fallback for what the corpus lacks."""
    tok = Tokenizer.from_file(str(models[arch] / "tokenizer.json"))
    assert [tok.id_to_token(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<0x00>"]
    enc = tok.encode("Hello, how are you?")
    assert enc.ids[0] == 1 and enc.tokens[1].startswith("\u2581")
    for text in ["Hello, how are you?", "naïve café 世界 🙂\n\ttabs", "  two  spaces"]:
        ids = tok.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.encode("世").tokens[1:] == ["\u2581", "<0xE4>", "<0xB8>", "<0x96>"]
    gen = json.loads((models[arch] / "generation_config.json").read_text())
    tok_cfg = json.loads((models[arch] / "tokenizer_config.json").read_text())
    if arch == "phi3":
        base = tok.get_vocab_size(with_added_tokens=True) - len(PHI3_ADDED)
        assert [tok.token_to_id(t) for t in PHI3_ADDED] == list(range(base, base + 11))
        assert gen["eos_token_id"] == [base, base + 1, base + 7]  # endoftext, assistant, end
        assert tok_cfg["eos_token"] == "<|endoftext|>"
    else:
        assert gen["eos_token_id"] == 2 and tok_cfg["eos_token"] == "</s>"


def test_llama_and_mistral_vocabularies_differ(models: dict[str, Path]) -> None:
    vocabs = {a: Tokenizer.from_file(str(models[a] / "tokenizer.json")).get_vocab() for a in ARCHS}
    assert vocabs["llama"] != vocabs["mistral"]


def test_same_seed_is_byte_identical_even_in_another_process(
    models: dict[str, Path], tmp_path: Path
) -> None:
    for arch in ARCHS:
        build_tiny_model(tmp_path / arch, seed=0, architecture=arch)
        assert _contents(tmp_path / arch) == _contents(models[arch]), arch
    code = ("import sys; from pathlib import Path; from llorch_harness.lab.tinymodel import "
            "build_tiny_model\nfor a in ('llama', 'phi3', 'mistral'): "
            "build_tiny_model(Path(sys.argv[1]) / a, seed=0, architecture=a)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "proc")], check=True, timeout=300)
    for arch in ARCHS:
        assert _contents(tmp_path / "proc" / arch) == _contents(models[arch]), arch


@pytest.mark.parametrize("arch", ARCHS)
def test_other_seed_changes_weights_only(models: dict[str, Path], tmp_path: Path,
                                         arch: str) -> None:
    build_tiny_model(tmp_path / "s1", seed=1, architecture=arch)
    a, b = _contents(models[arch]), _contents(tmp_path / "s1")
    assert a.pop("model.safetensors") != b.pop("model.safetensors")
    assert a == b


def test_bad_architecture_or_vocab_is_a_usage_error_before_any_write(tmp_path: Path) -> None:
    for kw, text in [({"architecture": "gpt2"}, "unknown architecture"),
                     ({"architecture": "llama", "vocab": "qwen2.5"}, "for --architecture qwen2")]:
        with pytest.raises(HarnessError, match=text) as info:
            build_tiny_model(tmp_path / "m", **kw)  # type: ignore[arg-type]
        assert info.value.exit_code == 2
    assert not (tmp_path / "m").exists()


def test_cli_builds_each_architecture(tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "llorch-harness"
    ok = subprocess.run([str(cli), "tiny-model", "build", str(tmp_path / "p"), "--architecture",
                         "phi3"], capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr
    assert [Path(line).name for line in ok.stdout.split()] == FILES
    assert json.loads((tmp_path / "p" / "config.json").read_text())["model_type"] == "phi3"
    bad = subprocess.run([str(cli), "tiny-model", "build", str(tmp_path / "q"), "--architecture",
                          "mistral", "--vocab", "qwen2.5"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("error: vocabulary 'qwen2.5' is for --architecture qwen2 only")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_output_is_varied_and_prompt_dependent(models: dict[str, Path], arch: str) -> None:
    engine = Engine.load(models[arch])
    assert engine.candled_eos_id == 2
    outs = [_greedy(engine, p, 32) for p in PROMPTS]
    for out in outs:
        assert len(set(out)) >= 16, [engine.tokenizer.id_to_token(i) for i in out]
        assert not {0, 1, 2} & set(out)  # no <unk>, <s>, nor the worker's EOS: no early stop
    assert len({tuple(o) for o in outs}) == len(outs)
    texts = [engine.tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    assert all(" " in t for t in texts)  # words, not one run of characters


# -- the numpy engine ---------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "window"), [("llama", None), ("phi3", None),
                                              ("mistral", None), ("mistral", 5), ("phi3", 6)])
def test_kv_cache_decode_equals_full_recompute(models: dict[str, Path], tmp_path: Path,
                                               arch: str, window: int | None) -> None:
    d = models[arch] if window is None else _with_config(models[arch], tmp_path / "w",
                                                         sliding_window=window)
    engine = Engine.load(d)
    result = engine.generate(LIGHTHOUSE, GenerationParams(max_tokens=24, temperature=0.0))
    ids = engine.encode(LIGHTHOUSE)
    full = engine.forward_logits(ids + result.token_ids)
    cache = engine.model.new_cache(4)  # small on purpose: exercises growth
    rows = [engine.model.forward(ids, cache, all_logits=True)]
    rows += [engine.model.forward([t], cache) for t in result.token_ids[:-1]]
    incremental = np.concatenate(rows)
    assert np.abs(incremental - full[:-1]).max() <= 1e-4 * max(1.0, float(np.abs(full).max()))
    assert list(full[len(ids) - 1 : -1].argmax(axis=-1)) == result.token_ids
    assert len(result.token_ids) == 24


def test_sliding_window_masks_only_keys_beyond_it(models: dict[str, Path], tmp_path: Path) -> None:
    full = Engine.load(models["mistral"])
    windowed = Engine.load(_with_config(models["mistral"], tmp_path / "w", sliding_window=5))
    ids = full.encode(LIGHTHOUSE)
    a, b = full.forward_logits(ids), windowed.forward_logits(ids)
    np.testing.assert_array_equal(a[:5], b[:5])  # a query sees at most 5 keys: no change yet
    assert np.abs(a[5:] - b[5:]).max(axis=-1).min() > 1e-3  # every later row changed


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("dtype", "shards", "tol"), [("F32", 2, 0.0), ("F16", 1, 2e-2),
                                                      ("BF16", 3, 0.0)])
def test_dtypes_and_shards_load(models: dict[str, Path], tmp_path: Path, arch: str, dtype: str,
                                shards: int, tol: float) -> None:
    """The tiny models are bf16: f32 and bf16 copies compute the same numbers exactly."""
    ref = Engine.load(models[arch])
    export_variant(models[arch], tmp_path / "v", dtype=dtype, shards=shards)
    if shards > 1:
        assert (tmp_path / "v" / "model.safetensors.index.json").is_file()
    ids = ref.encode(LIGHTHOUSE)
    a, b = ref.forward_logits(ids), Engine.load(tmp_path / "v").forward_logits(ids)
    assert np.abs(a - b).max() <= tol * max(1.0, float(np.abs(a).max()))


def test_config_errors_name_the_key(models: dict[str, Path], tmp_path: Path) -> None:
    cases: list[tuple[str, dict[str, object], str]] = [
        ("llama", {"hidden_size": None}, "missing key.*hidden_size"),
        ("mistral", {"num_key_value_heads": None}, "missing key.*num_key_value_heads"),
        ("phi3", {"rope_scaling": {"type": "longrope"}}, "rope_scaling .* not supported"),
        ("llama", {"attention_bias": True}, "attention_bias true is not supported")]
    for i, (arch, change, pattern) in enumerate(cases):
        d = shutil.copytree(models[arch], tmp_path / str(i))
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(change)
        cfg = {k: v for k, v in cfg.items() if v is not None or k not in change}
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ModelLoadError, match=pattern):
            Engine.load(d)


def test_candled_eos_fallback_per_architecture() -> None:
    """Without "</s>" in the tokenizer llorch-candled takes the model's id (models/*.rs)."""
    base = {"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "hidden_act": "silu",
            "max_position_embeddings": 16, "rms_norm_eps": 1e-5}
    got = {arch: parse_config({**base, "eos_token_id": 7}, "c", arch).candle_eos_fallback
           for arch in ARCHS}
    assert got == {"llama": 7, "phi3": 50256, "mistral": 2}
    assert parse_config({**base, "eos_token_id": [5, 6]}, "c", "llama").candle_eos_fallback == 2


# -- the worker process -------------------------------------------------------------------


@pytest.fixture
def spawner(tmp_path: Path, models: dict[str, Path]) -> Iterator[Spawner]:
    s = Spawner(tmp_path, models["llama"])
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("arch", ARCHS)
def test_worker_serves_each_architecture(models: dict[str, Path], spawner: Spawner,
                                         arch: str) -> None:
    worker = spawner(model=models[arch])
    worker.wait_ready()
    display, name = DISPLAY[arch]
    recs = {r["fields"].get("message"): r["fields"] for r in worker.logs()}
    assert recs["Detected model architecture"]["architecture"] == arch
    assert recs[f"Loaded {display} model"]["architecture"] == name
    assert recs["Model and tokenizer loaded successfully"]["architecture"] == name
    with httpx.Client(trust_env=False, timeout=60.0) as client:
        _, events = execute(client, worker, req("j1", prompt=GATE_PROMPTS["cp3"], max_tokens=20))
    pieces = [e["t"] for e in check_stream(events, 20)]
    engine = Engine.load(models[arch])
    expected = _greedy(engine, GATE_PROMPTS["cp3"], 20)
    assert "".join(pieces) == engine.tokenizer.decode(expected, skip_special_tokens=True)
    assert completed_for(worker, "j1")["tokens_generated"] == 20


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_cache_bug_fault_names_the_architecture(models: dict[str, Path], spawner: Spawner,
                                                arch: str) -> None:
    worker = spawner(model=models[arch], faults="qwen_cache_bug")
    worker.wait_ready()
    display = DISPLAY[arch][0]
    with httpx.Client(trust_env=False, timeout=60.0) as client:
        check_stream(execute(client, worker, req("a", max_tokens=4))[1], 4)
        events = execute(client, worker, req("b", max_tokens=4))[1]
    assert events == [{"type": "error", "code": "INFERENCE_FAILED",
                       "message": f"Forward pass failed: {display} forward pass failed"}]
    assert f"Cache reset not implemented for {display}" in [
        r["fields"]["message"] for r in warn_lines(worker)]
    errors = [r["fields"] for r in worker.logs() if r["level"] == "ERROR"]
    if arch == "llama":  # models/llama.rs logs candle's text before the context drops it
        assert errors[0]["message"] == "Llama forward pass failed - Candle error details"
        assert "shape mismatch in broadcast_add" in errors[0]["error"]
    else:
        assert errors == []


# -- the local hub and the catalog ----------------------------------------------------------


def test_local_hub_serves_each_tiny_model_to_a_pool_download(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """`llorch-pool models download tiny-llama` etc. against the embedded hub: the files
    arrive verified, byte-identical to a local build, and load in the worker's engine."""
    from llorch_harness.lab.hub import LocalHub, build_embedded_hub_root
    from llorch_harness.pool import catalog
    from llorch_harness.pool import download as dl
    from llorch_harness.pool.paths import PoolPaths

    root = build_embedded_hub_root(tmp_path / "hub")
    pool = PoolPaths.at(tmp_path / "pool")
    with LocalHub(root) as hub:
        assert hub.repos() == sorted(TINY_REPOS)
        for arch in ARCHS:
            dl.download_model(pool, f"tiny-{arch}", endpoint=hub.url, out=io.StringIO())
    entries = {m.id: m for m in catalog.read_catalog(pool).models}
    for arch in ARCHS:
        got = pool.models_dir / f"tiny-{arch}"
        assert {n: (got / n).read_bytes() for n in FILES} == _contents(models[arch])
        assert entries[f"tiny-{arch}"].downloaded and entries[f"tiny-{arch}"].architecture == arch
        assert Engine.load(got).config.model_type == arch


def test_catalog_knows_the_tiny_models_and_cp4s_real_ones() -> None:
    from llorch_harness.pool.catalog import known_models

    known = known_models()
    for arch in ARCHS:
        e = known[f"tiny-{arch}"]
        assert (e.repo, e.architecture, e.metadata["embedded"]) == (
            f"llorch-test/tiny-{arch}", arch, True)
    cp4 = {"qwen-0.5b": ("Qwen/Qwen2.5-0.5B-Instruct", 1.0),
           "tinyllama": ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 2.2),
           "phi3": ("microsoft/Phi-3-mini-4k-instruct", 5.0),
           "mistral": ("mistralai/Mistral-7B-Instruct-v0.2", 14.0)}
    assert {k: (known[k].repo, known[k].metadata["expected_size_gb"]) for k in cp4} == cp4
