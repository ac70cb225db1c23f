"""Issue 20 #1, #2: one redaction for every text that reaches a report, a terminal or a file.

Three layers, each with variants, so the next secret-carrying path is caught too:

- the gate (tests_hw -m cpu, real lab, `--llorch-bin-dir` holding a `llorch-cpu-candled`
  that prints HF_TOKEN, a password in HF_ENDPOINT and an `hf_` token under a plain name,
  then exits 1), with `-l -vv -rA`, serially and with `-n 2`: the terminal, the HTML
  report (and the base64 inside it), the JUnit XML, the gate JSON and every file under the
  pool root and basetemp except the worker's own logs are searched for every canary. The
  worker logs must hold them (the worker really printed them: the scan is not blind);
- the CLIs: `llorch pool --dry-run`, `llorch pools --dry-run` and `llorch-pool models
  download` with credentials in HF_ENDPOINT (refused connection, a hub that answers 404,
  a successful download whose catalog keeps the endpoint);
- the redaction itself over tests/faults/corpus/secrets.json: every carrier of a secret
  (env value in raw/JSON/repr/HTML/URL form, token shapes, headers, URL userinfo, query
  strings, NAME=value pairs) comes out without it, idempotently; LLM token counts and
  plain hosts come out unchanged.
"""

from __future__ import annotations

import base64
import html
import json
import os
import random
import string
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from llorch_harness import redaction
from llorch_harness.lab.hub import LocalHub, build_embedded_hub_root

from .common import (
    ANTI_HANG_S,
    BIN,
    LLORCH,
    LLORCH_POOL,
    PYTHON,
    REPO_ROOT,
    clean_env,
    count,
    figure,
)

CORPUS = Path(__file__).with_name("corpus") / "secrets.json"
TOKEN = "hf_LLORCHredact7Qx2Zr9WkT4mN8vB3"
PASSWORD = "S3cretPassw0rdQ9x"
OTHER = "hf_OTHERplainName5Kd8Lp2Wq"  # an hf_ token under a name that does not look secret
QUERY_TOKEN = "qTok3nZ8x7c6v5b4n3"
CANARIES = (TOKEN, PASSWORD, OTHER)

ECHO_WORKER = """#!/bin/sh
# a worker that fails at start and prints every secret it can see (issue 20 #1)
echo "loading with HF_TOKEN=$HF_TOKEN"
echo "Authorization: Bearer $HF_TOKEN" >&2
echo "endpoint $HF_ENDPOINT"
echo "note $HUB_NOTE"
echo "{\\"token\\": \\"$HF_TOKEN\\", \\"argv\\": \\"$*\\"}"
exit 1
"""


def needles(secret: str) -> list[bytes]:
    """The secret raw, escaped the ways reports escape text, and base64 at each alignment."""
    raw = secret.encode()
    out = {raw, html.escape(secret).encode(), json.dumps(secret)[1:-1].encode(),
           quote(secret, safe="").encode()}
    for shift in range(3):
        enc = base64.b64encode(b"\0" * shift + raw)
        out.add(enc[4 if shift else 0:-4])
    return sorted(out)


def scan(roots: list[Path], texts: dict[str, str], secrets: tuple[str, ...],
         skip: tuple[str, ...] = ()) -> list[str]:
    """Where any secret shows up: named texts and files (names matching `skip` excluded)."""
    ns = [n for s in secrets for n in needles(s)]
    hits = [name for name, text in texts.items() if any(n in text.encode() for n in ns)]
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            if any(part in f.name for part in skip):
                continue
            try:
                data = f.read_bytes()
            except OSError:
                continue
            if any(n in data for n in ns):
                hits.append(str(f))
    return hits


# --------------------------------------------------------------------------- the gate


@pytest.mark.parametrize("mode", ["serial", "xdist"])
def test_gate_with_a_token_printing_worker_leaks_nothing(mode: str, tmp_path: Path) -> None:
    bindir, pool, out = tmp_path / "bin", tmp_path / "pool", tmp_path / "reports"
    bindir.mkdir()
    out.mkdir()
    worker = bindir / "llorch-cpu-candled"
    worker.write_text(ECHO_WORKER)
    worker.chmod(0o755)
    argv = [PYTHON, "-m", "pytest", "tests_hw", "-m", "cpu", "--lab", "real",
            f"--llorch-bin-dir={bindir}", "--gate-model", "tiny-qwen", "--ready-timeout", "20",
            "--pool-root", str(pool), "--html", str(out / "report.html"),
            "--self-contained-html", "--junitxml", str(out / "junit.xml"),
            "--gate-json", str(out / "gate.json"), "--basetemp", str(tmp_path / "bt"),
            "-p", "no:cacheprovider", "-l", "-vv", "-rA"]
    if mode == "xdist":
        argv += ["-n", "2"]
    env = clean_env(HF_TOKEN=TOKEN, HF_ENDPOINT=f"http://alice:{PASSWORD}@127.0.0.1:9",
                    HUB_NOTE=OTHER, PATH=f"{BIN}:/usr/bin:/bin")
    r = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                       timeout=ANTI_HANG_S * 3, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 1, (r.stdout[-3000:], r.stderr[-3000:])  # the worker never starts
    report, junit = (out / "report.html").read_text(), (out / "junit.xml").read_text()
    gate = json.loads((out / "gate.json").read_text())
    assert "<failure" in junit and "CP3" in report and gate["verdict"] == "fail"
    assert "exited with status 1" in r.stdout  # the failure text is there, only redacted
    logs = sorted((pool / ".runtime" / "workers").glob("*.log*"))
    printed = [p for p in logs if all(c.encode() in p.read_bytes() for c in CANARIES)]
    assert printed, "the worker never printed the canaries: the scan would prove nothing"
    hits = scan([out, pool, tmp_path / "bt"], {"stdout": r.stdout, "stderr": r.stderr},
                CANARIES, skip=(".log",))
    assert hits == [], f"a secret reached: {hits}"
    files = sum(1 for root in (out, pool, tmp_path / "bt") for p in root.rglob("*")
                if p.is_file())
    figure("redaction_gate", mode=mode, canaries=len(CANARIES), files_scanned=files,
           worker_logs_holding_canaries=len(printed), terminal_bytes=len(r.stdout + r.stderr),
           failures_in_junit=junit.count("<failure"), canary_hits=len(hits))


# --------------------------------------------------------------------------- the CLIs


def _pools_file(tmp_path: Path, env: dict[str, str]) -> Path:
    lines = ['[pools.mac]', 'host = "mac.home.arpa"', 'root = "/srv/pool"', "",
             "[pools.mac.env]"] + [f"{k} = {json.dumps(v)}" for k, v in env.items()]
    path = tmp_path / "pools.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


POOL_ENVS = {
    "hf-under-plain-name": ({"HUB_MIRROR": OTHER}, OTHER),
    "password-in-endpoint": ({"HF_ENDPOINT": f"http://alice:{PASSWORD}@hub.lan"}, PASSWORD),
    "token-in-query": ({"HF_ENDPOINT": f"https://hub.lan/?token={QUERY_TOKEN}"}, QUERY_TOKEN),
    "secret-name": ({"HF_TOKEN": TOKEN}, TOKEN),
    "token-as-url-user": ({"MIRROR": f"https://{QUERY_TOKEN}@hub.lan/x"}, QUERY_TOKEN),
}


@pytest.mark.parametrize("variant", sorted(POOL_ENVS))
def test_dry_runs_print_no_secret(variant: str, tmp_path: Path) -> None:
    pool_env, secret = POOL_ENVS[variant]
    pf = _pools_file(tmp_path, pool_env)
    env = clean_env(HOME=str(tmp_path), PATH=f"{BIN}:/usr/bin:/bin")
    runs = [
        [str(LLORCH), "--pools-file", str(pf), "pool", "models", "list", "--host", "mac",
         "--dry-run"],
        [str(LLORCH), "--pools-file", str(pf), "pools", "worker", "list", "--dry-run"],
        [str(LLORCH), "--pools-file", str(pf), "pools", "list"],
    ]
    hits = []
    for argv in runs:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=ANTI_HANG_S, env=env,
                           cwd=tmp_path, stdin=subprocess.DEVNULL, check=False)
        assert r.returncode == 0, r.stderr
        if secret in r.stdout + r.stderr:
            hits.append(argv[4])
    assert hits == [], f"{variant}: the secret was printed by {hits}"
    figure("redaction_cli", case=f"dry-run:{variant}", commands=len(runs), hits=len(hits))


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_embedded_hub_root(tmp_path_factory.mktemp("redacthub"))


def _download(tmp_path: Path, endpoint: str, model: str = "tiny-qwen"
              ) -> subprocess.CompletedProcess[str]:
    env = clean_env(HF_ENDPOINT=endpoint, HF_TOKEN=TOKEN)
    return subprocess.run([str(LLORCH_POOL), "models", "download", model, "--pool-root",
                           str(tmp_path / "pool")], capture_output=True, text=True,
                          timeout=ANTI_HANG_S, env=env, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.parametrize("variant", ["refused-userinfo", "refused-query-token", "hub-404",
                                     "ok-userinfo"])
def test_download_prints_and_records_no_endpoint_credentials(
        variant: str, tmp_path: Path, hub_root: Path) -> None:
    with LocalHub(hub_root) as hub:
        port = hub.url.rsplit(":", 1)[1]
        model = "tiny-qwen"
        if variant == "refused-userinfo":
            endpoint = f"http://alice:{PASSWORD}@127.0.0.1:9"
        elif variant == "refused-query-token":
            endpoint = f"http://127.0.0.1:9/?token={QUERY_TOKEN}"
        else:
            endpoint = f"http://alice:{PASSWORD}@127.0.0.1:{port}"
        if variant == "hub-404":  # a model the hub does not have: its error quotes the URL
            pool = tmp_path / "pool"
            r0 = subprocess.run([str(LLORCH_POOL), "models", "register", "ghost", "--name", "G",
                                 "--repo", "llorch-test/ghost", "--architecture", "qwen",
                                 "--pool-root", str(pool)], capture_output=True, text=True,
                                timeout=ANTI_HANG_S, env=clean_env(), check=False)
            assert r0.returncode == 0, r0.stderr
            model = "ghost"
        r = _download(tmp_path, endpoint, model)
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "pool").rglob("*.json"))
    texts = {"stdout": r.stdout, "stderr": r.stderr, "pool json files": written}
    hits = [name for name, text in texts.items()
            for s in (PASSWORD, QUERY_TOKEN, TOKEN) if s in text]
    if variant == "ok-userinfo":
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert r.stderr.startswith("error: download of"), r.stderr
    assert hits == [], f"{variant}: credentials printed or recorded in {hits}: {r.stderr}"
    figure("redaction_cli", case=f"download:{variant}", exit=r.returncode, hits=len(hits))


# --------------------------------------------------------------------------- the corpus

CORE = "LlCanary7Qx2Zr9WkT4m"


def _subst(text: str, secret: str) -> str:
    return (text.replace("{SJ}", json.dumps(secret)[1:-1]).replace("{SR}", repr(secret)[1:-1])
            .replace("{SH}", html.escape(secret)).replace("{SU}", quote(secret, safe=""))
            .replace("{S}", CORE))


def _cases() -> list[Any]:
    return [pytest.param(c, id=c["id"]) for c in json.loads(CORPUS.read_text())]


@pytest.mark.parametrize("case", _cases())
def test_redaction_corpus(case: dict[str, Any]) -> None:
    secret = case.get("secret", "{S}").replace("{S}", CORE)
    text = _subst(case["text"], secret)
    env = {k: v.replace("{S}", CORE) for k, v in case.get("env", {}).items()}
    out = redaction.redact(text, env)
    assert redaction.redact(out, env) == out, "redaction must be idempotent"
    if case.get("expect") == "unchanged":
        assert out == text
    else:
        assert CORE not in out and secret not in out, (text, out)
        assert redaction.MASK in out
    figure("redaction_corpus", case=case["id"], changed=out != text)


def test_every_secret_name_hides_its_value_in_the_environment() -> None:
    """secret_values() reads os.environ now (not at import): a token set later counts too."""
    key = "LLORCH_TEST_ACCESS_TOKEN"
    os.environ[key] = CORE
    try:
        assert redaction.redact(f"x {CORE} y") == f"x {redaction.MASK} y"
    finally:
        del os.environ[key]


ENV_FORMS = {
    "raw": lambda v: v,
    "json": lambda v: json.dumps(v)[1:-1],
    "repr": lambda v: repr(v)[1:-1],
    "html": lambda v: html.escape(v),
    "url": lambda v: quote(v, safe=""),
}
SECRET_NAMES = ("HF_TOKEN", "MY_API_KEY", "DB_PASSWORD", "GH_SECRET", "X_AUTH", "CREDENTIALS")


def test_redaction_fuzz() -> None:
    """Random secrets: in the environment under a secret-looking name (every escaped form),
    as NAME=value pairs and in URL userinfo without being in the environment. Each comes out
    without the secret, and redaction is idempotent."""
    rng = random.Random(20)
    n = count("redaction_fuzz")
    printable = string.ascii_letters + string.digits + string.punctuation + " éü中"
    tokenish = string.ascii_letters + string.digits + "._~+/-"
    misses: list[str] = []
    for i in range(n):
        secret = "".join(rng.choice(printable) for _ in range(rng.randint(8, 48)))
        name = rng.choice(SECRET_NAMES)
        form = rng.choice(sorted(ENV_FORMS))
        text = f"step {i}: {ENV_FORMS[form](secret)} (done)"
        out = redaction.redact(text, {name: secret})
        if secret in out or ENV_FORMS[form](secret) in out or redaction.redact(
                out, {name: secret}) != out:
            misses.append(f"env/{form}: {secret!r}")
        value = "".join(rng.choice(tokenish) for _ in range(rng.randint(8, 40)))
        url_value = value.replace("/", "_")  # '/' would end a URL's authority
        pair = rng.choice([f"{name}={value}", f"'{name.lower()}': '{value}'",
                           f'"{name}": "{value}"', f"https://u:{url_value}@h.lan/x",
                           f"https://h.lan/p?access_token={url_value}&q=1"])
        value = url_value if "h.lan" in pair else value
        out = redaction.redact(f"x {pair} y", {})
        if value in out or redaction.redact(out, {}) != out:
            misses.append(f"pair: {pair!r} -> {out!r}")
    assert misses == [], misses[:10]
    figure("redaction_fuzz", secrets=2 * n, forms=len(ENV_FORMS), misses=len(misses))
