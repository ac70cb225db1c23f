"""The regression rule: each figure against the median of the last passing runs.

Why this rule: a gate run is noisy (a shared machine, a cold disk), so one earlier run is
no baseline. The baseline of a figure is the median of the last `Rule.runs` passing runs
with the same fingerprint except the worker binary (at least `Rule.min_runs` of them);
the band around it is the larger of `mad_k` robust standard deviations of those runs
(1.4826 x MAD) and `min_rel` of the baseline, so neither a noisy history nor a perfectly
quiet one raises false alarms. Beyond the band is not enough on its own: this run's
samples (at least 5 per figure) must also rank above the baseline runs' pooled samples in a
one-sided Mann-Whitney U test at p < `Rule.alpha` (0.05), so a difference that a handful of
noisy samples could make by chance is not called a regression. Both, and only both: worse
than the band and significant is a regression (the gate item fails, naming the figure, the
baseline, the band, p and the runs); better in the same way is an improvement (reported,
never failed). Without enough history a run only records.

Why Mann-Whitney U: it compares ranks, so it assumes no distribution (timings are skewed,
with a long tail from the host) and one outlier moves it by one rank; it works on few
samples (an exact test without ties). Why the band as well: the pooled baseline samples
ignore how runs differ from each other, so on its own the test would call a small shift
between two runs significant; the band (from the runs' medians) says how large a change
must be to matter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llorch_harness.perf.figures import (
    SPECS,
    Figure,
    format_value,
    median_mad,
    samples_from,
)

BUSY_PREFIX = "could not check: "  # a busy record's message; the checklist adds its own
MAD_TO_SIGMA = 1.4826  # MAD of normal noise times this is its standard deviation


@dataclass(frozen=True)
class Rule:
    runs: int = 5  # N: the last N passing runs make the baseline
    min_runs: int = 3  # fewer than this: no baseline, the run only records
    mad_k: float = 3.0  # band: mad_k robust sigmas ...
    min_rel: float = 0.20  # ... but never narrower than this share of the baseline
    alpha: float = 0.05  # one-sided Mann-Whitney U against the baseline runs' samples
    min_test_samples: int = 5  # fewer samples on either side: the band alone decides

    def describe(self) -> str:
        return (f"median of the last {self.runs} passing runs (at least {self.min_runs}); band "
                f"max({self.mad_k:g} x {MAD_TO_SIGMA} x MAD, {self.min_rel:.0%}); beyond it "
                f"and one-sided Mann-Whitney U p < {self.alpha:g} against the runs' samples")


DEFAULT_RULE = Rule()


@dataclass(frozen=True)
class Comparison:
    """One figure of this run against its baseline."""

    name: str
    value: float | None
    verdict: str  # regression | improvement | ok | no baseline | unavailable | not judged
    baseline: float | None = None
    band: float | None = None
    mad: float | None = None
    runs: tuple[int, ...] = ()
    note: str | None = None
    p_value: float | None = None  # one-sided Mann-Whitney U in the direction of the change

    @property
    def label(self) -> str:
        return SPECS[self.name].label if self.name in SPECS else self.name

    @property
    def change(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return (self.value - self.baseline) / abs(self.baseline)

    def describe(self) -> str:
        """One line a person can act on."""
        if self.verdict == "unavailable":
            return f"{self.label}: unavailable ({self.note or 'not measured'})"
        if self.verdict in ("no baseline", "not judged"):
            why = f": {self.note}" if self.note else ""
            return f"{self.label} {format_value(self.name, self.value)} ({self.verdict}{why})"
        runs = ", ".join(f"#{r}" for r in self.runs)
        change = self.change or 0.0
        word = {"regression": "worse than", "improvement": "better than"}.get(self.verdict,
                                                                              "within")
        test = f"; Mann-Whitney p={self.p_value:.2g}" if self.p_value is not None else ""
        note = f"; {self.note}" if self.note else ""
        return (f"{self.label} {format_value(self.name, self.value)} is {change:+.0%}, "
                f"{word} its baseline {format_value(self.name, self.baseline)} "
                f"± {format_value(self.name, self.band)} (median of runs {runs}; "
                f"MAD {format_value(self.name, self.mad)}{test}{note})")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "value": self.value,
                "verdict": self.verdict, "baseline": self.baseline, "band": self.band,
                "mad": self.mad, "change": self.change, "runs": list(self.runs),
                "note": self.note, "p_value": self.p_value}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Comparison:
        p = raw.get("p_value")
        return cls(str(raw["name"]), raw.get("value"), str(raw.get("verdict")),
                   raw.get("baseline"), raw.get("band"), raw.get("mad"),
                   tuple(int(r) for r in raw.get("runs") or ()), raw.get("note"),
                   float(p) if isinstance(p, int | float) and not isinstance(p, bool) else None)


@dataclass(frozen=True)
class PerfVerdict:
    """The check of one record: fail on any regression, pass when something was compared,
    recorded when nothing could be, busy when the host was too busy for the figures to be
    judged (never a failure, never a pass, never a baseline)."""

    status: str  # fail | pass | recorded | busy
    comparisons: list[Comparison]
    baseline_runs: list[dict[str, Any]] = field(default_factory=list)
    rule: Rule = DEFAULT_RULE
    host: str | None = None  # the host's conditions over the measurement, for people
    busy: str | None = None  # why the host was too busy (status busy)

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict == "regression"]

    @property
    def improvements(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict == "improvement"]

    def runs_line(self) -> str:
        """Where the baseline came from: record ids, dates and worker binaries."""
        if not self.baseline_runs:
            return "no earlier passing run with this fingerprint"
        return "; ".join(f"#{r['id']} {r['recorded_at']} binary {str(r.get('binary') or '?')[:12]}"
                         for r in self.baseline_runs)

    def unmeasured(self) -> str:
        """The judged figures that could not be measured, grouped by reason."""
        why: dict[str, list[str]] = {}
        for c in self.comparisons:
            if c.verdict == "unavailable" and c.name in SPECS and SPECS[c.name].checked:
                why.setdefault(c.note or "not measured", []).append(c.label)
        return "; ".join(f"{', '.join(labels)}: {note}" for note, labels in why.items())

    def message(self) -> str:
        missing = self.unmeasured()
        tail = (f" [not measured: {missing}]" if missing else "") + (
            f" [host: {self.host}]" if self.host else "")
        if self.status == "busy":
            figs = "; ".join(c.describe() for c in self.comparisons
                             if c.verdict not in ("unavailable", "not judged"))
            return (f"{BUSY_PREFIX}host busy ({self.busy}); the figures, not judged: "
                    f"{figs or 'none'}{tail}")
        if self.status == "fail":
            head = "; ".join(c.describe() for c in self.regressions)
            return (f"performance regression: {head} [baseline runs: {self.runs_line()}]"
                    + tail)
        if self.status == "recorded":
            return (f"recorded only: fewer than {self.rule.min_runs} earlier passing runs with "
                    f"this fingerprint ({len(self.baseline_runs)} so far){tail}")
        better = "; ".join(c.describe() for c in self.improvements)
        judged = sum(c.verdict in ("ok", "improvement") for c in self.comparisons)
        return (f"no regression in {judged} figure(s) against runs {self.runs_line()}"
                + (f"; improved: {better}" if better else "") + tail)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message(),
                "rule": {"runs": self.rule.runs, "min_runs": self.rule.min_runs,
                         "mad_k": self.rule.mad_k, "min_rel": self.rule.min_rel,
                         "alpha": self.rule.alpha, "test": "one-sided Mann-Whitney U"},
                "baseline_runs": self.baseline_runs,
                "comparisons": [c.to_json() for c in self.comparisons]}


def compare_figure(fig: Figure | None, name: str, history: Sequence[Any],
                   rule: Rule) -> Comparison:
    """One figure against the given passing runs (newest first, `StoredRun`-like)."""
    spec = SPECS.get(name)
    if fig is None or not fig.available:
        return Comparison(name, None, "unavailable", note=fig.note if fig else "not measured")
    assert fig.value is not None
    if spec is None or not spec.checked:
        return Comparison(name, fig.value, "not judged")
    pairs = [(run.id, run.figures[name].value) for run in history
             if name in run.figures and run.figures[name].value is not None]
    if len(pairs) < rule.min_runs:
        return Comparison(name, fig.value, "no baseline",
                          note=f"{len(pairs)} earlier passing run(s) with this figure, "
                               f"{rule.min_runs} needed")
    base, mad = median_mad([v for _, v in pairs])
    band = max(rule.mad_k * MAD_TO_SIGMA * mad, rule.min_rel * abs(base))
    worse = fig.value - base if spec.better == "lower" else base - fig.value
    runs = tuple(sorted(r for r, _ in pairs))
    if abs(worse) <= band:
        return Comparison(name, fig.value, "ok", base, band, mad, runs)
    pooled = [x for run in history for x in run_samples(run, name)]
    # "worse" for a lower-is-better figure means this run's samples are greater
    greater = (worse > 0) == (spec.better == "lower")
    p = rank_test(fig.samples, pooled, greater, rule.min_test_samples)
    verdict = "regression" if worse > 0 else "improvement"
    if p is None:  # records without their samples (older than perf/2): never a failure
        return Comparison(name, fig.value, "ok", base, band, mad, runs,
                          note=f"beyond the band, but {len(fig.samples)} sample(s) here and "
                               f"{len(pooled)} in the baseline runs: {rule.min_test_samples} "
                               "needed each for the rank test")
    if p >= rule.alpha:
        return Comparison(name, fig.value, "ok", base, band, mad, runs,
                          note=f"beyond the band but not significant (p={p:.2g} >= "
                               f"{rule.alpha:g}): noise", p_value=p)
    return Comparison(name, fig.value, verdict, base, band, mad, runs, p_value=p)


def run_samples(run: Any, name: str) -> tuple[float, ...]:
    """A stored run's samples of one figure: on the figure, else in its check's `samples`
    (where the store keeps them: `perf/session.py`)."""
    fig = run.figures.get(name)
    if fig is not None and fig.samples:
        return tuple(fig.samples)
    kept = (getattr(run, "check", None) or {}).get("samples")
    return samples_from(kept.get(name)) if isinstance(kept, dict) else ()


def rank_test(here: Sequence[float], baseline: Sequence[float], greater: bool,
              min_samples: int = 5) -> float | None:
    """One-sided Mann-Whitney U p-value that `here` ranks above (`greater`) or below the
    baseline samples; None with too few samples on either side."""
    if len(here) < min_samples or len(baseline) < min_samples:
        return None
    from scipy.stats import mannwhitneyu  # lazy: only a run that left its band pays the import

    res = mannwhitneyu(list(here), list(baseline),
                       alternative="greater" if greater else "less", method="auto")
    return float(res.pvalue)


def compare(figures: Mapping[str, Figure], history: Sequence[Any],
            rule: Rule = DEFAULT_RULE) -> PerfVerdict:
    """Every figure of this run against `history`: the baseline store's passing runs of the
    same baseline key, newest first (only the first `rule.runs` are used)."""
    used = list(history)[: rule.runs]
    comparisons = [compare_figure(figures.get(name), name, used, rule) for name in SPECS
                   if name in figures]
    verdicts = {c.verdict for c in comparisons}
    status = ("fail" if "regression" in verdicts
              else "pass" if verdicts & {"ok", "improvement"} else "recorded")
    runs = [{"id": r.id, "recorded_at": r.recorded_at, "binary": r.binary_sha256}
            for r in sorted(used, key=lambda r: r.id)]
    return PerfVerdict(status, comparisons, runs, rule)
