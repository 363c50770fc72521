"""Where each serving engine keeps the numbers an SLO is made of: one profile per source.

An SLO says "p95 TTFT < 1.5 s on chat"; which series count that depends on what
serves chat. A profile names, for one source, the histograms (time to first token,
end-to-end latency) with their default bucket bounds, the request and failure
counters, and the label that carries the route. ``slo render --source NAME`` writes
the rules on that source's names; ``--source auto`` reads a ``/metrics`` page and
picks the profile whose names it finds. Every name here was read from the project's
own metric definitions (the ``source`` line of each profile says where); a name two
releases spell differently is listed twice and either one counts (vLLM renamed
``vllm:gpu_cache_usage_perc`` to ``vllm:kv_cache_usage_perc`` and
``vllm:time_per_output_token_seconds`` to ``vllm:inter_token_latency_seconds``).

TGI is not here: its metrics are defined in its Rust router, whose source was not
available to read the names from, and a guessed name is an SLO that never fires.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bot.base.errors import InputError


@dataclass(frozen=True)
class Histogram:
    names: tuple[str, ...]  # base names (no _bucket), newest spelling first
    bounds: tuple[float, ...] | None  # default bucket bounds; None: the exporter's SDK sets them
    label: str | None = None  # the route's label, when not the profile's


@dataclass(frozen=True)
class Counter:
    name: str  # as exported (with _total)
    matchers: str = ""  # extra matchers, e.g. 'finished_reason="error"'


def sample_series(requests: Counter, part: Counter, labels: dict[str, str], total: int,
                 bad: int) -> list[tuple[str, dict[str, str], int]]:
    """The series (name, labels, count) a promtool test feeds so that ``requests`` counts
    ``total`` and ``part`` counts ``bad``: two counters, or one counter split by the
    part's label (vLLM's finished_reason, OTel's error_type), the bad share with it
    set and the rest with it set otherwise."""
    if part.name != requests.name:
        return [(requests.name, labels | {"status_code": "200"}, total),
                (part.name, labels, bad)]
    negated = "!=" in part.matchers
    key, _, value = part.matchers.partition("!=" if negated else "=")
    bad_value = value.strip('"') or "timeout"  # != "" : any value is bad
    return [(part.name, labels | {key: bad_value}, bad),
            (requests.name, labels | ({} if negated else {key: "stop"}), total - bad)]


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    source: str  # where the names were read
    route_label: str
    detect: tuple[str, ...]  # metric names whose presence on /metrics means this source
    ttft: Histogram | None = None
    latency: Histogram | None = None
    itl: Histogram | None = None  # inter-token latency
    requests: Counter | None = None
    errors: Counter | None = None
    fallbacks: Counter | None = None
    output_tokens: tuple[str, ...] = ()
    kv_cache: tuple[str, ...] = ()  # gauges 0..1, newest spelling first
    waiting: tuple[str, ...] = ()
    engine_label: str | None = None  # the engine gauges' label, when not route_label
    # SLIs only an app-level family counts (schema validity, refusals): the sandbox's.
    app_family: bool = False
    spend: bool = False  # a gateway: it counts dollars, so budgets can be read from it
    notes: tuple[str, ...] = field(default=())

    def histogram(self, sli: str) -> Histogram | None:
        return {"ttft": self.ttft, "latency": self.latency}.get(sli)

    def supports(self, sli: str) -> str | None:
        """Why this source cannot count ``sli`` (None: it can)."""
        if sli in ("ttft", "latency") and self.histogram(sli) is None:
            return f"{self.name} exports no {sli} histogram"
        if sli == "errors" and (self.errors is None or self.requests is None):
            return f"{self.name} counts no failed requests"
        if sli == "fallbacks" and self.fallbacks is None:
            return f"{self.name} sees no fallbacks (a gateway does: use litellm)"
        if sli == "spend" and not self.spend:
            return (f"budgets read spend, which only a gateway counts; {self.name} has none "
                    "(render budgets with --source litellm)")
        if sli in ("schema_valid", "refusals") and not self.app_family:
            return (f"{self.name} does not judge answers ({sli} needs the llm_app_* family "
                    "your app exports, source sandbox), or write it as sli: ratio")
        return None


_VLLM_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
              7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_VLLM_LATENCY = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_VLLM_ITL = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
             10.0, 20.0, 40.0, 80.0)
_LITELLM_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 420.0, 600.0)
# The sandbox's own buckets (drills/sandbox/metrics.py; a test keeps them in step).
SANDBOX_LATENCY = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0,
                   20.0, 30.0, 60.0, 120.0, 300.0)
SANDBOX_TTFT = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 7.5, 10.0, 20.0)

PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile(
        "sandbox", "LiteLLM's names with the sandbox's buckets, and the llm_app_* family",
        "drills/sandbox/metrics.py (the default; what drills and the e2e tests speak)",
        # Its own family, not llm_app_*: the LiteLLM hook exports that on a real proxy too.
        "requested_model", ("llm_sandbox_policy_reload_errors_total",),
        ttft=Histogram(("llm_app_time_to_first_token_seconds",), SANDBOX_TTFT, label="route"),
        latency=Histogram(("litellm_request_total_latency_metric",), SANDBOX_LATENCY),
        requests=Counter("litellm_proxy_total_requests_metric_total"),
        errors=Counter("litellm_proxy_failed_requests_metric_total"),
        fallbacks=Counter("litellm_deployment_successful_fallbacks_total"),
        output_tokens=("litellm_output_tokens_metric_total",),
        kv_cache=("vllm:kv_cache_usage_perc",), waiting=("vllm:num_requests_waiting",),
        engine_label="model_name", app_family=True, spend=True,
        notes=("its engine gauges are per model (model_name); relabel models to routes at "
               "scrape time, as drills do",)),
    Profile(
        "litellm", "the LiteLLM proxy",
        "litellm/types/integrations/prometheus.py (LATENCY_BUCKETS, label names), 1.106",
        "requested_model", ("litellm_proxy_total_requests_metric_total",
                            "litellm_request_total_latency_metric_bucket"),
        ttft=Histogram(("litellm_llm_api_time_to_first_token_metric",), _LITELLM_LATENCY),
        latency=Histogram(("litellm_request_total_latency_metric",), _LITELLM_LATENCY),
        requests=Counter("litellm_proxy_total_requests_metric_total"),
        errors=Counter("litellm_proxy_failed_requests_metric_total"),
        fallbacks=Counter("litellm_deployment_successful_fallbacks_total"),
        output_tokens=("litellm_output_tokens_metric_total",), spend=True,
        notes=("time to first token is the upstream's (streaming calls)",)),
    Profile(
        "vllm", "vLLM (the V1 engine's names, and the V0 names they replaced)",
        "vllm/v1/metrics/loggers.py and buckets.py (0.34.0); vllm/engine/metrics.py (0.8.5)",
        "model_name", ("vllm:time_to_first_token_seconds_bucket",
                       "vllm:e2e_request_latency_seconds_bucket"),
        ttft=Histogram(("vllm:time_to_first_token_seconds",), _VLLM_TTFT),
        latency=Histogram(("vllm:e2e_request_latency_seconds",), _VLLM_LATENCY),
        itl=Histogram(("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
                      _VLLM_ITL),
        requests=Counter("vllm:request_success_total"),
        # V1 finishes a request that failed inside the engine with reason "error"
        # (aborts are the client's doing).
        errors=Counter("vllm:request_success_total", 'finished_reason="error"'),
        output_tokens=("vllm:generation_tokens_total",),
        kv_cache=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        waiting=("vllm:num_requests_waiting",),
        notes=("buckets are vLLM's defaults; --custom-histogram-buckets changes them",)),
    Profile(
        "sglang", "SGLang",
        "sglang/srt/observability/metrics_collector.py (0.5.23)",
        "model_name", ("sglang:time_to_first_token_seconds_bucket",
                       "sglang:num_requests_total"),
        ttft=Histogram(("sglang:time_to_first_token_seconds",),
                       (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200,
                        400)),
        latency=Histogram(("sglang:e2e_request_latency_seconds",),
                          (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100,
                           200, 400, 600, 1200, 1800, 2400)),
        itl=Histogram(("sglang:inter_token_latency_seconds",),
                      (0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035,
                       0.040, 0.060, 0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.0, 2.0, 4.0,
                       6.0, 8.0)),
        requests=Counter("sglang:num_requests_total"),
        errors=Counter("sglang:num_aborted_requests_total"),
        output_tokens=("sglang:generation_tokens_total",),
        kv_cache=("sglang:token_usage",), waiting=("sglang:num_queue_reqs",)),
    Profile(
        "otel", "OpenTelemetry GenAI metrics, exported to Prometheus",
        "opentelemetry-semantic-conventions gen_ai_metrics.py (0.66b2): gen_ai.server.* "
        "in seconds, dots to underscores, the unit as a suffix",
        "gen_ai_request_model", ("gen_ai_server_request_duration_seconds_bucket",
                                 "gen_ai_server_time_to_first_token_seconds_bucket"),
        ttft=Histogram(("gen_ai_server_time_to_first_token_seconds",), None),
        latency=Histogram(("gen_ai_server_request_duration_seconds",), None),
        itl=Histogram(("gen_ai_server_time_per_output_token_seconds",), None),
        requests=Counter("gen_ai_server_request_duration_seconds_count"),
        errors=Counter("gen_ai_server_request_duration_seconds_count", 'error_type!=""'),
        notes=("bucket bounds are your SDK's: make sure each threshold is one",)),
)}
DEFAULT = "sandbox"

_NAME_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{\s]", re.M)


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise InputError(f"no metrics source '{name[:40]}'",
                         hint=f"sources: {', '.join(PROFILES)}, or auto") from None


def names_in(exposition: str) -> set[str]:
    """The metric names of a Prometheus text exposition (``/metrics``)."""
    return {m.group(1) for m in _NAME_LINE.finditer(exposition)}


def detect(exposition: str) -> tuple[Profile, list[str]]:
    """The profile whose names the page has, and notes on the other candidates. The
    sandbox speaks LiteLLM's and vLLM's names too: its own family decides first."""
    seen = names_in(exposition)
    found = [p for p in PROFILES.values() if any(n in seen for n in p.detect)]
    if not found:
        raise InputError("no known serving metrics on that page (looked for "
                         + ", ".join(n for p in PROFILES.values() for n in p.detect[:1]) + ")",
                         hint="name the source: --source litellm|vllm|sglang|otel")
    others = [f"also saw {p.name}'s names" for p in found[1:]]
    return found[0], others
