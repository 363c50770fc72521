"""What the canary judge compares, read from Prometheus: canary and baseline requests
of one route over one window, per signal.

The gateway labels every per-request metric with the version that served it
(``prompt_version``, ``model``): the sandbox does, and a LiteLLM deployment does
through the pre-call hook's metadata. Histograms come back as their ``le``
buckets (``sum by (le) (increase(..._bucket[w]))``), ratios as two counts, so the
judge runs its own tests on the requests of the window, not on pre-averaged
series. A signal with no series on either side is left out (the judge then has
nothing to say about it), never read as zero.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from actions.base import MetricsSource
from bot.core.canary_judge import Histogram, Ratio, Sample
from bot.playbook.render import promql_escape

# signal -> histogram metric (per request, by version)
HISTOGRAMS = {
    "output_tokens": "llm_app_output_tokens",
    "cost_per_request": "llm_app_cost_usd",
    "latency_p95": "llm_app_request_latency_seconds",
    "ttft_p95": "llm_app_time_to_first_token_seconds",
    "quality_score": "llm_app_sampled_quality",
}
# signal -> (counted metric, total metric, True when the signal is the complement)
RATIOS = {
    "schema_valid": ("llm_app_output_invalid_total", "llm_app_responses_total", True),
    "refusal": ("llm_app_refusals_total", "llm_app_responses_total", False),
    "safety_flag": ("llm_app_safety_flags_total", "llm_app_responses_total", False),
    "error": ("llm_app_errors_total", "llm_app_requests_total", False),
    "fallback": ("llm_app_fallback_responses_total", "llm_app_requests_total", False),
}


@dataclass(frozen=True)
class Version:
    """Which requests: the route's, served with this prompt version and/or model."""

    route: str
    prompt_version: str | None = None
    model: str | None = None

    def matchers(self) -> str:
        pairs = [("route", self.route), ("prompt_version", self.prompt_version),
                 ("model", self.model)]
        return ",".join(f'{k}="{promql_escape(v)}"' for k, v in pairs if v is not None)


def _range(window: timedelta) -> str:
    return f"{max(1, int(window.total_seconds()))}s"


async def _histogram(metrics: MetricsSource, metric: str, v: Version,
                     window: timedelta) -> Histogram | None:
    rows = await metrics.query(
        f"sum by (le) (increase({metric}_bucket{{{v.matchers()}}}[{_range(window)}]))")
    buckets = sorted((float(r.labels["le"]), r.value) for r in rows if "le" in r.labels)
    if not buckets or not math.isinf(buckets[-1][0]):
        return None
    return Histogram(buckets)


async def _count(metrics: MetricsSource, metric: str, v: Version,
                 window: timedelta) -> float | None:
    rows = await metrics.query(f"sum(increase({metric}{{{v.matchers()}}}[{_range(window)}]))")
    return rows[0].value if rows else None


# Where the numbers come from: (metric, version) -> a histogram's buckets or a
# counter's increase over the window; None when the series does not exist.
HistogramSource = Callable[[str, Version], Awaitable[Histogram | None]]
CountSource = Callable[[str, Version], Awaitable[float | None]]


async def collect(histogram: HistogramSource, count: CountSource, canary: Version,
                  baseline: Version) -> dict[str, tuple[Sample, Sample]]:
    """Every signal both sides have data for, as ``{signal: (canary, baseline)}``, from
    any source (Prometheus here; a drill's own scrapes in ``drills.release_phase``)."""

    async def ratio(counted: str, total: str, complement: bool, v: Version) -> Ratio | None:
        n = await count(total, v)
        if n is None:
            return None
        hits = await count(counted, v) or 0.0  # no series: none counted
        # increase() extrapolates each series on its own, so a counter that counted
        # every request (a canary whose answers all fail to parse) can read a hair
        # over its total: a share is never outside 0..1.
        hits = min(max(hits, 0.0), n)
        return Ratio(n - hits if complement else hits, n)

    out: dict[str, tuple[Sample, Sample]] = {}
    for signal, metric in HISTOGRAMS.items():
        c, b = await histogram(metric, canary), await histogram(metric, baseline)
        if c is not None and b is not None:
            out[signal] = (c, b)
    for signal, (counted, total, complement) in RATIOS.items():
        rc = await ratio(counted, total, complement, canary)
        rb = await ratio(counted, total, complement, baseline)
        if rc is not None and rb is not None:
            out[signal] = (rc, rb)
    return out


async def read_samples(metrics: MetricsSource, canary: Version, baseline: Version,
                       window: timedelta) -> dict[str, tuple[Sample, Sample]]:
    """The samples from Prometheus over ``window``."""

    async def histogram(metric: str, v: Version) -> Histogram | None:
        return await _histogram(metrics, metric, v, window)

    async def count(metric: str, v: Version) -> float | None:
        return await _count(metrics, metric, v, window)

    return await collect(histogram, count, canary, baseline)
