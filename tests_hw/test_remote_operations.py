"""CP3 gate, Remote Operations: `llorch pool ... --host H` from this machine over ssh.

Runs once per pool host (--pool-host, LLORCH_POOL_HOSTS, or the pools file); skipped with
a reason when none is configured.
"""

from __future__ import annotations

import pytest
from gatehelpers import LLORCH_MODULE, expect, pool_level, run_module

from llorch_harness.plugin.fixtures import LAB_KEY
from llorch_harness.pool.backends import CPU

SECTION = "Remote Operations"
pytestmark = pytest.mark.remote
NO_HOST = "no pool host configured: pass --pool-host HOST (or LLORCH_POOL_HOSTS, or a " \
          "pools.toml) to run the Remote Operations items"


def _hosts(config) -> list[str]:
    lab = config.stash[LAB_KEY]
    if lab.settings.pool_hosts:
        return list(lab.settings.pool_hosts)
    try:
        from llorch_harness.remote.poolsfile import load_pools

        return sorted(load_pools(None, lab.pool_root).pools)
    except Exception:  # an unreadable pools file is the remote commands' to report
        return []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pool_host" in metafunc.fixturenames:
        hosts = _hosts(metafunc.config)
        params = [pytest.param(h, id=h) for h in hosts] or [
            pytest.param(None, id="no-pool-host", marks=pytest.mark.skip(reason=NO_HOST))]
        metafunc.parametrize("pool_host", params)


def _llorch(*args: str):
    return run_module(LLORCH_MODULE, list(args))


def _remote_backend(pool_host: str) -> str:
    try:
        from llorch_harness.remote.poolsfile import load_pools, resolve_pool

        cfg = resolve_pool(pool_host, load_pools())
        return cfg.backends[0] if cfg.backends else CPU
    except Exception:
        return CPU


@pytest.mark.gate(SECTION, "`llorch pool models download --host mac` works")
@pool_level
def test_remote_models_download(pool_host, lab, gate_record):
    res = _llorch("pool", "models", "download", lab.gate_model, "--host", pool_host)
    gate_record["command"] = res.describe()
    expect(res.returncode == 0, f"exit 0 on {pool_host}", res.describe(),
           f"`llorch pool models catalog --host {pool_host}`")
    cat = _llorch("pool", "models", "catalog", "--json", "--host", pool_host)
    expect(cat.returncode == 0 and f'"{lab.gate_model}"' in cat.stdout,
           f"{lab.gate_model} in the pool's catalog", cat.describe(), pool_host)


@pytest.mark.gate(SECTION, "`llorch pool worker spawn --host mac` works")
@pool_level
def test_remote_worker_spawn(pool_host, lab, gate_record):
    backend = _remote_backend(pool_host)
    wid = f"gate-remote-{backend}-0"
    args = ["pool", "worker", "spawn", backend, "--model", lab.gate_model, "--port", "0",
            "--worker-id", wid, "--host", pool_host]
    if lab.lab == "embedded":
        args += ["--worker", "reference"]
    try:
        res = _llorch(*args)
        gate_record["spawn"] = res.describe()
        expect(res.returncode == 0, f"worker spawned on {pool_host}", res.describe(),
               f"`llorch pool worker logs {wid} --host {pool_host}`")
        listed = _llorch("pool", "worker", "list", "--json", "--host", pool_host)
        expect(listed.returncode == 0 and wid in listed.stdout, f"{wid} listed on {pool_host}",
               listed.describe(), pool_host)
    finally:
        stop = _llorch("pool", "worker", "stop", wid, "--host", pool_host)
        gate_record["stop"] = stop.describe()


@pytest.mark.gate(SECTION, "SSH commands execute correctly")
@pool_level
def test_ssh_commands(pool_host, gate_record):
    """Exit status and output travel back; a failing remote command fails here too."""
    ok = _llorch("pool", "models", "list", "--json", "--host", pool_host)
    expect(ok.returncode == 0 and ok.stdout.strip().startswith("["),
           "JSON model list from the pool", ok.describe(), pool_host)
    bad = _llorch("pool", "worker", "logs", "no-such-worker-xyz", "--host", pool_host)
    expect(bad.returncode != 0, "a failing remote command gives a non-zero exit",
           bad.describe(), pool_host)
    gate_record["commands"] = [ok.describe(), bad.describe()]
