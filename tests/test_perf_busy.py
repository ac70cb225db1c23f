"""The performance item on a busy and on a quiet host, with real reference workers and the
item's own logic (`perf.session.check_measured`: watch the host, wait for quiet, judge,
confirm, record): a CPU hog on every core beside ten runs of an unchanged build gives no
failure and no baseline; a build 4x slower beside the hog never passes; on a quiet host a
build 4x and one 1.5x slower fail; the real gate beside the hog shows "could not check"
with the host's conditions in the terminal, the gate JSON, the store and the report.

The quiet-host test runs where other jobs may share the machine (CI runners, a workstation):
a build whose measurement the harness itself found busy is accepted as "could not check"
only with the busy conditions it recorded; every build measured on a quiet host must FAIL.
When no quiet measurement could be had at all, the test says so as a skip.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from llorch_harness.perf.baseline import BUSY_PREFIX, Rule
from llorch_harness.perf.figures import Figure
from llorch_harness.perf.fingerprint import DEFAULT_PROTOCOL, baseline_key, fingerprint
from llorch_harness.perf.hostload import BusyPolicy, HostConditions, HostWindow, wait_for_quiet
from llorch_harness.perf.measure import measure
from llorch_harness.perf.session import Attempt, PerfOutcome, check_measured, record_and_check
from llorch_harness.perf.store import ResultsStore
from tests import perfhog
from tests.test_perf_gate import PERF_ITEM, run_perf_gate, tiny_pool  # noqa: F401 (fixture)

HOGGED_RUNS = 10
SHORT_WAIT = BusyPolicy(quiet_wait_s=1.0, probe_s=0.5)  # beside a hog: quiet never comes


def _fp(binary: str) -> dict[str, Any]:
    return fingerprint(pool="p", lab="embedded", model="tiny-qwen", backend="cpu",
                       device={"name": "cpu"}, worker_kind="reference", binary_sha256=binary,
                       model_revision=None, model_files={}, harness_version="t",
                       protocol=DEFAULT_PROTOCOL.label())


class Build:
    """The reference worker as one build: healthy, or slower: each request's handling `slow`
    times as long, or `token_delay` seconds more per generated token."""

    def __init__(self, paths: Any, slow: float | None = None,
                 token_delay: float | None = None) -> None:
        self.paths = paths
        faults = ",".join([*([f"slow={slow:g}"] if slow else []),
                           *([f"token_delay={token_delay!r}"] if token_delay else [])])
        self.env = {"LLORCH_REF_FAULTS": faults} if faults else None
        self.fp = _fp(("5" if faults else "b") * 64)

    def spawn(self, i: int) -> Any:
        from llorch_harness.pool import workers

        return workers.spawn_worker(self.paths, "cpu", "tiny-qwen", worker="reference", port=0,
                                    worker_id=f"perf{i}", die_with_parent=True,
                                    extra_env=self.env)

    def figures(self) -> dict[str, Any]:
        return measure(self.spawn, lambda h: h.stop(), "cpu", DEFAULT_PROTOCOL).figures()

    def take(self, policy: BusyPolicy) -> Attempt:
        window = HostWindow(policy, "cpu")
        with window.watching():
            figures = self.figures()
        return Attempt(figures, window.conditions)

    def check(self, db: Path, key: str, policy: BusyPolicy) -> PerfOutcome:
        return check_measured(db, key, self.fp, lambda: self.take(policy),
                              lambda: wait_for_quiet(policy, "cpu"))


def _finish(db: Path, out: PerfOutcome, key: str) -> None:
    """What the run's end does: a run whose item could not check ends INCOMPLETE."""
    with ResultsStore.open(db) as store:
        store.set_gate_verdict(key, "incomplete" if out.busy else "pass")


def _assert_busy(out: PerfOutcome) -> None:
    last = out.attempts[-1]
    assert out.verdict.status == "busy", out.verdict.message()
    assert last.host is not None and last.host.busy and last.host.busy_reasons
    msg = out.verdict.message()
    assert msg.startswith(f"{BUSY_PREFIX}host busy (") and "the figures, not judged:" in msg
    assert "request time per generated token" in msg  # with the figures
    assert "[host: other processes used" in msg


@pytest.mark.slow
def test_beside_a_cpu_hog_ten_runs_never_fail_nor_become_baselines(tiny_pool):  # noqa: F811
    db = tiny_pool.root / "results.sqlite"
    healthy = Build(tiny_pool)
    for i in range(Rule().min_runs):  # a history, measured before the hog starts
        out = record_and_check(db, f"base-{i}", healthy.fp, healthy.figures())
        _finish(db, out, f"base-{i}")
    bkey = baseline_key(healthy.fp)
    with ResultsStore.open(db) as store:
        before = [r.id for r in store.baseline_runs(bkey, "next", 5)]
    assert len(before) == Rule().min_runs

    outcomes = []
    with perfhog.hog():
        for i in range(HOGGED_RUNS):
            out = healthy.check(db, f"hog-{i}", SHORT_WAIT)
            _finish(db, out, f"hog-{i}")
            outcomes.append(out)
        slow = Build(tiny_pool, slow=4).check(db, "hog-slow", SHORT_WAIT)
    assert [o.verdict.status for o in outcomes].count("fail") == 0
    for out in [*outcomes, slow]:
        _assert_busy(out)
        assert out.attempts[0].waited_s >= SHORT_WAIT.quiet_wait_s  # it waited, in vain
    assert slow.verdict.status != "pass"
    with ResultsStore.open(db) as store:  # busy runs never become baselines
        assert [r.id for r in store.baseline_runs(bkey, "next", 5)] == before
        rec = store.runs(run_key="hog-0")[0]
    assert rec.status == "busy" and rec.check is not None
    host = rec.check["host"][0]["host"]
    assert host["busy"] and host["others_share"] > SHORT_WAIT.cpu_share
    assert len(rec.check["samples"]["s_per_token"]) >= 5  # the figures are kept


@pytest.mark.slow
def test_on_a_quiet_host_a_build_4x_or_1_5x_slower_fails(tiny_pool):  # noqa: F811
    """"F times slower" by the figure the item judges: the slower build sleeps (F - 1) x the
    healthy runs' median per generated token (`token_delay`), so its request time per token
    as the client times it is F x the baseline's whatever the HTTP layer costs."""
    db = tiny_pool.root / "results.sqlite"
    policy = BusyPolicy(quiet_wait_s=10.0)  # the default share (25% of the cores)
    healthy = Build(tiny_pool)
    quiet: list[float] = []  # the healthy build's figure, quiet runs only (the baseline)
    for i in range(2 * Rule().runs):
        out = healthy.check(db, f"base-{i}", policy)
        _finish(db, out, f"base-{i}")
        assert out.verdict.status in ("recorded", "pass", "busy"), out.verdict.message()
        if not out.busy:
            quiet.append(out.figures["s_per_token"].value)
        if len(quiet) == Rule().runs:
            break
    if len(quiet) < Rule().min_runs:
        pytest.skip(f"the host stayed busy: {len(quiet)} of {i + 1} healthy measurements were "
                    f"quiet ({out.attempts[-1].host.describe() if out.attempts[-1].host else '?'})"
                    "; no baseline, so a slower build's FAIL could not be shown")
    per_token = statistics.median(quiet)
    history = ", ".join(f"{v * 1e3:.3f}" for v in quiet)
    shown, noisy = [], []
    for factor in (4.0, 1.5):
        slower = Build(tiny_pool, token_delay=(factor - 1.0) * per_token)
        out = slower.check(db, f"slow-{factor:g}", policy)
        if out.busy:  # measured busy by the harness itself: could not check, never a pass
            _assert_busy(out)
            continue
        (c,) = [c for c in out.verdict.comparisons if c.name == "s_per_token"]
        seen = (f"{factor:g}x slower: {c.describe()}; the healthy build's quiet runs "
                f"{history} ms/token")
        assert c.value is not None and c.baseline is not None and c.band is not None, seen
        assert c.value > c.baseline * (1 + (factor - 1) / 2), seen  # the build IS slower
        if factor < 4 and c.band >= (factor - 1) * c.baseline / 2:
            # the band is the history's own noise: a history whose band is half the change
            # or more cannot show a 1.5x change for sure (a 4x one it must, always)
            noisy.append(seen)
            continue
        assert out.verdict.status == "fail", seen
        assert c.verdict == "regression", seen
        assert c.p_value is not None and c.p_value < Rule().alpha, seen
        assert out.measurements >= 2  # a suspected regression is measured again
        shown.append(factor)
    if not shown:
        pytest.skip("neither slower build could be judged: "
                    + ("; ".join(noisy) if noisy else "the host was busy while both were "
                       "measured (could not check, host busy, both times, as it must be)"))


@pytest.mark.slow
def test_the_gate_beside_a_cpu_hog_could_not_check_a_4x_slower_build(tmp_path):
    """Through the real gate: the item is could not check (ERROR) with the host's
    conditions and the figures, the run is INCOMPLETE, never FAIL and never PASS."""
    pool = tmp_path / "pool"
    pool.mkdir()
    with perfhog.hog():
        res, doc = run_perf_gate(pool, tmp_path / "run", "--perf-quiet-wait", "1",
                                 "--html", str(tmp_path / "r.html"), faults="slow=4")
    out = res.stdout + res.stderr
    item = {f"{r['section']} / {r['item']}": r for r in doc["checklist"]}[PERF_ITEM]
    assert item["status"] == "error", out[-6000:]
    assert doc["verdict"] == "incomplete" and "CP3 gate verdict: INCOMPLETE" in out
    assert "could not check: host busy (other processes used" in out
    (rec,) = doc["performance"]
    assert rec["status"] == "busy" and rec["gate_verdict"] == "incomplete"
    hosts = rec["check"]["host"]
    assert hosts[-1]["host"]["busy"] and hosts[-1]["waited_for_quiet_s"] >= 1.0
    assert {f["name"] for f in rec["figures"] if f["value"] is not None} >= {
        "s_per_token", "load_s"}
    page = (tmp_path / "r.html").read_text()
    assert "host busy" in page and "other processes used" in page


def test_the_slow_fault_names_a_factor():
    from llorch_harness.lab.refworker.faults import FaultSpecError, parse_faults

    f = parse_faults("slow=1.5")
    assert f.slow == 1.5 and f.active == ["slow=1.5"] and f.slow_decode == 0
    with pytest.raises(FaultSpecError, match="needs a factor >= 1"):
        parse_faults("slow=0.5")
    t = parse_faults("token_delay=0.0005")
    assert t.token_delay == 0.0005 and t.active == ["token_delay=0.0005"] and t.slow == 0
    with pytest.raises(FaultSpecError, match="needs a number of seconds >= 0"):
        parse_faults("token_delay=-1")


# ------------------------------------------------------------------ the decision, fast


def _host(busy: bool) -> HostConditions:
    share = 0.9 if busy else 0.02
    return HostConditions(10.0, 2, share * 20.0, 5.0, (1.0, 1.0, 1.0), None, None, [],
                          [f"other processes used {share * 2:.2f} of 2 cores"] if busy else [])


def _figs(v: float) -> dict[str, Figure]:
    return {"s_per_token": Figure("s_per_token", v, 0.0, 5,
                                  samples=tuple(v * k for k in (0.98, 0.99, 1, 1.01, 1.02)))}


def _history(db: Path, fp: dict[str, Any]) -> None:
    for i in range(Rule().min_runs):
        record_and_check(db, f"h{i}", fp, _figs(0.010), host=_host(False))
        with ResultsStore.open(db) as store:
            store.set_gate_verdict(f"h{i}", "pass")


def _script(*steps: tuple[float, bool]) -> Any:
    todo = list(steps)
    return lambda: Attempt(_figs(todo[0][0]), _host(todo.pop(0)[1]))


def test_a_busy_host_is_waited_for_and_measured_again(tmp_path):
    db, fp = tmp_path / "r.sqlite", _fp("b" * 64)
    _history(db, fp)
    waits = []

    def wait() -> tuple[bool, HostConditions | None, float]:
        waits.append(1)
        return True, _host(False), 4.0

    out = check_measured(db, "now", fp, _script((0.030, True), (0.0101, False)), wait)
    assert waits == [1] and out.measurements == 2 and out.verdict.status == "pass"
    assert out.attempts[1].waited_s == 4.0 and out.attempts[0].busy


def test_a_host_that_stays_busy_is_could_not_check_and_no_baseline(tmp_path):
    db, fp = tmp_path / "r.sqlite", _fp("b" * 64)
    _history(db, fp)
    out = check_measured(db, "now", fp, _script((0.050, True)),
                         lambda: (False, _host(True), 30.0))
    _assert_busy(out)
    assert "waited 30 s for quiet in vain" in out.verdict.message()
    assert "+400%" in out.verdict.message()  # the figures, as measured, not judged
    with ResultsStore.open(db) as store:
        store.set_gate_verdict("now", "incomplete")
        assert "now" not in {r.run_key for r in store.baseline_runs(baseline_key(fp), "x", 5)}
        (rec,) = store.runs(run_key="now")
    assert rec.status == "busy" and rec.check is not None and rec.check["host"][0]["host"]["busy"]


def test_a_regression_is_confirmed_on_a_quiet_host_and_never_failed_on_a_busy_one(tmp_path):
    db, fp = tmp_path / "r.sqlite", _fp("b" * 64)
    _history(db, fp)
    never = lambda: (False, _host(True), 1.0)  # noqa: E731
    out = check_measured(db, "slow", fp, _script((0.030, False), (0.029, False)), never)
    assert out.verdict.status == "fail" and out.measurements == 2
    out = check_measured(db, "burst", fp, _script((0.030, False), (0.030, True)), never)
    assert out.verdict.status == "busy" and out.measurements == 2  # never FAIL when busy
