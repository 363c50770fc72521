"""The rules pack's recording rules, computed in Python from scrapes of ``/metrics``.

When no Prometheus is configured, a drill still needs the numbers its scenario
and the expected alert read (``llm_incident:route:spend_usd_per_hour`` and the
rest of ``playbooks/alerts/rules.yaml``'s signals). ``Scrapes`` keeps a short
history of parsed scrapes; ``SIGNALS`` maps each recording rule to a function
that computes it over that history the way the PromQL does (``rate`` between the
oldest and newest scrape of the window, the same ``> 0.05`` traffic floors, the
same label grouping). ``evaluate`` answers the simple query shapes the shipped
scenarios use: ``AGG(recorded_name{label="value"}) or vector(N)``. Anything else
is refused with an error saying Prometheus is needed for it: a wrong number
would be worse than none.

Time is *drill time*: a drill running ``speed`` times faster than real time sends
``speed`` times the traffic and stamps each scrape in drill seconds, so every rate
here is per drill second, the unit the rules' thresholds mean.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bot.base.errors import InputError

Labels = tuple[tuple[str, str], ...]
Series = dict[Labels, float]


@dataclass(frozen=True)
class Scrape:
    at: float  # drill seconds
    samples: dict[str, dict[Labels, float]]  # sample name -> labels -> value


def parse_scrape(text: str, at: float) -> Scrape:
    """Parse Prometheus text exposition into ``{sample name: {labels: value}}``."""
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[s.name][tuple(sorted(s.labels.items()))] = float(s.value)
    except ValueError as exc:
        raise InputError(f"the target's /metrics is not Prometheus text format: {exc}") from None
    return Scrape(at, dict(samples))


def increase(old: float, new: float) -> float:
    """A counter's increase between two reads; a reset (it went down) starts at 0."""
    return new if new < old else new - old


@dataclass
class Scrapes:
    """The last scrapes within ``window`` drill seconds (plus the one just before it)."""

    window: float
    history: list[Scrape] = field(default_factory=list)

    def add(self, scrape: Scrape) -> None:
        self.history.append(scrape)
        # Keep one scrape older than the window, as Prometheus' rate would extrapolate to it.
        while len(self.history) > 2 and self.history[1].at <= scrape.at - self.window:
            self.history.pop(0)

    @property
    def ready(self) -> bool:
        return len(self.history) >= 2

    def rate(self, name: str) -> Series:
        """Per drill second increase of every series of counter ``name`` over the window."""
        if not self.ready:
            return {}
        first, last = self.history[0], self.history[-1]
        span = last.at - first.at
        if span <= 0:
            return {}
        before = first.samples.get(name, {})
        out: Series = {}
        for labels, value in last.samples.get(name, {}).items():
            # Born between the scrapes: it started at 0.
            out[labels] = increase(before.get(labels, 0.0), value) / span
        return out

    def avg_over_time(self, name: str) -> Series:
        sums: dict[Labels, list[float]] = defaultdict(list)
        latest = self.history[-1].samples.get(name, {}) if self.history else {}
        for scrape in self.history[1:] if len(self.history) > 1 else self.history:
            for labels, value in scrape.samples.get(name, {}).items():
                if labels in latest:  # a series the target dropped is gone, as in Prometheus
                    sums[labels].append(value)
        return {k: sum(v) / len(v) for k, v in sums.items()}


# --- PromQL-like helpers ---------------------------------------------------------------


def _get(labels: Labels, name: str) -> str:
    return dict(labels).get(name, "")


def sum_by(series: Series, key: Callable[[Labels], Labels | None]) -> Series:
    out: Series = defaultdict(float)
    for labels, value in series.items():
        k = key(labels)
        if k is not None:
            out[k] += value
    return dict(out)


def by(*names: str) -> Callable[[Labels], Labels]:
    return lambda labels: tuple((n, _get(labels, n)) for n in names)


def route_from(label: str, fallback: str | None = None) -> Callable[[Labels], Labels | None]:
    """``label_replace(..., "route", "$1", label, "(.+)")``: route = that label when set."""

    def key(labels: Labels) -> Labels | None:
        value = _get(labels, label) or (_get(labels, fallback) if fallback else "")
        return (("route", value),) if value else None

    return key


def ratio(num: Series, den: Series, floor: float | None = None) -> Series:
    """``num / (den > floor)``: only where the denominator passes the floor."""
    return {
        k: num.get(k, 0.0) / d
        for k, d in den.items()
        if d > 0 and (floor is None or d > floor)
    }


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' linear interpolation inside the bucket the rank falls in."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    total = buckets[bounds[-1]]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if math.isinf(b):
                return prev_bound  # Prometheus returns the last finite upper bound
            if count == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = b, count
    return prev_bound


# --- the recording rules ---------------------------------------------------------------

Signal = Callable[[Scrapes, Mapping[str, str]], Series]
# The rules' traffic floor for ratios (requests per second of drill time).
FLOOR_PER_S = 0.05


def _spend(s: Scrapes, _: Mapping[str, str]) -> Series:
    rates = s.rate("litellm_spend_metric_total")
    return {k: 3600 * v for k, v in sum_by(rates, route_from("requested_model", "model")).items()}


def _customer_spend(s: Scrapes, _: Mapping[str, str]) -> Series:
    def key(labels: Labels) -> Labels | None:
        route, customer = _get(labels, "requested_model"), _get(labels, "end_user")
        return (("customer", customer), ("route", route)) if route and customer else None

    return {k: 3600 * v for k, v in sum_by(s.rate("litellm_spend_metric_total"), key).items()}


def _tokens_per_request(s: Scrapes, _: Mapping[str, str]) -> Series:
    key = route_from("requested_model")
    return ratio(sum_by(s.rate("litellm_output_tokens_metric_total"), key),
                 sum_by(s.rate("litellm_request_total_latency_metric_count"), key))


def _gateway_ratio(numerator: str) -> Signal:
    def signal(s: Scrapes, _: Mapping[str, str]) -> Series:
        key = route_from("requested_model")
        return ratio(sum_by(s.rate(numerator), key),
                     sum_by(s.rate("litellm_proxy_total_requests_metric_total"), key),
                     FLOOR_PER_S)

    return signal


def _app_ratio(numerator: str, *group: str) -> Signal:
    def signal(s: Scrapes, _: Mapping[str, str]) -> Series:
        return ratio(sum_by(s.rate(numerator), by(*group)),
                     sum_by(s.rate("llm_app_responses_total"), by(*group)), FLOOR_PER_S)

    return signal


def _overflow(s: Scrapes, _: Mapping[str, str]) -> Series:
    return sum_by(s.rate("llm_app_context_overflow_total"), by("route", "prompt_version"))


def _quality(s: Scrapes, _: Mapping[str, str]) -> Series:
    values = s.avg_over_time("llm_app_quality_score")
    sums = sum_by(values, by("route", "prompt_version"))
    counts: defaultdict[Any, int] = defaultdict(int)
    for labels in values:
        counts[by("route", "prompt_version")(labels)] += 1
    return {k: v / counts[k] for k, v in sums.items()}


def _ttft_p95(s: Scrapes, model_routes: Mapping[str, str]) -> Series:
    per_route: dict[Labels, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in s.rate("vllm:time_to_first_token_seconds_bucket").items():
        d = dict(labels)
        route = d.get("route") or model_routes.get(d.get("model_name", ""), d.get("model_name"))
        if route:
            per_route[(("route", route),)][float(d["le"])] += value
    out = {k: histogram_quantile(0.95, b) for k, b in per_route.items()}
    return {k: v for k, v in out.items() if not math.isnan(v)}


SIGNALS: dict[str, Signal] = {
    "llm_incident:route:spend_usd_per_hour": _spend,
    "llm_incident:route_customer:spend_usd_per_hour": _customer_spend,
    "llm_incident:route:output_tokens_per_request": _tokens_per_request,
    "llm_incident:route:provider_error_ratio":
        _gateway_ratio("litellm_proxy_failed_requests_metric_total"),
    "llm_incident:route:fallback_ratio":
        _gateway_ratio("litellm_deployment_successful_fallbacks_total"),
    "llm_incident:route:ttft_p95_seconds": _ttft_p95,
    "llm_incident:route_prompt:output_invalid_ratio":
        _app_ratio("llm_app_output_invalid_total", "route", "prompt_version"),
    "llm_incident:route_prompt:safety_flag_ratio":
        _app_ratio("llm_app_safety_flags_total", "route", "prompt_version"),
    "llm_incident:route_prompt:refusal_ratio":
        _app_ratio("llm_app_refusals_total", "route", "prompt_version"),
    "llm_incident:route_prompt:context_overflow_per_second": _overflow,
    "llm_incident:route:misrouted_ratio": _app_ratio("llm_app_misrouted_total", "route"),
    "llm_incident:route_prompt:quality_score": _quality,
}  # fmt: skip


def signal(name: str, scrapes: Scrapes, model_routes: Mapping[str, str]) -> Series:
    fn = SIGNALS.get(name)
    if fn is None:
        raise InputError(
            f"the drill's own detector cannot compute {name!r}",
            hint=f"it knows: {', '.join(sorted(SIGNALS))}; configure Prometheus for others",
        )
    return fn(scrapes, model_routes)

# --- the query shapes scenarios use ----------------------------------------------------

_QUERY = re.compile(
    r"^\s*(?:(?P<agg>max|min|sum|avg)\s*\(\s*)?(?P<name>[a-zA-Z_:][\w:]*)\s*"
    r"(?:\{(?P<matchers>[^}]*)\})?\s*(?(agg)\)\s*)"
    r"(?:or\s+vector\s*\(\s*(?P<default>-?[\d.]+(?:[eE][-+]?\d+)?)\s*\))?\s*$"
)
_MATCHER = re.compile(r'^\s*([a-zA-Z_]\w*)\s*=\s*"([^"\\]*)"\s*$')
_AGG: dict[str, Callable[[Iterable[float]], float]] = {
    "max": max, "min": min, "sum": sum, "avg": lambda v: sum(v) / len(list(v)),
}  # fmt: skip


@dataclass(frozen=True)
class SimpleQuery:
    name: str
    matchers: dict[str, str]
    agg: str | None
    default: float | None


def parse_query(promql: str) -> SimpleQuery:
    m = _QUERY.match(promql)
    if not m:
        raise InputError(
            f"the drill's own detector cannot evaluate {promql!r}",
            hint='it reads AGG(recorded_name{label="value"}) or vector(N); '
            "configure Prometheus for other queries",
        )
    matchers: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (m.group("matchers") or "").split(","))):
        mm = _MATCHER.match(part)
        if not mm:
            raise InputError(f"the drill's own detector only reads label=\"value\" matchers, "
                             f"not {part!r} in {promql!r}")
        matchers[mm.group(1)] = mm.group(2)
    default = m.group("default")
    return SimpleQuery(m.group("name"), matchers, m.group("agg"),
                       float(default) if default is not None else None)


def evaluate(promql: str, scrapes: Scrapes, model_routes: Mapping[str, str]) -> float | None:
    """The query's value now, or None when it has no samples (and no ``or vector``).

    ``or vector(N)`` is read for scenarios' own queries (a stop condition with no data
    has not tripped). The bot's verify queries never reach this stand-in, and lint
    refuses that form in them: there, no data is "not known yet", never a number."""
    q = parse_query(promql)
    series = signal(q.name, scrapes, model_routes)
    values = [v for labels, v in series.items()
              if all(dict(labels).get(k) == want for k, want in q.matchers.items())]
    if not values:
        return q.default
    if q.agg is None:
        return max(values)
    return _AGG[q.agg](values)
