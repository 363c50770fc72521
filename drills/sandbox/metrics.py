"""The sandbox's Prometheus metrics, named and labelled like LiteLLM's and vLLM's.

The same alert rules must work on a real LiteLLM proxy and on the sandbox, so the
gateway family keeps LiteLLM's names and label names (``requested_model`` = the
route the caller asked for, ``model`` = the deployment that answered,
``status_code``, ``exception_status``/``exception_class``, ``fallback_model``) and
the engine family keeps vLLM's (``model_name``). Of LiteLLM's per-caller labels the
requests, tokens and spend carry ``end_user`` (the body's ``user``; empty when the
caller gave none, which Prometheus shows as no label); team and key are left out.

The app-level quality family (``llm_app_*``) is labelled ``route``, ``model``,
``prompt_version``. Everything lives in a private registry so several sandboxes
(and the tests) can run in one process.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# LiteLLM's request latency buckets (seconds), trimmed of the finest ones.
LATENCY_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0,
    15.0, 20.0, 30.0, 60.0, 120.0, 300.0, float("inf"),
)  # fmt: skip
# Output tokens and cost per request (the release guard compares their distributions).
TOKEN_BUCKETS = (
    16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 8192, float("inf"),
)  # fmt: skip
COST_BUCKETS = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, float("inf"),
)  # fmt: skip
# The app family's TTFT buckets: vLLM's, plus the bounds SLOs in user terms name
# ("p95 TTFT < 1.5 s"): an SLO threshold must be a bucket bound (bot/playbook/slos.py).
APP_TTFT_BUCKETS = (
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 7.5, 10.0, 20.0,
    float("inf"),
)  # fmt: skip
QUALITY_BUCKETS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, float("inf"))
# vLLM's time-to-first-token buckets (seconds).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, float("inf"),
)  # fmt: skip

GATEWAY = ["requested_model", "model"]
CALLER = [*GATEWAY, "end_user"]
APP = ["route", "model", "prompt_version"]


class SandboxMetrics:
    def __init__(self, *, clock: Callable[[], float], quality_ttl_s: float) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._quality_ttl_s = quality_ttl_s
        self._quality_seen: dict[tuple[str, str, str], float] = {}

        self.input_tokens = Counter(
            "litellm_input_tokens_metric", "Input tokens per route, model and caller", CALLER,
            registry=r
        )
        self.output_tokens = Counter(
            "litellm_output_tokens_metric", "Output tokens per route, model and caller", CALLER,
            registry=r
        )
        self.spend = Counter(
            "litellm_spend_metric", "Spend in USD per route, model and caller", CALLER,
            registry=r
        )
        self.latency = Histogram(
            "litellm_request_total_latency_metric",
            "Total request latency in seconds (simulated, before time_scale)",
            GATEWAY,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "litellm_proxy_total_requests_metric",
            "Requests the gateway answered, by caller and status code",
            [*CALLER, "status_code"],
            registry=r,
        )
        self.failed = Counter(
            "litellm_proxy_failed_requests_metric",
            "Requests the caller did not get a success for",
            [*GATEWAY, "exception_status", "exception_class"],
            registry=r,
        )
        self.fallbacks = Counter(
            "litellm_deployment_successful_fallbacks",
            "Requests served by the route's fallback",
            ["requested_model", "fallback_model", "model"],
            registry=r,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token in seconds (simulated, before time_scale)",
            ["model_name"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Requests waiting for their first token",
            ["model_name"],
            registry=r,
        )
        self.kv_cache = Gauge(
            "vllm:kv_cache_usage_perc",
            "KV cache usage, 0..1 (in-flight sequences / max_num_seqs; ~1 while thrashing)",
            ["model_name"],
            registry=r,
        )
        self.responses = Counter(
            "llm_app_responses", "Completions returned to callers", APP, registry=r
        )
        self.invalid = Counter(
            "llm_app_output_invalid",
            "Responses that failed the requested output schema (invalid JSON)",
            APP,
            registry=r,
        )
        self.refusals = Counter("llm_app_refusals", "Responses that refused", APP, registry=r)
        self.app_output_tokens = Histogram(
            "llm_app_output_tokens", "Output tokens per completion, by version", APP,
            buckets=TOKEN_BUCKETS, registry=r)
        self.app_cost = Histogram(
            "llm_app_cost_usd", "Cost per completion in USD, by version", APP,
            buckets=COST_BUCKETS, registry=r)
        self.app_latency = Histogram(
            "llm_app_request_latency_seconds",
            "End-to-end latency per completion (simulated), by version", APP,
            buckets=LATENCY_BUCKETS, registry=r)
        self.app_ttft = Histogram(
            "llm_app_time_to_first_token_seconds",
            "Time to first token per completion (simulated), by version", APP,
            buckets=APP_TTFT_BUCKETS, registry=r)
        # Every request a version took (failed ones too, once past admission), its
        # failures, and those a fallback served: the judge's error and fallback shares.
        self.app_requests = Counter(
            "llm_app_requests", "Requests served or failed, by the version that took them",
            APP, registry=r)
        self.app_errors = Counter(
            "llm_app_errors", "Requests that failed after a version took them", APP, registry=r)
        self.app_fallbacks = Counter(
            "llm_app_fallback_responses", "Responses a fallback route served", APP, registry=r)
        self.app_quality = Histogram(
            "llm_app_sampled_quality", "Sampled quality score per answer, 0..1, by version",
            APP, buckets=QUALITY_BUCKETS, registry=r)
        self.safety_flags = Counter(
            "llm_app_safety_flags", "Responses flagged by the safety classifier", APP, registry=r
        )
        self.context_overflow = Counter(
            "llm_app_context_overflow",
            "Requests rejected because input plus output exceed the context window",
            APP,
            registry=r,
        )
        self.misrouted = Counter(
            "llm_app_misrouted", "Requests served by a model the route did not pick", APP,
            registry=r,
        )  # fmt: skip
        self.quality = Gauge(
            "llm_app_quality_score", "Sampled quality score of recent answers, 0..1", APP,
            registry=r,
        )  # fmt: skip
        self.policy_reload_errors = Counter(
            "llm_sandbox_policy_reload_errors",
            "Policy file versions that could not be loaded (the last good one stayed in force)",
            registry=r,
        )
        self.policy_last_good = Gauge(
            "llm_sandbox_policy_last_good_timestamp_seconds",
            "Unix time the last good serving policy was loaded",
            registry=r,
        )

    def set_quality(self, route: str, model: str, prompt_version: str, score: float) -> None:
        key = (route, model, prompt_version)
        self._quality_seen[key] = self._clock()
        self.quality.labels(*key).set(score)

    def render(self) -> bytes:
        # A gauge keeps its last value forever; drop series nobody has fed lately so
        # the old prompt version's score does not drag averages after a rollback.
        cutoff = self._clock() - self._quality_ttl_s
        for key, seen in list(self._quality_seen.items()):
            if seen < cutoff:
                del self._quality_seen[key]
                self.quality.remove(*key)
        return generate_latest(self.registry)
