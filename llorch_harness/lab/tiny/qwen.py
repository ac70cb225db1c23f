"""The tiny Qwen2 model with Qwen2.5-0.5B-Instruct's real vocabulary (the embedded gate's).

Why: the gate's piece checks must meet real BPE pieces (a space glued to the next word,
punctuation, a CJK character in two tokens, a special token that decodes to nothing); see
docs/tiny-model.md. The tokenizer comes from :mod:`llorch_harness.lab.qwen_vocab`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llorch_harness.lab import qwen_vocab
from llorch_harness.lab.tiny.corpus import byte_decoder, tiny_config
from llorch_harness.lab.tiny.weights import json_text, tiny_weights, write_repo

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
    table = byte_decoder()
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


def build_qwen_model(out_dir: Path, seed: int) -> list[Path]:
    """Write the Qwen2.5-vocabulary repo into ``out_dir`` (which exists); return its files."""
    tokenizer_text = qwen_vocab.qwen_tokenizer_json()
    favoured = qwen_favoured_ids(json.loads(tokenizer_text)["model"]["vocab"])
    config = qwen_config()
    weights = tiny_weights(config, seed,
                           row_scale=qwen_row_scale(favoured, int(config["vocab_size"])))
    link_tokens(weights, config,
                [favoured["lead"], favoured["cont"], [idx for idx, _ in QWEN_SPECIAL_FAVOURED]])
    files = {
        "config.json": json_text(config),
        "generation_config.json": qwen_vocab.generation_config_json_text(),
        "tokenizer.json": tokenizer_text,
        "tokenizer_config.json": qwen_vocab.tokenizer_config_json_text(),
    }
    return write_repo(out_dir, files, weights, dtype="BF16")
