"""The one redaction: every text that can reach a report, a terminal or a file passes here.

Why one module: secrets used to be masked in several places with several rules (by env
name in one, by `hf_` shape in another, by the explicit token in a third), so a text that
took an unexpected path (pytest's failure text, a download error quoting a URL, a dry-run
of a pool whose env names a token innocently) leaked. The rules here are the union:

- values of environment variables whose *names* look secret (token, secret, password,
  key, credential, auth, cookie: is_secret_name), in every form a text may carry them
  (raw, JSON- or repr-escaped, HTML-escaped, URL-encoded);
- values whose *shape* is a credential whatever the name (`hf_...`, GitHub, OpenAI,
  AWS, Slack tokens, JWTs, private key blocks, `Authorization:`/`Bearer` values);
- credentials in URLs (`scheme://user:pass@host` keeps only `scheme://***@host`) and
  `NAME=value` / `"NAME": "value"` pairs (env dumps, query strings, JSON) whose NAME looks
  secret.

Redaction is idempotent (redacting twice changes nothing more), so a caller may check
`redact(text) == text` to prove a text clean. Nothing here imports the rest of the package.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET_LEN = 6  # shorter values ("1", "true") are settings, not secrets

# names whose values are secrets: token, secret, password, passphrase, credential, cookie,
# auth (not "author": GIT_AUTHOR_NAME is a name), and key as a word of the name (API_KEY,
# KEY, ssh_keys; not KEYBOARD or PYTHON_KEYRING_BACKEND)
_SECRET_NAME_RE = re.compile(
    r"(?i)token|secret|passw|passphrase|credential|cookie|auth(?!or(?!iz))|apikey"
    r"|(?:^|[_.-])key(?:s)?(?:$|[_.-])")

# credential shapes recognised whatever variable they came from: (pattern, replacement)
_TOKEN_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # a whole block; a block cut short: the header and the base64 after it (raw or with
    # JSON's escaped newlines), never "to the end of the text" (that would eat a document)
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:(?!-----BEGIN ).)*?"
                r"-----END [A-Z0-9 ]*PRIVATE KEY-----", re.S), MASK),
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:[A-Za-z0-9+/=\s]|\\[nr])*"), MASK),
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), "hf_" + MASK),
    (re.compile(r"\bapi_org_[A-Za-z0-9]{8,}"), "api_org_" + MASK),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{16,}"), "gh_" + MASK),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{16,}"), "github_pat_" + MASK),
    (re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{16,}"), "sk-" + MASK),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "AKIA" + MASK),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), "xox-" + MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), MASK),
)
_SCHEMES = r"(?:bearer|basic|token|digest)"
_HEADER_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # `Authorization: Bearer x`, `authorization=x`, `"Authorization": "Basic x"`
    (re.compile(rf"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)({_SCHEMES}\s+)?"
                rf"(?!\*\*\*)(?!{_SCHEMES}\b)[^\s\"',;\\]+"), r"\1\2" + MASK),
    (re.compile(r"(?i)\b(bearer\s+)(?!\*\*\*)[A-Za-z0-9._~+/=-]{8,}"), r"\1" + MASK),
)

# scheme://userinfo@  ->  scheme://***@   (the last '@' before the path, as urlsplit reads it)
_URL_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?!\*\*\*@)[^\s/?#'\"<>\\]*@")

# (No value pattern crosses a backslash: inside a JSON document `\"` must stay whole.)
# NAME=value and "NAME": "value" in free text (env dumps, query strings, JSON, reprs) where
# NAME *ends* in a credential word. Narrower than is_secret_name on purpose: `max_tokens=8`,
# `eos_token` or `key=len` in a traceback are not secrets and must stay readable.
_PAIR_NAME = (
    r"(?!(?i:eos|bos|pad|unk|sep|cls|mask)_token\b)"
    r"(?:[A-Za-z0-9_.-]*?(?i:token|secret|password|passwd|passphrase|api[_-]?key|"
    r"access[_-]?key|secret[_-]?key|private[_-]?key|auth|authorization|credentials?|"
    r"cookie|signature|sig)|[A-Z0-9_]*KEY)"
)
_PAIR_EQ_RE = re.compile(
    rf"(?<![A-Za-z0-9_.-])({_PAIR_NAME})(?:=|(\s*=\s*)(?=['\"]))"
    r"(?:'[^'\n]*'|\"(?:\\.|[^\"\\\n])*\"|[^\s&'\";,)\]}\\]+)")
_PAIR_QUOTED_RE = re.compile(
    rf"(['\"])({_PAIR_NAME})\1(\s*:\s*)(['\"])(?!\*\*\*\4)(?:\\.|(?!\4).)*\4")


def is_secret_name(name: str) -> bool:
    """Env and parameter names that look like credentials: their values are never shown."""
    return _SECRET_NAME_RE.search(name) is not None


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables named like secrets (long enough to be real)."""
    env = os.environ if env is None else env
    vals = {v for k, v in env.items()
            if isinstance(v, str) and is_secret_name(k) and len(v) >= MIN_SECRET_LEN}
    return sorted(vals, key=len, reverse=True)


def _forms(value: str) -> list[str]:
    """How one secret value may appear in a text: raw, escaped for JSON, repr, HTML, URLs."""
    forms = {value, json.dumps(value)[1:-1], repr(value)[1:-1], html.escape(value),
             html.escape(value, quote=False), quote(value, safe=""), quote_plus(value)}
    return sorted((f for f in forms if len(f) >= MIN_SECRET_LEN), key=len, reverse=True)


def _shapes_and_urls(text: str) -> str:
    for pattern, repl in (*_TOKEN_SHAPES, *_HEADER_SHAPES):
        text = pattern.sub(repl, text)
    text = _URL_USERINFO_RE.sub(lambda m: m.group(1) + MASK + "@", text)
    text = _PAIR_QUOTED_RE.sub(lambda m: f"{m[1]}{m[2]}{m[1]}{m[3]}{m[4]}{MASK}{m[4]}", text)
    return _PAIR_EQ_RE.sub(lambda m: f"{m[1]}{m[2] or '='}{MASK}", text)


def redact(text: str, env: Mapping[str, str] | None = None, *,
           extra: Iterable[str | None] = (), values: Iterable[str] | None = None) -> str:
    """`text` with every secret replaced by `***`.

    env: where secret-named values are taken from (default: os.environ, read now);
    extra: more secrets to remove (an explicit token); values: precomputed
    `secret_values()` for callers that redact many texts in a row.
    """
    if not isinstance(text, str):
        text = str(text)
    secrets = list(secret_values(env) if values is None else values)
    secrets += [s for s in extra if s and len(s) >= MIN_SECRET_LEN]
    if secrets:
        forms = {f for s in secrets for f in _forms(s)}
        for form in sorted(forms, key=len, reverse=True):
            if form in text:
                text = text.replace(form, MASK)
    return _shapes_and_urls(text)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """An env table for display: values of secret-looking names or shapes become `***`,
    and URLs keep no credentials."""
    out = {}
    for k, v in env.items():
        out[k] = MASK if is_secret_name(k) or looks_secret_value(v) else redact(v, values=())
    return out


def looks_secret_value(value: str) -> bool:
    """True for a value that is itself a token (not merely a text holding a URL with one)."""
    if not isinstance(value, str):
        return False
    return any(p.fullmatch(value.strip()) for p, _ in _TOKEN_SHAPES)
