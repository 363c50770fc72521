"""The sandbox gateway's decisions for one request, separate from HTTP.

Order of decisions, as in a real gateway: route lookup, serving policy
(disabled / fallback chain), concurrency admission, prompt version, traffic
split, routing faults, context window, provider faults, then the answer's shape
(output length under the caps, latency, content faults, quality score).

Fallback semantics (a decision the bot's actions rely on): a route whose policy
names a ``fallback`` is served by that route - the ``fallback`` action means
"send this route's callers to the fallback" - and a disabled route without a
fallback answers 503. The caller's route stays the ``requested_model`` /
``route`` label, the prompt version stays the requested route's, and the tighter
of the two routes' output caps applies.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter as Tally
from collections.abc import Callable
from typing import Any, NoReturn

from actions.caller_limits import CustomerLimits, CustomerRefused
from drills.sandbox.exchange import ChatRequest, GatewayError, Served
from drills.sandbox.faults import FaultBook, LatencySpike, _Fault
from drills.sandbox.metrics import SandboxMetrics
from drills.sandbox.policy import PolicyReader
from drills.sandbox.shape import SandboxConfig, count_tokens, pick_weighted, synthetic_text

MAX_FALLBACK_HOPS = 4
REFUSAL = "I'm sorry, but I can't help with that request."
_EXCEPTION_CLASS = {
    400: "BadRequestError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class Gateway:
    def __init__(
        self,
        config: SandboxConfig,
        policy: PolicyReader,
        faults: FaultBook,
        metrics: SandboxMetrics,
        *,
        rng: random.Random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.policy = policy
        self.faults = faults
        self.metrics = metrics
        self.rng = rng
        # The sampled quality score's spread has a generator of its own, so adding it
        # left every seeded traffic sequence as it was.
        self.quality_rng = random.Random(0)
        self.clock = clock
        self.in_flight: Tally[str] = Tally()  # per requested route
        self.running: Tally[str] = Tally()  # per model
        # Whether the model's last admitted request hit a saturation latency spike.
        self.thrashing: dict[str, bool] = {}
        self.customers = CustomerLimits(clock)
        # The caller of the request being decided: ``admit`` runs start to end with no
        # await, so one attribute serves every metric it records.
        self._caller = ""

    # -- admission ------------------------------------------------------------------

    def admit(self, req: ChatRequest) -> Served:
        """Decide the request; on success a concurrency slot is held until ``release``."""
        requested = req.model
        self._caller = req.user or ""
        if requested not in self.config.routes:
            self._fail("unknown", "", GatewayError(
                404,
                f"route '{requested}' does not exist; known routes: "
                f"{', '.join(sorted(self.config.routes))}",
                code="model_not_found", param="model",
            ))  # fmt: skip
        policy = self.policy.current()
        rp = policy.route(requested)
        try:
            self.customers.admit(req.user, policy)
        except CustomerRefused as exc:
            self._fail(requested, "", GatewayError(
                exc.status, exc.message,
                type="permission_error" if exc.status == 403 else "rate_limit_error",
                code=exc.code))  # fmt: skip
        serving, fallback = self._resolve(requested, policy)
        if rp.max_concurrency is not None and self.in_flight[requested] >= rp.max_concurrency:
            self._fail(requested, "", GatewayError(
                429,
                f"route '{requested}' is at its max_concurrency of {rp.max_concurrency} "
                "in-flight requests; retry later",
                type="rate_limit_error", code="rate_limit_exceeded",
            ))  # fmt: skip
        self.in_flight[requested] += 1
        try:
            served = self._serve(req, policy, serving, fallback)
        except GatewayError:
            self.in_flight[requested] -= 1
            raise
        self.running[served.model] += 1
        self.thrashing[served.model] = served.thrashing
        self._update_engine_gauges(served.model)
        return served

    def release(self, served: Served) -> None:
        self.in_flight[served.requested_route] -= 1
        self.running[served.model] -= 1
        self._update_engine_gauges(served.model)

    def _resolve(self, requested: str, policy: Any) -> tuple[str, str | None]:
        """The route that serves ``requested`` after disabled/fallback hops."""
        route, hops = requested, [requested]
        while True:
            rp = policy.route(route)
            if rp.fallback is None:
                if not rp.enabled:
                    self._fail(requested, "", GatewayError(
                        503,
                        f"route '{route}' is disabled by the serving policy and has no fallback",
                        type="service_unavailable", code="route_disabled",
                    ))  # fmt: skip
                return route, (route if route != requested else None)
            nxt = rp.fallback
            if nxt not in self.config.routes or nxt in hops or len(hops) > MAX_FALLBACK_HOPS:
                why = "is not a known route" if nxt not in self.config.routes else "loops"
                self._fail(requested, "", GatewayError(
                    503,
                    f"fallback '{nxt}' of route '{route}' {why} "
                    f"(chain: {' -> '.join([*hops, nxt])})",
                    type="service_unavailable", code="bad_fallback",
                ))  # fmt: skip
            hops.append(nxt)
            route = nxt

    # -- serving --------------------------------------------------------------------

    def _serve(self, req: ChatRequest, policy: Any, serving: str, fallback: str | None) -> Served:
        requested = req.model
        rp, sp = policy.route(requested), policy.route(serving)
        pv = rp.prompt_version or self.config.routes[requested].prompt_version
        weights = sp.traffic or self.config.routes[serving].traffic
        unknown = [m for m in weights if m not in self.config.models]
        if unknown:
            self._fail(requested, "", GatewayError(
                503,
                f"serving policy sends route '{serving}' to unknown model(s) "
                f"{', '.join(unknown)}",
                type="service_unavailable", code="unknown_model",
            ))  # fmt: skip
        model = pick_weighted(weights, self.rng)
        if rp.canary is not None and self.rng.random() < rp.canary.weight:
            # A release's canary: this request is served with the new version (its
            # metrics and faults go by that version, so only the canary sees a bad one).
            pv = rp.canary.prompt_version or pv
            if rp.canary.model is not None:
                if rp.canary.model not in self.config.models:
                    self._fail(requested, "", GatewayError(
                        503, f"the canary of route '{requested}' names unknown model "
                        f"'{rp.canary.model}'", type="service_unavailable",
                        code="unknown_model"), pv)  # fmt: skip
                model = rp.canary.model
        misrouted = False
        for f in self._matching("bad_routing", requested, model, pv):
            if self.rng.random() < f.ratio:  # type: ignore[attr-defined]
                model, misrouted = self._wrong_model(f.to_model, weights), True  # type: ignore[attr-defined]
                break
        shape = self.config.models[model]

        input_tokens = count_tokens(req.messages)
        for f in self._matching("context_overflow", requested, model, pv):
            extra = f.extra_input_tokens  # type: ignore[attr-defined]
            if self.rng.random() < f.ratio:  # type: ignore[attr-defined]
                if not extra:
                    self._overflow(requested, model, pv, input_tokens, shape.context_window)
                input_tokens += extra
        # The route's cap, the serving route's, and the caller's own: the tightest wins.
        mine = policy.customer(req.user).max_output_tokens if req.user else None
        caps = [c for c in (rp.max_output_tokens, sp.max_output_tokens, mine) if c is not None]
        limits = [*caps, *([req.max_tokens] if req.max_tokens else [])]
        reserved = min(limits) if limits else 0
        if input_tokens + reserved > shape.context_window:
            self._overflow(requested, model, pv, input_tokens + reserved, shape.context_window)

        for f in self._matching("provider_errors", requested, model, pv):
            if self.rng.random() < f.ratio:  # type: ignore[attr-defined]
                status = self.rng.choice(f.statuses)  # type: ignore[attr-defined]
                self._fail(requested, model, GatewayError(
                    status,
                    f"upstream provider for model '{model}' answered {status} (injected fault)",
                    type="api_error", code="provider_error",
                ), pv)  # fmt: skip

        wanted = shape.output_tokens.sample(self.rng)
        for f in self._matching("token_blowup", requested, model, pv):
            wanted = round(wanted * f.factor)  # type: ignore[attr-defined]
        output_tokens = min([wanted, *limits])
        finish = "length" if output_tokens < wanted else "stop"

        ttft, thrashing = shape.ttft_s, False
        for f in self._matching("latency_spike", requested, model, pv):
            assert isinstance(f, LatencySpike)
            if f.active_at(rp.max_concurrency):
                ttft += f.seconds
                thrashing = thrashing or f.saturation_concurrency is not None

        flags: list[str] = []
        if self._hit("refusals", requested, model, pv):
            content, flags = REFUSAL, ["refusal"]
            output_tokens, finish = min(output_tokens, 12), "stop"
        else:
            content = synthetic_text(output_tokens, self.rng)
            if req.wants_json:
                content = json.dumps({"answer": content})
                if self._hit("malformed_output", requested, model, pv):
                    # A truncated object: what a model that lost the format produces.
                    content, flags = content[: max(1, len(content) // 2)], ["invalid_output"]
        if self._hit("safety_flags", requested, model, pv):
            flags.append("safety_flag")
            finish = "content_filter"

        quality = shape.quality - sum(
            f.drop  # type: ignore[attr-defined]
            for f in self._matching("quality_drop", requested, model, pv)
        )
        served = Served(
            id=f"chatcmpl-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:24]}",
            created=int(self.clock()),
            requested_route=requested,
            route=serving,
            model=model,
            prompt_version=pv,
            fallback_route=fallback,
            customer=req.user if req.user in policy.customers else None,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            content=content,
            finish_reason=finish,
            ttft_s=ttft,
            per_token_s=shape.per_token_s,
            cost=shape.cost(input_tokens, output_tokens),
            quality=min(1.0, max(0.0, quality)),
            thrashing=thrashing,
            flags=flags + (["misrouted"] if misrouted else []),
        )
        self._record(served)
        return served

    def _matching(self, kind: str, route: str, model: str | None, pv: str) -> list[_Fault]:
        # The caller of the request being decided scopes customer faults.
        return self.faults.matching(kind, route, model, pv, self._caller or None)

    def _hit(self, kind: str, route: str, model: str, pv: str) -> bool:
        return any(
            self.rng.random() < f.ratio  # type: ignore[attr-defined]
            for f in self._matching(kind, route, model, pv)
        )

    def _wrong_model(self, to_model: str | None, weights: dict[str, float]) -> str:
        if to_model is not None and to_model in self.config.models:
            return to_model
        others = sorted(m for m in self.config.models if m not in weights)
        return self.rng.choice(others or sorted(self.config.models))

    def _overflow(self, route: str, model: str, pv: str, needed: int, window: int) -> NoReturn:
        self.metrics.context_overflow.labels(route, model, pv).inc()
        self._fail(route, model, GatewayError(
            400,
            f"this model's maximum context length is {window} tokens; the request needs "
            f"{needed} (input plus reserved output)",
            code="context_length_exceeded", param="messages",
        ), pv)  # fmt: skip

    # -- metrics --------------------------------------------------------------------

    def _fail(self, route: str, model: str, err: GatewayError, pv: str | None = None) -> NoReturn:
        m = self.metrics
        m.requests.labels(route, model, self._caller, str(err.status)).inc()
        m.failed.labels(route, model, str(err.status), _EXCEPTION_CLASS.get(err.status, "")).inc()
        if pv is not None:  # past admission: the version that took it is known
            m.app_requests.labels(route, model, pv).inc()
            m.app_errors.labels(route, model, pv).inc()
        raise err

    def _record(self, s: Served) -> None:
        m, gw = self.metrics, (s.requested_route, s.model)
        app = (s.requested_route, s.model, s.prompt_version)
        caller = (*gw, self._caller)  # LiteLLM's per-caller label set, end_user only
        m.requests.labels(*caller, "200").inc()
        m.input_tokens.labels(*caller).inc(s.input_tokens)
        m.output_tokens.labels(*caller).inc(s.output_tokens)
        m.spend.labels(*caller).inc(s.cost)
        self.customers.record_tokens(s.customer, s.input_tokens + s.output_tokens)
        m.latency.labels(*gw).observe(s.total_s)
        m.ttft.labels(s.model).observe(s.ttft_s)
        m.responses.labels(*app).inc()
        # Per request and per version: what the release guard's judge compares.
        m.app_output_tokens.labels(*app).observe(s.output_tokens)
        m.app_cost.labels(*app).observe(s.cost)
        m.app_latency.labels(*app).observe(s.total_s)
        m.app_ttft.labels(*app).observe(s.ttft_s)
        m.app_requests.labels(*app).inc()
        # A sampled quality score per answer, spread like a grader's, for the judge's
        # rank test (the gauge below keeps the recent level the alert rules read).
        sampled = s.quality + self.quality_rng.gauss(0.0, 0.05)
        m.app_quality.labels(*app).observe(min(1.0, max(0.0, sampled)))
        if s.fallback_route:
            m.fallbacks.labels(s.requested_route, s.fallback_route, s.model).inc()
            m.app_fallbacks.labels(*app).inc()
        for flag, counter in (
            ("invalid_output", m.invalid),
            ("refusal", m.refusals),
            ("safety_flag", m.safety_flags),
            ("misrouted", m.misrouted),
        ):
            if flag in s.flags:
                counter.labels(*app).inc()
        m.set_quality(*app, s.quality)

    def _update_engine_gauges(self, model: str) -> None:
        capacity = self.config.models[model].max_num_seqs
        usage = min(1.0, self.running[model] / capacity)
        # A thrashing engine keeps its cache full even between requests.
        thrashing = self.thrashing.get(model, False)
        self.metrics.kv_cache.labels(model).set(max(usage, 0.98) if thrashing else usage)
