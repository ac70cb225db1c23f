"""The regression rule: each figure against the median of the last passing runs.

Why this rule: a gate run is noisy (a shared machine, a cold disk), so one earlier run is
no baseline. The baseline of a figure is the median of the last `Rule.runs` passing runs
with the same fingerprint except the worker binary (at least `Rule.min_runs` of them);
the band around it is the larger of `mad_k` robust standard deviations of those runs
(1.4826 x MAD) and `min_rel` of the baseline, so neither a noisy history nor a perfectly
quiet one raises false alarms. Worse than the band is a regression (the gate item fails,
naming the figure, the baseline, the band and the runs); better than the band is an
improvement (reported, never failed). Without enough history a run only records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llorch_harness.perf.figures import SPECS, Figure, format_value, median_mad

MAD_TO_SIGMA = 1.4826  # MAD of normal noise times this is its standard deviation


@dataclass(frozen=True)
class Rule:
    runs: int = 5  # N: the last N passing runs make the baseline
    min_runs: int = 3  # fewer than this: no baseline, the run only records
    mad_k: float = 3.0  # band: mad_k robust sigmas ...
    min_rel: float = 0.20  # ... but never narrower than this share of the baseline

    def describe(self) -> str:
        return (f"median of the last {self.runs} passing runs (at least {self.min_runs}); band "
                f"max({self.mad_k:g} x {MAD_TO_SIGMA} x MAD, {self.min_rel:.0%})")


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
        return (f"{self.label} {format_value(self.name, self.value)} is {change:+.0%}, "
                f"{word} its baseline {format_value(self.name, self.baseline)} "
                f"± {format_value(self.name, self.band)} (median of runs {runs}; "
                f"MAD {format_value(self.name, self.mad)})")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "value": self.value,
                "verdict": self.verdict, "baseline": self.baseline, "band": self.band,
                "mad": self.mad, "change": self.change, "runs": list(self.runs),
                "note": self.note}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Comparison:
        return cls(str(raw["name"]), raw.get("value"), str(raw.get("verdict")),
                   raw.get("baseline"), raw.get("band"), raw.get("mad"),
                   tuple(int(r) for r in raw.get("runs") or ()), raw.get("note"))


@dataclass(frozen=True)
class PerfVerdict:
    """The check of one record: fail on any regression, pass when something was compared,
    recorded when nothing could be."""

    status: str  # fail | pass | recorded
    comparisons: list[Comparison]
    baseline_runs: list[dict[str, Any]] = field(default_factory=list)
    rule: Rule = DEFAULT_RULE

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
        tail = f" [not measured: {missing}]" if missing else ""
        if self.status == "fail":
            head = "; ".join(c.describe() for c in self.regressions)
            return f"performance regression: {head} [baseline runs: {self.runs_line()}]"
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
                         "mad_k": self.rule.mad_k, "min_rel": self.rule.min_rel},
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
    verdict = "regression" if worse > band else "improvement" if -worse > band else "ok"
    return Comparison(name, fig.value, verdict, base, band, mad,
                      tuple(sorted(r for r, _ in pairs)))


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
