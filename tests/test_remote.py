"""Remote pools over a real ssh client and a real sshd on 127.0.0.1 (issue 6).

The "remote" pool root is a separate temp directory served by the test sshd;
every command goes through `ssh` and the remote login shell, so quoting, exit
statuses and host key refusal are the real thing. Injection tests give every
hostile value its own canary file and prove the file never appears.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from llorch_harness.errors import HarnessError, PoolUnreachable, RemoteTimeout
from llorch_harness.remote.hosts import parse_destination
from llorch_harness.remote.poolsfile import load_pools_file
from llorch_harness.remote.ssh import RemotePool, run_on_pools
from tests.marked import kill_all, marked, named, new_marker, wait_for, wait_none
from tests.sshd import BAD_KEY_ALIAS, UNKNOWN_KEY_ALIAS, SshdServer, free_port, make_sshd_fixture

sshd = make_sshd_fixture()

BIN = Path(sys.executable).parent
LLORCH = str(BIN / "llorch")
LLORCH_POOL = str(BIN / "llorch-pool")
HANG_GUARD_S = 120  # anti-hang only; nothing here should take more than a few seconds


# --------------------------------------------------------------------------- helpers


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No pool root, pools file or token from the developer's environment leaks in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING", "LLORCH_", "XDG_CONFIG"))}
    env["HOME"] = str(tmp_path / "home")  # no ~/.config/llorch/pools.toml, no ~/.ssh
    env.update(extra)
    return env


def llorch(tmp_path: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LLORCH, *args], capture_output=True, text=True, timeout=HANG_GUARD_S,
        env=env or clean_env(tmp_path), cwd=tmp_path, stdin=subprocess.DEVNULL,
    )


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_pools(tmp_path: Path, server: SshdServer, pools: dict[str, dict[str, object]],
                name: str = "pools.toml") -> Path:
    """A pools file whose pools reach the test sshd through its client config."""
    lines = [f"ssh_config = {toml_str(str(server.config))}", ""]
    for pool, keys in pools.items():
        lines.append(f"[pools.{toml_str(pool)}]")
        env = dict(keys.pop("env", {}))  # type: ignore[call-overload]
        for key, value in keys.items():
            if isinstance(value, str):
                lines.append(f"{key} = {toml_str(value)}")
            elif isinstance(value, list):
                lines.append(f"{key} = [{', '.join(toml_str(v) for v in value)}]")
            else:
                lines.append(f"{key} = {value}")
        if env:
            lines.append(f"[pools.{toml_str(pool)}.env]")
            lines += [f"{k} = {toml_str(v)}" for k, v in env.items()]
        lines.append("")
    path = tmp_path / name
    path.write_text("\n".join(lines))
    return path


def pool_entry(server: SshdServer, root: Path, **over: object) -> dict[str, object]:
    entry: dict[str, object] = {"host": server.alias, "root": str(root),
                                "llorch_pool": server.llorch_pool, "backends": ["cpu"]}
    entry.update(over)
    return entry


@pytest.fixture
def remote_root(tmp_path: Path) -> Path:
    root = tmp_path / "remote-pool"
    root.mkdir()
    return root


@pytest.fixture
def pools_file(tmp_path: Path, sshd: SshdServer, remote_root: Path) -> Path:
    return write_pools(tmp_path, sshd, {"testpool": pool_entry(sshd, remote_root)})


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def local_pool(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LLORCH_"))}
    return subprocess.run([LLORCH_POOL, "--pool-root", str(root), *args], capture_output=True,
                          text=True, timeout=HANG_GUARD_S, env=env, stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------- round trips


def test_catalog_round_trips_output_and_status(tmp_path: Path, pools_file: Path,
                                               remote_root: Path) -> None:
    local_pool(remote_root, "models", "register", "m1", "--name", "Model One",
               "--repo", "org/m1", "--architecture", "qwen2")
    want = local_pool(remote_root, "models", "catalog")
    assert want.returncode == 0, want.stderr
    got = llorch(tmp_path, "--pools-file", str(pools_file),
                 "pool", "models", "catalog", "--host", "testpool")
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout
    assert "m1" in got.stdout


def test_register_then_catalog_shows_it_and_name_is_inert(
        tmp_path: Path, pools_file: Path, remote_root: Path) -> None:
    canaries = [tmp_path / f"canary-{i}" for i in range(4)]
    name = (f"a $(touch {canaries[0]}) `touch {canaries[1]}` ; touch {canaries[2]} "
            f"'q' \"dq\" \\ | touch {canaries[3]} & $HOME\nsecond line -oX")
    reg = llorch(tmp_path, "--pools-file", str(pools_file), "pool", "models", "register",
                 "m-inert", "--name", name, "--repo", "org/inert", "--architecture", "qwen2",
                 "--backends", "cpu", "--host", "testpool")
    assert reg.returncode == 0, reg.stderr
    cat = llorch(tmp_path, "--pools-file", str(pools_file), "pool", "models", "catalog",
                 "--json", "--host", "testpool")
    assert cat.returncode == 0, cat.stderr
    entries = {m["id"]: m for m in json.loads(cat.stdout)["models"]}
    assert entries["m-inert"]["name"] == name
    assert entries["m-inert"]["backends"] == ["cpu"]
    on_disk = json.loads((remote_root / ".test-models" / "catalog.json").read_text())
    assert [m["name"] for m in on_disk["models"]] == [name]
    assert not [c for c in canaries if c.exists()]


def test_failing_remote_command_reports_its_status(tmp_path: Path, pools_file: Path) -> None:
    res = llorch(tmp_path, "--pools-file", str(pools_file), "pool", "models", "download",
                 "no-such-model", "--host", "testpool")
    assert res.returncode == 10  # choices.EXIT_CODES["model id"], through ssh
    assert "unknown model id 'no-such-model'" in res.stderr
    res = llorch(tmp_path, "--pools-file", str(pools_file), "pool", "models", "unregister",
                 "not-there", "--host", "testpool")
    assert res.returncode == 10
    assert "unknown model id 'not-there'" in res.stderr


def test_exit_status_and_both_streams_round_trip(tmp_path: Path, sshd: SshdServer) -> None:
    script = "echo out-line; echo err-line >&2; exit 7"
    pf = write_pools(tmp_path, sshd, {"p": pool_entry(
        sshd, tmp_path, llorch_pool=f"sh -c '{script}' llorch-pool")})
    res = llorch(tmp_path, "--pools-file", str(pf), "pool", "status", "--host", "p")
    assert res.returncode == 7
    assert res.stdout == "out-line\n"
    assert "err-line" in res.stderr
    assert not error_lines(res.stderr)  # a remote failure is the remote's, not an ssh error


def test_ad_hoc_destination_with_ssh_config_from_env(tmp_path: Path, sshd: SshdServer,
                                                      remote_root: Path) -> None:
    """No pools file: `--host` is an ssh destination, $LLORCH_SSH_CONFIG gives `-F`."""
    env = clean_env(tmp_path, LLORCH_SSH_CONFIG=str(sshd.config))
    res = llorch(tmp_path, "pool", "models", "list", "--json", "--host", sshd.alias,
                 "--remote-root", str(remote_root), env=env)
    assert res.returncode == 0, res.stderr
    assert "tiny-qwen" in {row["id"] for row in json.loads(res.stdout)}


def test_arguments_and_env_reach_the_remote_verbatim(tmp_path: Path, sshd: SshdServer) -> None:
    """Library API: every argv word and env value arrives byte for byte, nothing executes."""
    canary = tmp_path / "argv-canary"
    hostile = [
        "plain", "a b", f"$(touch {canary})", f"`touch {canary}`", f";touch {canary}",
        f"&& touch {canary}", f"| touch {canary}", f"> {canary}", "'", '"', "a'b\"c",
        "line1\nline2", "\t", "\\", "*", "~", "$HOME", "!", "", "é ü 中",
        f"-oProxyCommand=touch {canary}", "--pool-root=/etc",
    ]
    printer = ("import json, os, sys; "
               "print(json.dumps([sys.argv[1:], os.environ.get('WEIRD')]))")
    pf = write_pools(tmp_path, sshd, {"echo": {
        "host": sshd.alias, "llorch_pool": f"{sys.executable} -c \"{printer}\"",
        "env": {"WEIRD": f"$(touch {canary}) `x` 'q' \"d\"\n;"},
    }})
    pool = load_pools_file(pf).pools["echo"]
    res = RemotePool(pool).run(hostile, capture=True, timeout=HANG_GUARD_S)
    assert res.returncode == 0, res.stderr
    argv, weird = json.loads(res.stdout)
    assert argv == hostile
    assert weird == f"$(touch {canary}) `x` 'q' \"d\"\n;"
    assert not canary.exists()


def test_remote_root_with_metacharacters_is_inert(tmp_path: Path, sshd: SshdServer) -> None:
    canary = tmp_path / "root-canary"
    root = tmp_path / f"r $(touch {canary}) ;x"
    pf = write_pools(tmp_path, sshd, {"odd": pool_entry(sshd, root)})
    res = llorch(tmp_path, "--pools-file", str(pf), "pool", "models", "register", "m2",
                 "--name", "n", "--repo", "org/m2", "--architecture", "qwen2", "--host", "odd")
    assert res.returncode == 0, res.stderr
    assert (root / ".test-models" / "catalog.json").is_file()
    assert not canary.exists()


# --------------------------------------------------------------------------- ssh failures


def test_unreachable_pool_fails_fast_with_host_named(tmp_path: Path, sshd: SshdServer) -> None:
    pf = write_pools(tmp_path, sshd, {"deadpool": pool_entry(
        sshd, tmp_path, port=free_port(), connect_timeout=5)})
    start = time.monotonic()
    res = llorch(tmp_path, "--pools-file", str(pf), "pool", "models", "catalog",
                 "--host", "deadpool")
    assert time.monotonic() - start < 60  # generous: ConnectTimeout is 5s, refusal is instant
    assert res.returncode == 255
    errors = error_lines(res.stderr)
    assert len(errors) == 1
    assert errors[0].startswith("error: cannot reach pool deadpool (testpool) over ssh:")
    assert "refused" in errors[0].lower()


@pytest.mark.parametrize("alias", [BAD_KEY_ALIAS, UNKNOWN_KEY_ALIAS])
def test_wrong_or_unknown_host_key_is_refused(tmp_path: Path, sshd: SshdServer,
                                              alias: str) -> None:
    ran = tmp_path / "ran"
    env = clean_env(tmp_path, LLORCH_SSH_CONFIG=str(sshd.config))
    res = llorch(tmp_path, "pool", "models", "catalog", "--host", alias,
                 "--remote-root", str(ran), env=env)
    assert res.returncode == 255
    errors = error_lines(res.stderr)
    assert len(errors) == 1 and alias in errors[0]
    assert "host key" in errors[0].lower()
    assert not ran.exists()


def test_library_raises_connection_error(tmp_path: Path, sshd: SshdServer) -> None:
    pf = write_pools(tmp_path, sshd, {"bad": pool_entry(sshd, tmp_path, host=BAD_KEY_ALIAS)})
    with pytest.raises(PoolUnreachable) as info:
        RemotePool(load_pools_file(pf).pools["bad"]).run(["status"], capture=True,
                                                         timeout=HANG_GUARD_S)
    assert info.value.exit_code == 255
    assert "Host key verification failed" in info.value.detail


# --------------------------------------------------------------------------- injection

def _hostile(canary: Path) -> list[str]:
    return [
        f"testpool;touch {canary}", f"$(touch {canary})", f"`touch {canary}`",
        f"-oProxyCommand=touch {canary}", f"-oProxyCommand=sh -c 'touch {canary}'",
        "testpool'", 'testpool"', f"testpool\ntouch {canary}", "testpool touch",
        "-F/dev/null", f"testpool&touch {canary}", f"testpool|touch {canary}", "",
    ]


@pytest.mark.parametrize("index", range(13))
def test_hostile_hosts_are_refused(tmp_path: Path, sshd: SshdServer, index: int) -> None:
    canary = tmp_path / "host-canary"
    host = _hostile(canary)[index]
    env = clean_env(tmp_path, LLORCH_SSH_CONFIG=str(sshd.config))
    res = llorch(tmp_path, "pool", "models", "catalog", f"--host={host}",
                 "--remote-root", str(tmp_path / "r"), env=env)
    assert res.returncode == 2, res.stderr
    assert error_lines(res.stderr)[0].startswith("error: invalid host")
    assert not canary.exists()
    assert not (tmp_path / "r").exists()


def test_host_that_looks_like_an_option_is_not_taken_as_a_value(tmp_path: Path,
                                                                 sshd: SshdServer) -> None:
    canary = tmp_path / "opt-canary"
    env = clean_env(tmp_path, LLORCH_SSH_CONFIG=str(sshd.config))
    res = llorch(tmp_path, "pool", "models", "catalog", "--host",
                 f"-oProxyCommand=touch {canary}", env=env)
    assert res.returncode == 2
    assert not canary.exists()


@pytest.fixture
def tripwire(tmp_path: Path, sshd: SshdServer) -> tuple[Path, Path]:
    """A pool whose remote command only touches a file: proof of whether anything ran."""
    ran = tmp_path / "remote-ran"
    pf = write_pools(tmp_path, sshd, {"trip": pool_entry(
        sshd, tmp_path, llorch_pool=f"sh -c 'touch {ran}' llorch-pool")}, name="trip.toml")
    return pf, ran


@pytest.mark.parametrize("index", range(13))
@pytest.mark.parametrize("command", [["models", "download"], ["models", "unregister"],
                                     ["worker", "stop"], ["worker", "logs"]])
def test_hostile_ids_refused_before_ssh(tmp_path: Path, tripwire: tuple[Path, Path],
                                        command: list[str], index: int) -> None:
    pf, ran = tripwire
    canary = tmp_path / "id-canary"
    value = _hostile(canary)[index]
    res = llorch(tmp_path, "--pools-file", str(pf), "pool", *command, "--host", "trip",
                 "--", value)
    assert res.returncode == 2, (res.stdout, res.stderr)
    what = "worker id" if command[0] == "worker" else "model id"
    assert f"error: invalid {what}" in res.stderr
    assert not canary.exists()
    assert not ran.exists()


def test_tripwire_fires_for_valid_input(tmp_path: Path, tripwire: tuple[Path, Path]) -> None:
    """The tripwire above is honest: a valid id does reach the remote."""
    pf, ran = tripwire
    res = llorch(tmp_path, "--pools-file", str(pf), "pool", "models", "download", "qwen-0.5b",
                 "--host", "trip")
    assert res.returncode == 0, res.stderr
    assert ran.exists()


def test_hostile_pool_names_and_hosts_in_pools_file(tmp_path: Path, sshd: SshdServer) -> None:
    canary = tmp_path / "file-canary"
    for pools in (
        {f"p;touch {canary}": pool_entry(sshd, tmp_path)},
        {f"$(touch {canary})": pool_entry(sshd, tmp_path)},
        {"-oProxyCommand=x": pool_entry(sshd, tmp_path)},
        {"p": pool_entry(sshd, tmp_path, host=f"-oProxyCommand=touch {canary}")},
        {"p": pool_entry(sshd, tmp_path, host=f"testpool;touch {canary}")},
        {"p": pool_entry(sshd, tmp_path, user=f"root;touch {canary}")},
    ):
        pf = write_pools(tmp_path, sshd, pools)
        res = llorch(tmp_path, "--pools-file", str(pf), "pools", "models", "catalog")
        assert res.returncode == 2, res.stderr
        assert error_lines(res.stderr)[0].startswith(f"error: pools file {pf}:")
        assert not canary.exists()


def test_destination_parsing() -> None:
    assert str(parse_destination("root@mac.home.arpa")) == "root@mac.home.arpa"
    assert parse_destination("mac:2222").port == 2222
    d = parse_destination("me@[fe80::1]:22")
    assert (d.user, d.host, d.port) == ("me", "fe80::1", 22)
    assert parse_destination("::1").host == "::1"
    for bad in ("a@b@c", "host:0", "host:99999", "[::1", "[host]", ".hidden", "a/b", "a b"):
        with pytest.raises(HarnessError):
            parse_destination(bad)


# --------------------------------------------------------------------------- pools file

@pytest.mark.parametrize(("text", "needle"), [
    ("[pools.a\nhost = 'x'", "not valid TOML"),
    ("[pools.a]\nroot = '/x'\n", "pools.a.host: missing"),
    ("[pools.a]\nhost = 'x'\ncolour = 'red'\n", "pools.a.colour: unknown key"),
    ("hosts = 1\n", "hosts: unknown key"),
    ("[pools.a]\nhost = 'x'\nport = '22'\n", "pools.a.port:"),
    ("[pools.a]\nhost = 'x'\nenv = { A = 1 }\n", "pools.a.env.A: must be a string"),
    ("[pools.a]\nhost = 'x'\nbackends = ['rocm']\n", "pools.a.backends:"),
    ("[pools.a]\nhost = 'x'\nllorch_pool = \"'unclosed\"\n", "pools.a.llorch_pool:"),
    ("[pools.a]\nhost = 'x'\nssh_config = 'missing.cfg'\n", "pools.a.ssh_config:"),
    ("[pools.a]\nhost = 'x'\nroot = \"a\\nb\"\n", "pools.a.root:"),
])
def test_bad_pools_file_is_one_line_naming_file_and_key(tmp_path: Path, text: str,
                                                        needle: str) -> None:
    pf = tmp_path / "pools.toml"
    pf.write_text(text)
    res = llorch(tmp_path, "--pools-file", str(pf), "pools", "list")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: pools file {pf}")
    assert needle in lines[0]


def test_pools_file_is_found_in_pool_root_then_config_dir(tmp_path: Path,
                                                           sshd: SshdServer) -> None:
    home = tmp_path / "home"
    cfg_file = home / ".config" / "llorch" / "pools.toml"
    cfg_file.parent.mkdir(parents=True)
    write_pools(cfg_file.parent, sshd, {"from-home": pool_entry(sshd, tmp_path)})
    root = tmp_path / "poolroot"
    root.mkdir()
    res = llorch(tmp_path, "--pool-root", str(root), "pools", "list")
    assert res.returncode == 0 and "from-home" in res.stdout
    write_pools(root, sshd, {"from-root": pool_entry(sshd, tmp_path)})
    res = llorch(tmp_path, "--pool-root", str(root), "pools", "list")
    assert res.returncode == 0 and "from-root" in res.stdout and "from-home" not in res.stdout
    res = llorch(tmp_path, "--pools-file", str(tmp_path / "nope.toml"), "pools", "list")
    assert res.returncode == 2 and "not found" in res.stderr


def test_pools_file_in_the_current_directory_is_not_loaded(tmp_path: Path,
                                                           sshd: SshdServer) -> None:
    """Issue 20 #8: a planted pools.toml (its ssh config holds a ProxyCommand) in the
    working directory is never read by default; naming its directory as the pool root is
    what makes it count."""
    canary = tmp_path / "proxy-canary"
    evil = tmp_path / "evil_config"
    evil.write_text(f"Host *\n  ProxyCommand sh -c 'touch {canary}'\n")
    (tmp_path / "pools.toml").write_text(
        f'ssh_config = {toml_str(str(evil))}\n[pools.mac]\nhost = {toml_str(sshd.alias)}\n')
    res = llorch(tmp_path, "pool", "status", "--host", "mac", "--connect-timeout", "3")
    assert not canary.exists()
    assert res.returncode == 255, res.stderr  # `mac` is a plain destination that resolves nowhere
    listed = llorch(tmp_path, "pools", "list")
    assert listed.returncode == 2 and "no pools file found" in listed.stderr
    named = llorch(tmp_path, "--pool-root", str(tmp_path), "pools", "list")
    assert named.returncode == 0 and "mac" in named.stdout
    assert not canary.exists()


def test_pools_file_writable_by_others_is_refused(tmp_path: Path, sshd: SshdServer) -> None:
    pf = write_pools(tmp_path, sshd, {"p": pool_entry(sshd, tmp_path)})
    pf.chmod(0o664)
    res = llorch(tmp_path, "--pools-file", str(pf), "pool", "status", "--host", "p")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"error: pools file {pf} is writable by group")
    assert f"chmod go-w {pf}" in res.stderr


def test_unknown_arguments_never_reach_the_remote(tmp_path: Path, pools_file: Path) -> None:
    """Issue 20 #9 on both sides of a real ssh: `llorch pool` refuses `--pool-ro=/etc`
    itself (exit 2), and the remote `llorch-pool` refuses the abbreviation too."""
    res = llorch(tmp_path, "--pools-file", str(pools_file), "pool", "models", "catalog",
                 "--host", "testpool", "--pool-ro=/etc")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "unrecognized arguments: --pool-ro=/etc" in res.stderr
    pool = load_pools_file(pools_file).pools["testpool"]
    direct = RemotePool(pool).run(["--pool-ro=/etc", "models", "catalog"], capture=True,
                                  timeout=HANG_GUARD_S)
    assert direct.returncode == 2 and "unrecognized arguments" in direct.stderr


def test_secret_env_values_never_printed(tmp_path: Path, sshd: SshdServer) -> None:
    secret = "hf_SECRETdoNotPrint123456"
    pf = write_pools(tmp_path, sshd, {"p": pool_entry(
        sshd, tmp_path, env={"HF_TOKEN": secret, "HF_ENDPOINT": "http://127.0.0.1:9"})})
    dry = llorch(tmp_path, "--pools-file", str(pf), "pool", "models", "download", "tiny-qwen",
                 "--host", "p", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert secret not in dry.stdout + dry.stderr
    assert "HF_TOKEN=***" in dry.stdout and "HF_ENDPOINT=http://127.0.0.1:9" in dry.stdout
    listing = llorch(tmp_path, "--pools-file", str(pf), "pools", "list")
    assert secret not in listing.stdout + listing.stderr and "HF_TOKEN" in listing.stdout


def test_dry_run_masks_secrets_by_shape_and_in_urls(tmp_path: Path, sshd: SshdServer) -> None:
    """Issue 20 #2: an `hf_` value under a plain name, a password in HF_ENDPOINT and a token
    in a query string are masked too; the plain parts stay readable."""
    token, password, query = "hf_PLAINname7Qx2Zr9WkT", "S3cretPassw0rd", "qTok3nZ8x7c6"
    pf = write_pools(tmp_path, sshd, {"p": pool_entry(sshd, tmp_path, env={
        "MIRROR_NOTE": token, "HF_ENDPOINT": f"http://alice:{password}@hub.lan:8080",
        "EXTRA_URL": f"https://hub.lan/?token={query}&x=1"})})
    dry = llorch(tmp_path, "--pools-file", str(pf), "pool", "models", "list", "--host", "p",
                 "--dry-run")
    assert dry.returncode == 0, dry.stderr
    for secret in (token, password, query):
        assert secret not in dry.stdout + dry.stderr
    assert "MIRROR_NOTE=***" in dry.stdout and "http://***@hub.lan:8080" in dry.stdout
    assert "token=***&x=1" in dry.stdout


def test_ssh_command_keeps_host_key_checking_and_batch_mode(tmp_path: Path,
                                                           sshd: SshdServer) -> None:
    pf = write_pools(tmp_path, sshd, {"p": pool_entry(sshd, tmp_path, connect_timeout=7)})
    pool = RemotePool(load_pools_file(pf).pools["p"])
    argv = pool.ssh_argv(["status"])
    joined = " ".join(argv)
    assert "BatchMode=yes" in joined and "ConnectTimeout=7" in joined
    assert "StrictHostKeyChecking" not in joined and "UserKnownHostsFile" not in joined
    dash = argv.index("--")
    assert argv[dash + 1] == "testpool" and len(argv) == dash + 3


# --------------------------------------------------------------------------- every pool


def test_pools_catalog_in_parallel_with_one_unreachable(tmp_path: Path,
                                                       sshd: SshdServer) -> None:
    roots = [tmp_path / "pool-a", tmp_path / "pool-b"]
    pf = write_pools(tmp_path, sshd, {
        "pool-a": pool_entry(sshd, roots[0]),
        "pool-b": pool_entry(sshd, roots[1]),
        "deadpool": pool_entry(sshd, tmp_path / "dead", port=free_port(), connect_timeout=5),
    })
    res = llorch(tmp_path, "--pools-file", str(pf), "pools", "models", "catalog")
    assert res.returncode == 1, res.stderr
    rows = {ln.split()[0]: ln.split() for ln in res.stdout.splitlines()
            if ln.split() and ln.split()[0] in ("pool-a", "pool-b", "deadpool")}
    assert rows["pool-a"][2] == "ok" and rows["pool-b"][2] == "ok"
    assert rows["deadpool"][2] == "unreachable" and rows["deadpool"][3] == "255"
    assert "[deadpool] UNREACHABLE" in res.stdout
    assert res.stdout.count("Model Catalog for") == 2
    assert "2/3 pools ok" in res.stdout


def test_run_on_pools_library_keeps_pool_order(tmp_path: Path, sshd: SshdServer) -> None:
    pf = write_pools(tmp_path, sshd, {
        "one": pool_entry(sshd, tmp_path / "one"),
        "two": pool_entry(sshd, tmp_path / "two", host=BAD_KEY_ALIAS),
    })
    pools = list(load_pools_file(pf).pools.values())
    seen: list[str] = []
    outcomes = run_on_pools(pools, ["models", "list", "--json"], timeout=HANG_GUARD_S,
                            on_done=lambda o: seen.append(o.pool.name))
    assert [o.pool.name for o in outcomes] == ["one", "two"] and sorted(seen) == ["one", "two"]
    assert outcomes[0].ok and json.loads(outcomes[0].result.stdout)  # type: ignore[union-attr]
    assert outcomes[1].status == "unreachable" and "host key" in outcomes[1].detail.lower()


# --------------------------------------------------------------------------- hub downloads


@pytest.fixture(scope="module")
def hub_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    hub = pytest.importorskip("llorch_harness.lab.hub", reason="the local hub is not importable")
    pytest.importorskip("llorch_harness.pool.download", reason="downloads are not importable")
    root = hub.build_embedded_hub_root(tmp_path_factory.mktemp("hubroot"))
    with hub.LocalHub(root) as h:
        yield h.url


def hub_env(url: str, tmp_path: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1", "NO_COLOR": "1"}


def test_pools_download_on_every_pool(tmp_path: Path, sshd: SshdServer, hub_url: str) -> None:
    roots = [tmp_path / "pool-a", tmp_path / "pool-b"]
    env = hub_env(hub_url, tmp_path)
    pf = write_pools(tmp_path, sshd, {
        "pool-a": pool_entry(sshd, roots[0], env=env),
        "pool-b": pool_entry(sshd, roots[1], env=env),
    })
    res = llorch(tmp_path, "--pools-file", str(pf), "pools", "models", "download", "tiny-qwen")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2/2 pools ok" in res.stdout
    for root in roots:
        catalog = json.loads((root / ".test-models" / "catalog.json").read_text())
        entry = {m["id"]: m for m in catalog["models"]}["tiny-qwen"]
        assert entry["downloaded"] is True
        assert local_pool(root, "models", "verify", "tiny-qwen").returncode == 0


def test_pools_download_with_one_pool_unreachable(tmp_path: Path, sshd: SshdServer,
                                                  hub_url: str) -> None:
    env = hub_env(hub_url, tmp_path)
    pf = write_pools(tmp_path, sshd, {
        "good": pool_entry(sshd, tmp_path / "good", env=env),
        "deadpool": pool_entry(sshd, tmp_path / "dead", env=env, port=free_port(),
                               connect_timeout=5),
    })
    res = llorch(tmp_path, "--pools-file", str(pf), "pools", "models", "download", "tiny-qwen")
    assert res.returncode != 0
    rows = {ln.split()[0]: ln.split() for ln in res.stdout.splitlines() if ln.split()}
    assert rows["good"][2] == "ok"
    assert rows["deadpool"][2] == "unreachable"
    assert "1/2 pools ok" in res.stdout


# --------------------------------------------------------------------------- remote workers


def _worker_commands_available() -> str | None:
    res = subprocess.run([LLORCH_POOL, "worker", "spawn", "--help"], capture_output=True,
                         text=True, timeout=HANG_GUARD_S)
    if res.returncode != 0 or "--model" not in res.stdout:
        return "llorch-pool worker spawn is not available yet (cli/worker_cmd.py)"
    return None


def test_remote_worker_spawn_list_stop(tmp_path: Path, sshd: SshdServer, hub_url: str) -> None:
    reason = _worker_commands_available()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "wpool"
    pf = write_pools(tmp_path, sshd, {"w": pool_entry(sshd, root, env=hub_env(hub_url,
                                                                              tmp_path))})
    base = ["--pools-file", str(pf), "pool"]
    dl = llorch(tmp_path, *base, "models", "download", "tiny-qwen", "--host", "w")
    assert dl.returncode == 0, dl.stderr
    spawn = llorch(tmp_path, *base, "worker", "spawn", "cpu", "--model", "tiny-qwen",
                   "--worker", "reference", "--port", "0", "--host", "w")
    records = sorted((root / ".runtime" / "workers").glob("*.json"))
    pids = [json.loads(r.read_text())["pid"] for r in records]
    try:
        assert spawn.returncode == 0, spawn.stdout + spawn.stderr
        assert len(records) == 1
        record = json.loads(records[0].read_text())
        # the ssh session is over; the detached worker must still be running
        assert psutil.pid_exists(record["pid"])
        listing = llorch(tmp_path, *base, "worker", "list", "--host", "w")
        assert listing.returncode == 0, listing.stderr
        assert record["worker_id"] in listing.stdout
        stop = llorch(tmp_path, *base, "worker", "stop", record["worker_id"], "--host", "w")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        deadline = time.monotonic() + 30
        while _alive(record["pid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(record["pid"])
        after = llorch(tmp_path, *base, "worker", "list", "--host", "w")
        assert after.returncode == 0 and record["worker_id"] not in after.stdout
    finally:
        for pid in pids:  # never leave a worker behind, whatever failed above
            if _alive(pid):
                psutil.Process(pid).kill()


def _alive(pid: int) -> bool:
    """A zombie is not a running worker."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --------------------------------------------------------------------------- stopping

# A remote command that runs until it is stopped, with a child of its own: the marker
# (sys.argv[1]) is a word of both command lines.
SLEEPER = ("import subprocess, sys, time; "
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', "
           "sys.argv[1] + '-child']); time.sleep(600)")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_stopping_llorch_pool_ends_the_remote_command(tmp_path: Path, sshd: SshdServer,
                                                      sig: signal.Signals) -> None:
    """Issue 13: Ctrl-C, SIGTERM (or even SIGKILL) of `llorch pool ... --host` ends the
    remote command and its children; no ssh and no remote process is left."""
    marker = new_marker("pool")
    pf = write_pools(tmp_path, sshd, {"p": pool_entry(
        sshd, tmp_path, llorch_pool=f"{sys.executable} -c \"{SLEEPER}\" {marker}")})
    proc = subprocess.Popen([LLORCH, "--pools-file", str(pf), "pool", "status", "--host", "p"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(tmp_path), cwd=tmp_path, stdin=subprocess.DEVNULL)
    try:
        running = wait_for(marker, 3, HANG_GUARD_S)  # local ssh, remote command, its child
        assert len(running) >= 3, [p.cmdline() for p in running]
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=HANG_GUARD_S)
        assert proc.returncode == (-9 if sig == signal.SIGKILL else 130), err
        if sig != signal.SIGKILL:
            assert error_lines(err) == ["error: interrupted"]
        assert wait_none(marker, 60) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_all(marker)


def test_deadline_ends_the_remote_command(tmp_path: Path, sshd: SshdServer) -> None:
    marker = new_marker("deadline")
    pf = write_pools(tmp_path, sshd, {"p": pool_entry(
        sshd, tmp_path, llorch_pool=f"{sys.executable} -c \"{SLEEPER}\" {marker}")})
    try:
        with pytest.raises(RemoteTimeout) as info:
            RemotePool(load_pools_file(pf).pools["p"]).run(["status"], capture=True,
                                                           timeout=3)
        assert info.value.exit_code == 124 and "within 3s" in info.value.message
        assert wait_none(marker, 60) == []
    finally:
        kill_all(marker)


def test_oversized_answer_is_refused_and_stopped(tmp_path: Path, sshd: SshdServer) -> None:
    """A captured answer past its cap is an error, and the remote writer is stopped."""
    marker = new_marker("flood")
    flood = "import sys\nwhile True: sys.stdout.buffer.write(b'x' * 65536)"
    pf = write_pools(tmp_path, sshd, {"p": {"host": sshd.alias}})
    transport = RemotePool(load_pools_file(pf).pools["p"]).transport
    try:
        with pytest.raises(HarnessError, match="answer larger than 1000000 bytes"):
            transport.run([sys.executable, "-c", flood, marker], timeout=HANG_GUARD_S,
                          max_stdout=1_000_000)
        assert wait_none(marker, 60) == []
    finally:
        kill_all(marker)


def test_library_interrupt_ends_remote_command(tmp_path: Path, sshd: SshdServer) -> None:
    """The library API: a KeyboardInterrupt in the waiting thread stops the remote side
    before it propagates (here raised by a timer, as a Ctrl-C would)."""
    marker = new_marker("lib")
    pf = write_pools(tmp_path, sshd, {"p": pool_entry(
        sshd, tmp_path, llorch_pool=f"{sys.executable} -c \"{SLEEPER}\" {marker}")})
    pool = RemotePool(load_pools_file(pf).pools["p"])
    main = threading.get_ident()

    def interrupt_when_running() -> None:
        if len(wait_for(marker, 3, HANG_GUARD_S)) >= 3:
            signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=interrupt_when_running, daemon=True)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            pool.run(["status"], capture=True, timeout=HANG_GUARD_S)
        # the local ssh has ended when run() hands the interrupt on; the remote side soon
        assert named(marked(marker), "ssh") == []
        assert wait_none(marker, 60) == []
    finally:
        t.join(timeout=HANG_GUARD_S)
        kill_all(marker)


def test_remote_command_is_wrapped_but_words_stay_verbatim(tmp_path: Path,
                                                         sshd: SshdServer) -> None:
    """The wrapper is the only addition: the remote command sees its argv, its cwd and an
    empty stdin, and its exit status comes back."""
    printer = ("import json, os, sys; "
               "print(json.dumps([sys.argv[1:], os.getcwd(), sys.stdin.read()])); "
               "sys.exit(5)")
    pf = write_pools(tmp_path, sshd, {"p": {"host": sshd.alias}})
    transport = RemotePool(load_pools_file(pf).pools["p"]).transport
    odd = tmp_path / "dir with 'quote' $(x)"
    odd.mkdir()
    res = transport.run([sys.executable, "-c", printer, "a b", "", "-n"], cwd=str(odd),
                        timeout=HANG_GUARD_S)
    assert res.returncode == 5, res.stderr
    assert json.loads(res.stdout) == [["a b", "", "-n"], str(odd), ""]
    missing = transport.run(["true"], cwd=str(tmp_path / "nope"), timeout=HANG_GUARD_S)
    assert missing.returncode != 0 and "nope" in missing.stderr


@pytest.mark.parametrize("name", ["x; touch /tmp/pwned", "$(id)", "a/b", "../up", "", "-rf"])
def test_a_temp_dir_name_that_is_not_a_plain_word_never_reaches_the_shell(name: str) -> None:
    """`make_temp_dir` puts its name into `sh -c` on the pool: anything but a plain word is
    refused before ssh starts (the pool here does not exist: reaching ssh would say so)."""
    from llorch_harness.remote.poolsfile import PoolConfig
    from llorch_harness.remote.transport import SshTransport

    conn = SshTransport(PoolConfig(name="nowhere", destination=parse_destination(
        "no-such-host.invalid")))
    with pytest.raises(ValueError, match="not a temp dir name"):
        conn.make_temp_dir(name)
