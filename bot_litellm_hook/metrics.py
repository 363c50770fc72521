"""The hook's own Prometheus families, served on the proxy's ``/metrics``.

LiteLLM's Prometheus callback serves ``prometheus_client``'s default ``REGISTRY``
(``PrometheusLogger._mount_metrics_endpoint``; with ``PROMETHEUS_MULTIPROC_DIR`` set,
a multiprocess collector over the same client, which our families join too), so the
hook registers there and needs no port of its own.

Names and labels are the practice gateway's (drills/sandbox/metrics.py): the
shipped rules (``sum by (route, prompt_version)``) and the release judge
(``route``/``prompt_version``/``model`` matchers, summed) read them unchanged. Two
labels are added, which both sum away: ``role`` (``canary``/``baseline``) and, on
``llm_app_responses`` and its quality verdicts (invalid, refusals, safety flags,
context overflow), ``customer`` (a policy ``customers`` key; empty otherwise).

Every label value is bounded by the policy, never by the caller: routes the policy
lists (else ``other``), models that are policy routes or the asked route (else
``other``), prompt versions the policy names for the route now or named lately (at
most ``MAX_OLD_VERSIONS`` of those per route, else ``other``), customers the policy
lists (at most ``MAX_CUSTOMERS``, the rest ``other``).
"""

from __future__ import annotations

from collections import OrderedDict

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from actions.policy import ServingPolicy

OTHER = "other"
MAX_OLD_VERSIONS = 8  # a rollback's old version keeps its own series for a while
MAX_CUSTOMERS = 200

# The sandbox's buckets, so a histogram_quantile over both reads alike.
LATENCY_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0,
    15.0, 20.0, 30.0, 60.0, 120.0, 300.0, float("inf"),
)  # fmt: skip
TOKEN_BUCKETS = (
    16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 8192, float("inf"),
)  # fmt: skip
TTFT_BUCKETS = (
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 7.5, 10.0, 20.0,
    float("inf"),
)  # fmt: skip

VERSION = ["route", "model", "prompt_version", "role"]
COUNTED = [*VERSION, "customer"]


class Labels:
    """Folds what a request says into bounded label values, from the policy in force.

    A prompt version is kept for a route only if the policy names it for that route
    (its version, its canary's) or named it lately (the last ``MAX_OLD_VERSIONS``), so
    a caller naming another route's version gets ``other`` too."""

    def __init__(self) -> None:
        self._policy: ServingPolicy | None = None
        self._current: dict[str, set[str]] = {}
        self._old: dict[str, OrderedDict[str, None]] = {}
        self._customers: set[str] = set()

    def update(self, policy: ServingPolicy) -> None:
        if policy is self._policy:
            return
        current: dict[str, set[str]] = {}
        for route, rp in policy.routes.items():
            names = current[route] = set()
            if rp.prompt_version:
                names.add(rp.prompt_version)
            if rp.canary is not None and rp.canary.prompt_version:
                names.add(rp.canary.prompt_version)
            old = self._old.setdefault(route, OrderedDict())
            for gone in self._current.get(route, set()) - names:  # no longer named
                old[gone] = None
                old.move_to_end(gone)
            for back in names:
                old.pop(back, None)
            while len(old) > MAX_OLD_VERSIONS:
                old.popitem(last=False)
        for dropped in set(self._old) - set(current):
            del self._old[dropped]
        self._current = current
        self._customers = set(sorted(policy.customers)[:MAX_CUSTOMERS])
        self._policy = policy

    def route(self, name: object) -> str:
        p = self._policy
        return name if isinstance(name, str) and p is not None and name in p.routes else OTHER

    def model(self, name: object, route: str) -> str:
        if isinstance(name, str) and (name == route or self.route(name) == name):
            return name
        return OTHER

    def prompt_version(self, name: object, route: str) -> str:
        if name is None or name == "":
            return ""
        if isinstance(name, str) and (name in self._current.get(route, ())
                                      or name in self._old.get(route, ())):
            return name
        return OTHER

    def customer(self, name: object) -> str:
        if not isinstance(name, str) or not name:
            return ""
        return name if name in self._customers else OTHER


class HookMetrics:
    """The families; ``registry`` defaults to the one LiteLLM serves."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry

        def counter(name: str, doc: str, labels: list[str] = COUNTED) -> Counter:
            return Counter(name, doc, labels, registry=r)

        # ``customer`` only on the answers and the quality verdicts on them (what tells
        # one caller's bad traffic from the route's); the rest per version only.
        self.responses = counter("llm_app_responses", "Completions returned to callers")
        self.requests = counter("llm_app_requests",
                                "Requests served or failed, by the version that took them",
                                VERSION)
        self.errors = counter("llm_app_errors", "Requests that failed after a version took them",
                              VERSION)
        self.invalid = counter("llm_app_output_invalid",
                               "Responses that failed the requested JSON output or its schema")
        self.refusals = counter("llm_app_refusals", "Responses that refused")
        self.safety_flags = counter("llm_app_safety_flags",
                                    "Responses stopped by a content filter or flagged by a "
                                    "guardrail")
        self.context_overflow = counter(
            "llm_app_context_overflow",
            "Requests rejected because input plus output exceed the context window")
        self.fallbacks = counter("llm_app_fallback_responses",
                                 "Responses a fallback route served (by the route asked for)",
                                 VERSION)
        self.misrouted = counter("llm_app_misrouted",
                                 "Responses served by a model the policy did not pick", VERSION)
        self.output_tokens = Histogram(
            "llm_app_output_tokens", "Output tokens per completion, by version", VERSION,
            buckets=TOKEN_BUCKETS, registry=r)
        self.latency = Histogram(
            "llm_app_request_latency_seconds", "End-to-end latency per completion, by version",
            VERSION, buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(
            "llm_app_time_to_first_token_seconds",
            "Time to first token per streamed completion, by version", VERSION,
            buckets=TTFT_BUCKETS, registry=r)


_shared: HookMetrics | None = None


def shared() -> HookMetrics:
    """The process's families on the default registry, created once (a registry
    refuses a name twice, and tests build many hooks in one process)."""
    global _shared
    if _shared is None:
        _shared = HookMetrics()
    return _shared
