"""The regression rule on histories read back from a real store: the median of the last N
passing runs, the MAD band with its floor, the rank test against the baseline runs' samples,
regressions fail naming what, improvements pass."""

from __future__ import annotations

import pytest

from llorch_harness.perf.baseline import MAD_TO_SIGMA, Rule, compare
from llorch_harness.perf.figures import Figure
from llorch_harness.perf.store import NewRun, ResultsStore

SPREAD = (0.98, 0.99, 1.0, 1.01, 1.02)  # five samples around each value


def _figs(spread: tuple[float, ...] = SPREAD, **values: float | None) -> dict[str, Figure]:
    return {n: Figure(n, v, 0.0, 5, samples=tuple(v * k for k in spread)) if v is not None
            else Figure(n, None, None, 0, "at once") for n, v in values.items()}


@pytest.fixture
def history(tmp_path):
    """Write runs with the given s_per_token/load_s values; return them as the baseline query
    gives them (newest first)."""
    def make(per_token: list[float], load: list[float] | None = None,
             spread: tuple[float, ...] = SPREAD):
        with ResultsStore.open(tmp_path / "r.sqlite") as store:
            for i, v in enumerate(per_token):
                figs = _figs(spread, s_per_token=v,
                             load_s=(load or [1.0] * len(per_token))[i], ttft_s=None)
                store.record(NewRun(f"run-{i}", "pool", "tiny-qwen", "cpu", "k", f"bin{i}",
                                    {}, "pass", figs))
                store.set_gate_verdict(f"run-{i}", "pass")
            return store.baseline_runs("k", exclude_run_key="now", limit=Rule().runs)
    return make


def test_a_slower_build_is_a_regression_naming_figure_baseline_band_and_runs(history):
    runs = history([0.010, 0.011, 0.0105, 0.0102, 0.0108, 0.050])  # the oldest is left out
    v = compare(_figs(s_per_token=0.030, load_s=1.0, ttft_s=None), runs)
    assert v.status == "fail"
    (reg,) = v.regressions
    assert reg.name == "s_per_token" and reg.runs == (2, 3, 4, 5, 6)
    assert reg.baseline == pytest.approx(0.0108) and reg.band == pytest.approx(0.2 * 0.0108)
    msg = v.message()
    for text in ("request time per generated token 30 ms/token", "+178%", "worse than",
                 "baseline 10.8 ms/token", "± 2.16 ms/token", "runs #2, #3, #4, #5, #6",
                 "binary bin1", "Mann-Whitney p="):
        assert text in msg, msg
    assert reg.p_value is not None and reg.p_value < 0.05  # one slow run (0.050) among five


def test_noise_within_the_band_passes_and_unavailable_figures_are_not_compared(history):
    runs = history([0.010, 0.012, 0.011, 0.0095, 0.0105])
    v = compare(_figs(s_per_token=0.0125, load_s=1.1, ttft_s=None), runs)
    assert v.status == "pass" and not v.regressions
    verdicts = {c.name: c.verdict for c in v.comparisons}
    assert verdicts == {"load_s": "ok", "ttft_s": "unavailable", "s_per_token": "ok"}


def test_a_noisy_history_widens_the_band_beyond_the_floor(history):
    runs = history([0.010, 0.016, 0.010, 0.016, 0.013])  # MAD 0.003
    c = {c.name: c for c in compare(_figs(s_per_token=0.020), runs).comparisons}["s_per_token"]
    assert c.mad == pytest.approx(0.003)
    assert c.band == pytest.approx(3.0 * MAD_TO_SIGMA * 0.003)  # > 20% of 0.013
    assert c.verdict == "ok"  # +54%, but within what this history's noise allows


def test_an_improvement_is_reported_not_failed(history):
    runs = history([0.010] * 5, load=[2.0] * 5)
    v = compare(_figs(s_per_token=0.010, load_s=0.9), runs)
    assert v.status == "pass" and [c.name for c in v.improvements] == ["load_s"]
    assert "improved: worker load time (spawn to ready) 900 ms is -55%, better than" \
        in v.message()


def test_without_enough_history_a_run_only_records(history):
    v = compare(_figs(s_per_token=1.0, load_s=100.0), history([0.010, 0.010]))
    assert v.status == "recorded"
    assert {c.verdict for c in v.comparisons} == {"no baseline"}
    assert "fewer than 3 earlier passing runs with this fingerprint (2 so far)" in v.message()
    assert compare(_figs(s_per_token=1.0), []).status == "recorded"


def test_shown_figures_are_never_judged(history):
    runs = history([0.010] * 5)
    v = compare({"tokens_per_sec": Figure("tokens_per_sec", 1.0, 0.0, 5)}, runs)
    assert v.status == "recorded" and v.comparisons[0].verdict == "not judged"


def test_verdict_round_trips_through_json(history):
    v = compare(_figs(s_per_token=0.03), history([0.010] * 5))
    doc = v.to_json()
    assert doc["status"] == "fail" and doc["rule"] == {
        "runs": 5, "min_runs": 3, "mad_k": 3.0, "min_rel": 0.2, "alpha": 0.05,
        "test": "one-sided Mann-Whitney U"}
    assert doc["comparisons"][0]["verdict"] == "regression"
    assert [r["id"] for r in doc["baseline_runs"]] == [1, 2, 3, 4, 5]


def test_beyond_the_band_but_not_significant_is_noise_not_a_regression(history):
    """The median moved past the band, but this run's samples mix with the baseline's (each
    baseline run's own requests ranged from 0.6x to 1.6x its median): not a slower build."""
    runs = history([0.010] * 5, spread=(0.6, 0.8, 1.0, 1.3, 1.6))
    noisy = Figure("s_per_token", 0.0125, 0.002, 5,
                   samples=(0.008, 0.011, 0.0125, 0.013, 0.016))
    v = compare({"s_per_token": noisy}, runs)
    (c,) = v.comparisons
    assert v.status == "pass" and c.verdict == "ok", v.message()
    assert c.p_value is not None and c.p_value >= 0.05
    assert "not significant" in (c.note or "") and "noise" in (c.note or "")


def test_significant_but_within_the_band_passes(history):
    runs = history([0.010] * 5)
    v = compare(_figs(s_per_token=0.0115), runs)  # every sample above, but +15% < 20%
    assert v.status == "pass" and v.comparisons[0].verdict == "ok"


def test_without_samples_beyond_the_band_is_never_a_failure(history):
    """Records older than perf/2 kept no samples: no rank test, so no regression."""
    runs = history([0.010] * 5)
    v = compare({"s_per_token": Figure("s_per_token", 0.03, 0.0, 5)}, runs)
    (c,) = v.comparisons
    assert v.status == "pass" and c.verdict == "ok"
    assert "needed each for the rank test" in (c.note or "")
