"""The canary judge: is a release's canary worse than its baseline, signal by signal?

Canary and baseline are read from the same live traffic over the same window
(Prometheus counters and histograms labelled by version), so the judge compares
two samples of requests:

- a *ratio* (schema-valid, refusals, safety flags, errors, fallbacks) is a count
  of requests out of a total: a one-sided two-proportion z-test (Fisher's exact
  test when events are too few for the normal approximation);
- a *distribution* (output tokens, cost, TTFT, latency, sampled quality) is a
  histogram: a one-sided Mann-Whitney rank test computed on the buckets (every
  request in a bucket is a tie), with the tie-corrected variance.

A signal *fails* only when both hold: its change in the worse direction is
larger than the threshold (relative: mean, p95 or rate, against the baseline's),
and the test says the difference is not noise (p < alpha). Fewer requests than
``min_samples`` on either side is *not enough data*, never a pass. A failing
critical signal asks for a rollback; any other failure holds the release.

Pure computation with the numbers shown, so a Slack table, the CLI and an
incident's evidence all say exactly why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bot.playbook.canary_thresholds import Threshold

Outcome = Literal["pass", "fail", "not enough data"]


@dataclass(frozen=True)
class SignalSpec:
    kind: Literal["ratio", "distribution"]
    worse: Literal["higher", "lower"]
    measure: Literal["rate", "mean", "p95"]
    means: str  # what a person reads in the table
    incident_class: str  # the class of the incident a failure opens


SIGNALS: dict[str, SignalSpec] = {
    "output_tokens": SignalSpec("distribution", "higher", "mean", "output tokens per request",
                                "runaway_cost"),
    "cost_per_request": SignalSpec("distribution", "higher", "mean", "cost per request",
                                   "runaway_cost"),
    "schema_valid": SignalSpec("ratio", "lower", "rate", "share of answers that parse against "
                               "the route's schema", "malformed_output"),
    "refusal": SignalSpec("ratio", "higher", "rate", "share of answers that refuse",
                          "quality_degradation"),
    "safety_flag": SignalSpec("ratio", "higher", "rate", "share of answers a safety filter "
                              "flagged", "safety_regression"),
    "ttft_p95": SignalSpec("distribution", "higher", "p95", "time to first token, p95",
                           "latency_spike"),
    "latency_p95": SignalSpec("distribution", "higher", "p95", "end-to-end latency, p95",
                              "latency_spike"),
    "error": SignalSpec("ratio", "higher", "rate", "share of requests that failed",
                        "provider_errors"),
    "fallback": SignalSpec("ratio", "higher", "rate", "share of requests served by a "
                           "fallback", "provider_errors"),
    "quality_score": SignalSpec("distribution", "lower", "mean", "sampled quality score",
                                "quality_degradation"),
}


@dataclass(frozen=True)
class Ratio:
    hits: float
    total: float

    @property
    def n(self) -> float:
        return self.total

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else 0.0


@dataclass(frozen=True)
class Histogram:
    """Prometheus's cumulative buckets: ``(le, count)`` in ascending ``le``, the last one
    ``+Inf`` (its count is the total)."""

    buckets: Sequence[tuple[float, float]]

    @property
    def n(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def counts(self) -> list[float]:
        """Requests per bucket (not cumulative)."""
        out, below = [], 0.0
        for _, cumulative in self.buckets:
            out.append(max(0.0, cumulative - below))
            below = max(below, cumulative)
        return out

    def _points(self) -> list[float]:
        # A bucket's requests sit at its middle; +Inf's at the last finite bound.
        points, lower = [], 0.0
        finite = [le for le, _ in self.buckets if math.isfinite(le)]
        for le, _ in self.buckets:
            points.append((lower + le) / 2 if math.isfinite(le) else (finite[-1] if finite
                                                                       else 0.0))
            lower = le if math.isfinite(le) else lower
        return points

    def mean(self) -> float:
        counts = self.counts()
        total = sum(counts)
        return sum(c * p for c, p in zip(counts, self._points(), strict=True)) / total \
            if total else 0.0

    def quantile(self, q: float) -> float:
        """Prometheus's histogram_quantile: linear inside the bucket."""
        total = self.n
        if not total:
            return 0.0
        rank, lower, below = q * total, 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if not math.isfinite(le):
                    return lower
                inside = cumulative - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = (le if math.isfinite(le) else lower), cumulative
        return lower


Sample = Ratio | Histogram


@dataclass(frozen=True)
class SignalVerdict:
    signal: str
    outcome: Outcome
    canary: float  # the measure (rate, mean or p95) on each side
    baseline: float
    change: float  # relative, in the worse direction (+0.30 = 30% worse)
    p_value: float | None
    n_canary: float
    n_baseline: float
    critical: bool
    why: str


@dataclass(frozen=True)
class Verdict:
    decision: Literal["rollback", "hold", "promote", "wait"]
    signals: list[SignalVerdict]

    @property
    def failed(self) -> list[SignalVerdict]:
        return [s for s in self.signals if s.outcome == "fail"]


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def _log_comb(n: float, k: float) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_p(canary: Ratio, baseline: Ratio, worse: str) -> float:
    """One-sided Fisher exact test: with the events fixed, how likely is a canary share
    at least this bad? (``X ~ Hypergeometric(N, K, n1)``, summed in log space.)"""
    n1, n0 = round(canary.total), round(baseline.total)
    k1, k = round(canary.hits), round(canary.hits + baseline.hits)
    total = n1 + n0
    low, high = max(0, n1 - (total - k)), min(k, n1)
    xs = range(k1, high + 1) if worse == "higher" else range(low, k1 + 1)
    base = _log_comb(total, n1)
    return min(1.0, sum(math.exp(_log_comb(k, x) + _log_comb(total - k, n1 - x) - base)
                        for x in xs))


def proportion_p(canary: Ratio, baseline: Ratio, worse: str) -> float:
    """One-sided test that the canary's rate is worse than the baseline's: the
    two-proportion z-test, or Fisher's exact test when an expected count is under 5
    (where the normal approximation is not to be trusted)."""
    n1, n0 = canary.total, baseline.total
    pooled = (canary.hits + baseline.hits) / (n1 + n0)
    if min(pooled, 1 - pooled) * min(n1, n0) < 5:
        return fisher_p(canary, baseline, worse)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n0)
    if var <= 0:
        return 1.0  # both all-or-nothing alike: nothing to tell apart
    z = (canary.rate - baseline.rate) / math.sqrt(var)
    return _normal_sf(z if worse == "higher" else -z)


def rank_p(canary: Histogram, baseline: Histogram, worse: str) -> float:
    """One-sided Mann-Whitney U on binned data (ties within a bucket), normal
    approximation with the tie correction: the canary's values are stochastically
    worse (larger, or smaller for ``worse == "lower"``) than the baseline's."""
    if [le for le, _ in canary.buckets] != [le for le, _ in baseline.buckets]:
        raise ValueError("canary and baseline histograms need the same buckets")
    c, b = canary.counts(), baseline.counts()
    n1, n0 = sum(c), sum(b)
    u, below = 0.0, 0.0
    for ci, bi in zip(c, b, strict=True):
        u += ci * (below + bi / 2)  # pairs where the canary's request is larger (+ half ties)
        below += bi
    total = n1 + n0
    ties = sum((ci + bi) ** 3 - (ci + bi) for ci, bi in zip(c, b, strict=True))
    var = n1 * n0 / 12 * ((total + 1) - ties / (total * (total - 1)))
    if var <= 0:
        return 1.0
    z = (u - n1 * n0 / 2) / math.sqrt(var)
    return _normal_sf(z if worse == "higher" else -z)


def _measure(sample: Sample, spec: SignalSpec) -> float:
    if isinstance(sample, Ratio):
        return sample.rate
    return sample.quantile(0.95) if spec.measure == "p95" else sample.mean()


def judge_signal(name: str, threshold: Threshold, canary: Sample, baseline: Sample, *,
                 alpha: float) -> SignalVerdict:
    spec = SIGNALS[name]
    c, b = _measure(canary, spec), _measure(baseline, spec)
    # Relative to the baseline; from none at all, any canary value is infinitely more.
    change = (c - b) / abs(b) if b else (math.inf if c > 0 else 0.0)
    if spec.worse == "lower":
        change = -change
    need = threshold.min_samples
    common = dict(signal=name, canary=c, baseline=b, change=change, n_canary=canary.n,
                  n_baseline=baseline.n, critical=threshold.critical)
    if canary.n < need or baseline.n < need:
        return SignalVerdict(outcome="not enough data", p_value=None, **common,  # type: ignore[arg-type]
                             why=f"{int(canary.n)} canary / {int(baseline.n)} baseline "
                                 f"requests; {need} each needed")
    if isinstance(canary, Ratio) and isinstance(baseline, Ratio):
        p = proportion_p(canary, baseline, spec.worse)
    elif isinstance(canary, Histogram) and isinstance(baseline, Histogram):
        p = rank_p(canary, baseline, spec.worse)
    else:
        raise ValueError(f"{name}: canary and baseline must be the same kind of sample")
    worse = change > threshold.max_change
    significant = p < alpha
    shown = f"{change:+.0%}" if math.isfinite(change) else "from none"
    if worse and significant:
        outcome: Outcome = "fail"
        why = (f"{spec.means} {shown} (limit +{threshold.max_change:.0%}), "
               f"p={p:.2g} < {alpha:g}")
    else:
        outcome = "pass"
        why = (f"{spec.means} {shown}" + ("" if worse else
                                          f" (within +{threshold.max_change:.0%})")
               + ("" if significant else f", p={p:.2g}: not significant"))
    return SignalVerdict(outcome=outcome, p_value=p, why=why, **common)  # type: ignore[arg-type]


def judge(thresholds: Mapping[str, Threshold],
          samples: Mapping[str, tuple[Sample, Sample]], *, alpha: float) -> Verdict:
    """Every signal with samples, then the decision: a failing critical signal rolls
    back; another failure holds; all passing promotes; otherwise wait for data."""
    verdicts = [judge_signal(name, thresholds[name], canary, baseline, alpha=alpha)
                for name, (canary, baseline) in samples.items() if name in thresholds]
    if any(v.outcome == "fail" and v.critical for v in verdicts):
        decision: Literal["rollback", "hold", "promote", "wait"] = "rollback"
    elif any(v.outcome == "fail" for v in verdicts):
        decision = "hold"
    elif verdicts and all(v.outcome == "pass" for v in verdicts):
        decision = "promote"
    else:
        decision = "wait"
    return Verdict(decision, verdicts)
