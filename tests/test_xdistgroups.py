"""Device groups under xdist (plugin/xdistgroups.py): the groups the workers write are the
scheduler's units, whatever pytest does with xdist's own node-id suffix."""

from __future__ import annotations

import pytest

from llorch_harness.plugin import xdistgroups

pytest_plugins = ["pytester"]


def test_groups_written_by_workers_are_read_back(tmp_path):
    xdistgroups.write_groups(tmp_path, "gw0", {"t.py::a[cpu]": "cpu"})
    xdistgroups.write_groups(tmp_path, "gw1", {"t.py::a[cpu]": "cpu", "t.py::b[cuda]": "cuda0"})
    (tmp_path / "gw2.json").write_text("{half")  # a worker that died mid-write is skipped
    assert xdistgroups.read_groups(tmp_path) == {"t.py::a[cpu]": "cpu", "t.py::b[cuda]": "cuda0"}


def test_one_device_runs_on_one_xdist_worker(pytester: pytest.Pytester, monkeypatch):
    """Real xdist, two workers: every test of the cpu group runs on the same worker."""
    for spec in ("LLORCH_LAB", "LLORCH_GATE_MODEL", "LLORCH_GATE_MODELS"):
        monkeypatch.delenv(spec, raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    pytester.makeconftest("llorch_gate_suite = True\n")
    body = "\n".join(
        f"@pytest.mark.cpu\n@pytest.mark.xdist_group('cpu')\ndef test_{n}(worker_id):\n"
        f"    print('RAN', '{n}', worker_id)\n" for n in range(12))
    pytester.makepyfile(test_a="import pytest\n\n" + body,
                        test_b="import pytest\n\n" + body.replace("test_", "test_b"))
    res = pytester.runpytest_subprocess("-n", "2", "-s", "-p", "no:cacheprovider",
                                        "--lab", "embedded", "-v")
    assert res.ret == 0, res.stdout.str()
    workers = {ln.split()[0] for ln in res.stdout.lines
               if ln.startswith("[gw") and "PASSED" in ln}
    assert len(workers) == 1, res.stdout.str()
