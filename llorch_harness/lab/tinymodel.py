"""A deterministic tiny Qwen2 model that the harness builds instead of downloading.

Why: tests and the local hub need a model with the exact file layout of a Hugging Face
Qwen2 repo (config.json, model.safetensors, tokenizer.json, ...) that loads in the
reference worker and in ``transformers``, without any network. Same seed => byte-identical
files, so its hashes can be pinned; the weights are random but scaled so that greedy
output is varied (not one token repeated) and depends on the prompt.

Two vocabularies (``vocab=``): ``"qwen2.5"`` is Qwen2.5-0.5B-Instruct's real tokenizer
(rebuilt offline by :mod:`llorch_harness.lab.qwen_vocab`, vocab_size 151936, about 17 MB on
disk with bf16 weights): the default of ``llorch-harness tiny-model build`` and of the
embedded gate. ``"corpus"`` is a 768-token BPE trained on a small corpus (about 1 MB,
float32, a 512-token context): the default of :func:`build_tiny_model` itself, which the
harness's own worker tests use because it is small and fast. See docs/tiny-model.md.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import atomic_write_bytes, atomic_write_text
from llorch_harness.lab import qwen_vocab

TINY_QWEN_REPO = "llorch-test/tiny-qwen"

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|endoftext|>"
TOKENIZER_VOCAB_TARGET = 768

# Architecture: Qwen2 in miniature (GQA 4 query heads over 2 kv heads, head_dim 16).
HIDDEN_SIZE = 64
INTERMEDIATE_SIZE = 176
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
MAX_POSITIONS = 512

# Weight scales, chosen by experiment: larger-than-usual projections make the random
# network chaotic enough that 32 greedy tokens hold >= 16 distinct ids.
EMBED_STD = 1.0
PROJ_GAIN = 3.0
BIAS_STD = 0.5
NORM_JITTER = 0.1
# Rows of single-byte tokens that are not printable ASCII (UTF-8 fragments, control
# bytes) are shrunk so that greedy output reads mostly as text; sampling still reaches them.
FRAGMENT_EMBED_SCALE = 0.3

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus_text() -> str:
    """The fixed training text shipped as package data."""
    return (resources.files("llorch_harness") / "data" / "tiny_corpus.txt").read_text(
        encoding="utf-8"
    )


def train_tokenizer(vocab_size: int = TOKENIZER_VOCAB_TARGET) -> Tokenizer:
    """A byte-level BPE like Qwen's (any byte sequence encodes), trained on the corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_text().splitlines(keepends=True), trainer)
    return tok


def tiny_config(vocab_size: int, eos_id: int) -> dict[str, Any]:
    """``config.json`` with every key llorch-candled's Qwen2 loader reads."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "hidden_act": "silu",
        "hidden_size": HIDDEN_SIZE,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE_SIZE,
        "max_position_embeddings": MAX_POSITIONS,
        "max_window_layers": NUM_LAYERS,
        "model_type": "qwen2",
        "num_attention_heads": NUM_HEADS,
        "num_hidden_layers": NUM_LAYERS,
        "num_key_value_heads": NUM_KV_HEADS,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "sliding_window": MAX_POSITIONS,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }


def _write_repo(out_dir: Path, files: dict[str, str], weights: dict[str, Any],
                dtype: str | None = None) -> list[Path]:
    """The repo's text files and model.safetensors, each written atomically; their paths."""
    written: list[Path] = []
    for name, text in files.items():
        path = out_dir / name
        atomic_write_text(path, text)
        written.append(path)
    st_path = out_dir / "model.safetensors"
    data = safetensors_bytes(weights) if dtype is None else safetensors_bytes(weights, dtype=dtype)
    atomic_write_bytes(st_path, data)
    written.append(st_path)
    return sorted(written)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: the char a ByteLevel token uses per byte."""
    return {ch: b for b, ch in qwen_vocab.bytes_to_unicode().items()}


def fragment_token_ids(tok: Tokenizer) -> list[int]:
    """Ids of single-byte tokens whose byte is not printable ASCII (or space/newline)."""
    table = _byte_decoder()
    out = []
    for token, idx in tok.get_vocab(with_added_tokens=False).items():
        if len(token) == 1 and token in table:
            b = table[token]
            if b >= 0x80 or (b < 0x20 and b != 0x0A):
                out.append(idx)
    return sorted(out)


def tiny_weights(
    config: dict[str, Any],
    seed: int,
    fragment_ids: list[int] | None = None,
    row_scale: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Random float32 weights with Hugging Face Qwen2 tensor names, drawn in a fixed order.

    ``row_scale`` (one factor per vocabulary row) shapes the tied embedding, and so the
    LM head: large rows are the tokens greedy decoding picks.
    """
    rng = np.random.default_rng(seed)
    d = int(config["hidden_size"])
    inter = int(config["intermediate_size"])
    n_h = int(config["num_attention_heads"])
    n_kv = int(config["num_key_value_heads"])
    hd = d // n_h
    vocab = int(config["vocab_size"])

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * (PROJ_GAIN / np.sqrt(cols))).astype(np.float32)

    def vec(n: int, std: float, mean: float = 0.0) -> np.ndarray:
        return (mean + rng.standard_normal(n) * std).astype(np.float32)

    embed = (rng.standard_normal((vocab, d)) * EMBED_STD).astype(np.float32)
    if fragment_ids:
        embed[np.asarray(fragment_ids, dtype=np.int64)] *= np.float32(FRAGMENT_EMBED_SCALE)
    if row_scale is not None:
        embed *= np.asarray(row_scale, dtype=np.float32)[:, None]
    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": embed}
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = vec(d, NORM_JITTER, 1.0)
        w[p + "self_attn.q_proj.weight"] = mat(n_h * hd, d)
        w[p + "self_attn.q_proj.bias"] = vec(n_h * hd, BIAS_STD)
        w[p + "self_attn.k_proj.weight"] = mat(n_kv * hd, d)
        w[p + "self_attn.k_proj.bias"] = vec(n_kv * hd, BIAS_STD)
        w[p + "self_attn.v_proj.weight"] = mat(n_kv * hd, d)
        w[p + "self_attn.v_proj.bias"] = vec(n_kv * hd, BIAS_STD)
        w[p + "self_attn.o_proj.weight"] = mat(d, n_h * hd)
        w[p + "post_attention_layernorm.weight"] = vec(d, NORM_JITTER, 1.0)
        w[p + "mlp.gate_proj.weight"] = mat(inter, d)
        w[p + "mlp.up_proj.weight"] = mat(inter, d)
        w[p + "mlp.down_proj.weight"] = mat(d, inter)
    w["model.norm.weight"] = vec(d, NORM_JITTER, 1.0)
    if not config["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(vocab, d)
    return w


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounding to nearest even (as torch does)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    return ((bits + rounding) >> np.uint32(16)).astype(np.uint16)


def safetensors_bytes(
    tensors: Mapping[str, np.ndarray],
    *,
    dtype: str = "F32",
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Serialise float tensors as F32, F16 or BF16 safetensors, byte-for-byte reproducibly.

    Written by hand (not ``safetensors.numpy.save``) because that library orders the
    metadata map differently from run to run, and numpy cannot produce bf16 itself.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        if dtype == "F32":
            data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        elif dtype == "F16":
            data = np.ascontiguousarray(arr, dtype=np.float32).astype("<f2").tobytes()
        elif dtype == "BF16":
            data = _to_bf16_bits(arr).astype("<u2").tobytes()
        else:
            raise ValueError(f"unsupported dtype {dtype}")
        header[name] = {
            "data_offsets": [offset, offset + len(data)],
            "dtype": dtype,
            "shape": [int(n) for n in arr.shape],
        }
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


MAX_SEED = 2**32 - 1


def check_seed(seed: object) -> int:
    """A seed numpy takes: an integer 0..2**32-1 (a negative one is a usage error)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise HarnessError(f"seed {seed!r} is out of range", f"pass --seed 0..{MAX_SEED}",
                           exit_code=2)
    return seed


# --------------------------------------------------------------------------- Qwen2.5 vocab

VOCAB_QWEN = "qwen2.5"
VOCAB_CORPUS = "corpus"
VOCABS: tuple[str, ...] = (VOCAB_QWEN, VOCAB_CORPUS)
# `llorch-harness tiny-model build` and the embedded gate build this one.
EMBEDDED_VOCAB = VOCAB_QWEN

# The LM head is vocab x hidden (151936 rows, tied to the embedding): hidden 32 in bf16
# keeps it at 9.7 MB, so the whole repo (7 MB tokenizer.json included) stays < 20 MB and
# the numpy worker's per-token head costs ~5M multiply-adds.
QWEN_HIDDEN_SIZE = 32
QWEN_INTERMEDIATE_SIZE = 96
QWEN_MAX_POSITIONS = 32768  # Qwen2.5-0.5B-Instruct's
QWEN_ROPE_THETA = 1_000_000.0  # Qwen2.5-0.5B-Instruct's

# Greedy output of a random network picks the rows with the largest norms. Rows of a
# chosen set of tokens (lowest-ranked BPE tokens of each kind, so common ones) keep full
# scale; every other row is shrunk to QWEN_BACKGROUND_SCALE (sampling still reaches
# them), rows past the tokenizer (151665..151935, padding as in the real checkpoint) to
# QWEN_UNUSED_SCALE. The mix is what the gate's piece checks need to meet: words with
# and without a leading space, punctuation, whole multi-byte characters, UTF-8
# fragments (characters split across tokens) and <|im_start|>, a special token that
# decodes to nothing (it follows a continuation byte, see link_tokens).
# <|endoftext|>, <|im_end|> and "</s>" (128247, which llorch-candled's EOS rule
# picks for this vocabulary) stay background, so greedy runs do not stop early.
# Counts and scales chosen by experiment (docs/tiny-model.md).
QWEN_FAVOURED: tuple[tuple[str, int, float], ...] = (
    ("space_word", 2400, 1.0),  # " the", " and", ...
    ("word", 800, 1.0),  # "ing", "The", ...
    ("punct", 40, 1.15),  # ",", ".", " (", ...: ASCII punctuation, optional leading space
    ("newline", 4, 0.9),  # "\n", "\n\n", ...
    ("multibyte", 300, 1.0),  # whole non-ASCII characters: "é", "，", " —", "的", ...
    # Characters split across tokens: the first two bytes of a 3-byte character (lead)
    # and single continuation bytes (cont); a lead followed by a cont is one character.
    ("lead", 120, 1.0),
    ("cont", 64, 1.0),
)
# A random network strings fragments together only by chance, and a lone fragment is
# just U+FFFD. So the last layer carries hand-set rules (see link_tokens): a lead is
# followed by a cont, a cont by <|im_start|>; none of the three follows itself.
QWEN_FRAGMENT_LINK = 16.0  # the flag value on hidden dims 0 (lead), 1 (cont), 2 (special)
QWEN_LINK_READ = 10.0  # weight of the MLP units that read a flag
QWEN_LINK_NEXT = 1.4  # flag k at the input -> flag k+1 at the output (the next token's)
QWEN_LINK_SELF = 0.78  # flag k at the input -> minus flag k at the output
QWEN_SPECIAL_FAVOURED: tuple[tuple[int, float], ...] = ((qwen_vocab.IM_START_ID, 1.0),)
QWEN_BACKGROUND_SCALE = 0.15
QWEN_UNUSED_SCALE = 0.02


def _token_kind(token: bytes) -> str | None:
    """The QWEN_FAVOURED kind of one BPE token (its bytes), or None."""
    if len(token) == 2 and 0xE3 <= token[0] <= 0xE9 and 0x80 <= token[1] <= 0xBF:
        return "lead"
    if len(token) == 1 and 0x80 <= token[0] <= 0xBF:
        return "cont"
    try:
        text = token.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.isascii():
        return "multibyte" if text.strip() and text.isprintable() else None
    core = text[1:] if text.startswith(" ") else text
    if core.isalpha() and len(core) >= 2:
        return "space_word" if text.startswith(" ") and len(core) >= 2 else "word"
    if text.strip("\n") == "" and text:
        return "newline"
    if core and len(core) <= 2 and all(c in ".,!?;:'\"()-" for c in core):
        return "punct"
    return None


def qwen_favoured_ids(vocab: Mapping[str, int]) -> dict[str, list[int]]:
    """The lowest-ranked ids of each QWEN_FAVOURED kind, as many as it names."""
    table = _byte_decoder()
    by_kind: dict[str, list[int]] = {kind: [] for kind, _, _ in QWEN_FAVOURED}
    for text, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        kind = _token_kind(bytes(table[c] for c in text))
        if kind is not None:
            by_kind[kind].append(idx)
    return {kind: by_kind[kind][:count] for kind, count, _ in QWEN_FAVOURED}


def qwen_row_scale(favoured: Mapping[str, list[int]], config_vocab_size: int) -> np.ndarray:
    """Per-row embedding scale for the Qwen2.5 vocabulary (see QWEN_FAVOURED)."""
    scale = np.full(config_vocab_size, QWEN_BACKGROUND_SCALE, dtype=np.float32)
    scale[qwen_vocab.NUM_TOKENS:] = QWEN_UNUSED_SCALE
    for kind, _, factor in QWEN_FAVOURED:
        scale[np.asarray(favoured[kind], dtype=np.int64)] = factor
    for idx, factor in QWEN_SPECIAL_FAVOURED:
        scale[idx] = factor
    return scale


def link_tokens(weights: dict[str, np.ndarray], config: Mapping[str, Any],
                chain: list[list[int]]) -> None:
    """Make ``chain[0]`` tokens be followed by ``chain[1]`` ones, those by ``chain[2]`` ones.

    With chain = (leads, conts, specials): one character in two tokens, then a special
    token that decodes to nothing. Hidden dims 0..len(chain)-1 become flags: rows of
    chain[k] have dim k = LINK (and 0 on the other flag dims); other rows keep their small
    random values. No layer writes a flag dim (those rows of o_proj and down_proj are
    zero), so at the last layer it still holds the current token's embedding. Units of
    the last MLP, silu(w x) * (w x) (about 0 for a small x), turn "flag k high" into
    "flag k+1 high, flag k low"; through the tied LM head that raises the logits of
    chain[k+1] and lowers those of chain[k] for the next token.
    """
    embed = weights["model.embed_tokens.weight"]
    n = len(chain)
    for k, ids in enumerate(chain):
        rows = np.asarray(ids, dtype=np.int64)
        embed[rows, 0:n] = 0.0
        embed[rows, k] = np.float32(QWEN_FRAGMENT_LINK)
    layers = int(config["num_hidden_layers"])
    for i in range(layers):
        p = f"model.layers.{i}."
        weights[p + "self_attn.o_proj.weight"][0:n, :] = 0.0
        weights[p + "mlp.down_proj.weight"][0:n, :] = 0.0
    p = f"model.layers.{layers - 1}.mlp."
    gate, up, down = (weights[p + f"{x}_proj.weight"] for x in ("gate", "up", "down"))
    units = [(k, k + 1, QWEN_LINK_NEXT) for k in range(n - 1)]
    units += [(k, k, -QWEN_LINK_SELF) for k in range(n)]
    for unit, (read, write, coef) in enumerate(units):
        gate[unit, :] = 0.0
        up[unit, :] = 0.0
        down[:, unit] = 0.0
        gate[unit, read] = up[unit, read] = np.float32(QWEN_LINK_READ)
        down[write, unit] = np.float32(coef)


def qwen_config() -> dict[str, Any]:
    """Qwen2.5-0.5B-Instruct's config.json in miniature: its ids, vocab_size and rope."""
    cfg = tiny_config(qwen_vocab.CONFIG_VOCAB_SIZE, qwen_vocab.ENDOFTEXT_ID)
    cfg.update(
        bos_token_id=qwen_vocab.ENDOFTEXT_ID,
        eos_token_id=qwen_vocab.IM_END_ID,  # as published; the worker does not read it
        hidden_size=QWEN_HIDDEN_SIZE,
        intermediate_size=QWEN_INTERMEDIATE_SIZE,
        max_position_embeddings=QWEN_MAX_POSITIONS,
        rope_theta=QWEN_ROPE_THETA,
        sliding_window=QWEN_MAX_POSITIONS,
        torch_dtype="bfloat16",
    )
    return cfg


def _build_qwen_model(out_dir: Path, seed: int) -> list[Path]:
    tokenizer_text = qwen_vocab.qwen_tokenizer_json()
    favoured = qwen_favoured_ids(json.loads(tokenizer_text)["model"]["vocab"])
    config = qwen_config()
    weights = tiny_weights(config, seed,
                           row_scale=qwen_row_scale(favoured, int(config["vocab_size"])))
    link_tokens(weights, config,
                [favoured["lead"], favoured["cont"], [idx for idx, _ in QWEN_SPECIAL_FAVOURED]])
    files = {
        "config.json": _json_text(config),
        "generation_config.json": qwen_vocab.generation_config_json_text(),
        "tokenizer.json": tokenizer_text,
        "tokenizer_config.json": qwen_vocab.tokenizer_config_json_text(),
    }
    return _write_repo(out_dir, files, weights, dtype="BF16")


def check_vocab(vocab: object) -> str:
    if vocab not in VOCABS:
        raise HarnessError(f"unknown vocabulary {vocab!r}",
                           "pass --vocab " + " or ".join(VOCABS), exit_code=2)
    return str(vocab)


def build_tiny_model(out_dir: Path, seed: int = 0, vocab: str = VOCAB_CORPUS) -> list[Path]:
    """Write the tiny Qwen2 repo files into ``out_dir``; return their paths (sorted).

    ``vocab="qwen2.5"`` (EMBEDDED_VOCAB): Qwen2.5's real tokenizer, 151936 rows, bf16.
    ``vocab="corpus"`` (this function's default, kept for the worker tests that pin its
    size and context): the small trained tokenizer, float32.
    """
    check_seed(seed)  # before anything is written
    check_vocab(vocab)
    out_dir = Path(out_dir)
    if vocab == VOCAB_QWEN:
        qwen_vocab.tiktoken_bytes()  # a missing package is an error before any write
        out_dir.mkdir(parents=True, exist_ok=True)
        return _build_qwen_model(out_dir, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    eos_id = tok.token_to_id(EOS_TOKEN)
    assert eos_id is not None
    config = tiny_config(vocab_size, eos_id)
    weights = tiny_weights(config, seed, fragment_token_ids(tok))

    files = {
        "config.json": _json_text(config),
        "generation_config.json": _json_text(
            {
                "bos_token_id": eos_id,
                "do_sample": False,
                "eos_token_id": eos_id,
                "max_new_tokens": 64,
                "pad_token_id": eos_id,
            }
        ),
        "tokenizer.json": tok.to_str(pretty=True) + "\n",
        "tokenizer_config.json": _json_text(
            {
                "add_bos_token": False,
                "add_prefix_space": False,
                "bos_token": None,
                "chat_template": CHAT_TEMPLATE,
                "clean_up_tokenization_spaces": False,
                "eos_token": EOS_TOKEN,
                "model_max_length": MAX_POSITIONS,
                "pad_token": EOS_TOKEN,
                "tokenizer_class": "PreTrainedTokenizerFast",
                "unk_token": None,
            }
        ),
    }
    return _write_repo(out_dir, files, weights)


def export_variant(
    src_dir: Path, out_dir: Path, *, dtype: str = "F32", shards: int = 1
) -> list[Path]:
    """Copy a model dir with its weights re-encoded as ``dtype`` and split into ``shards``.

    Why: real checkpoints come as bf16 and in several shards (with an index file); the
    loaders must handle both, and tests need such variants without a download.
    """
    from llorch_harness.lab.refworker.qwen2 import read_safetensors

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for src in sorted(src_dir.iterdir()):
        if src.is_file() and src.suffix == ".json" and src.name != "model.safetensors.index.json":
            dst = out_dir / src.name
            atomic_write_bytes(dst, src.read_bytes())
            written.append(dst)
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(src_dir.glob("*.safetensors")):
        tensors.update(read_safetensors(f))
    names = sorted(tensors)
    if shards <= 1:
        dst = out_dir / "model.safetensors"
        atomic_write_bytes(dst, safetensors_bytes(tensors, dtype=dtype))
        return sorted([*written, dst])
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(shards):
        part = names[i * per : (i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        data = safetensors_bytes({n: tensors[n] for n in part}, dtype=dtype)
        dst = out_dir / fname
        atomic_write_bytes(dst, data)
        written.append(dst)
        weight_map.update(dict.fromkeys(part, fname))
        itemsize = 4 if dtype == "F32" else 2
        total += sum(int(tensors[n].size) * itemsize for n in part)
    index = out_dir / "model.safetensors.index.json"
    atomic_write_text(
        index, _json_text({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return sorted([*written, index])
