"""Enforce the serving policy on every request the LiteLLM proxy receives.

The proxy calls ``async_pre_call_hook`` before routing, with the request body
as ``data``. For a route the policy lists we:

- answer 503 when the route is disabled and has no enabled fallback;
- rewrite ``data["model"]`` to the fallback when one is set (the route's
  traffic moves now, as in the sandbox; disabled routes need one), or to a
  model picked by the route's ``traffic`` weights;
- clamp ``max_tokens`` / ``max_completion_tokens`` to ``max_output_tokens``,
  also when the caller asked for more or for nothing (LiteLLM's own
  ``max_tokens`` in ``litellm_params`` is only a default a caller can override);
- pass ``prompt_version`` on: in the request metadata (logs and callbacks),
  as an ``x-prompt-version`` header to the upstream, and as LiteLLM's own
  ``prompt_version`` when the caller uses a managed prompt (``prompt_id``).

Per caller (the policy's ``customers`` section): who a request is comes from what the
proxy authenticated (the key's hash, its team id, its owner's user id); the body's
``user`` only names an end user *within* its key's or team's namespace (identity.py,
actions/caller_ids.py). Every entry naming the request holds: a blocked one gives 403,
one over its requests or tokens per minute 429, and the output caps are applied with the
route's, the tightest winning. Counts are shared by the proxy's workers and instances
through its Redis when it has one, else kept per process (shared_limits.py; the choice
is logged at startup). A listed caller's limits hold on a route the policy does not list
too; a caller it does not list has none.

Every path into a route: LiteLLM's own fallbacks (``router_settings.fallbacks``),
retries and load-balanced deployments call the deployment without the pre-call hook
(LiteLLM issue #17200). ``async_pre_call_deployment_hook`` runs before every
deployment call, those included: it clamps the output again to the tightest of the
request's cap (route and caller, as decided above) and the cap of the route the
deployment serves, and refuses a deployment of a route the policy disabled.

Each answer and failed request is also measured on the proxy's ``/metrics`` (signals.py,
metrics.py; refusal patterns from ``litellm_settings.llm_incident_refusal_patterns``).

``max_concurrency`` is not enforced here: the LiteLLM driver writes it as the
deployments' ``max_parallel_requests``, which the router enforces with a 429.

The file is re-read only when it changes (inode, size, mtime). A file that
cannot be read or parsed keeps the last good policy in force and is logged:
a broken policy file must never block all traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import litellm
import yaml
from litellm.integrations.custom_logger import CustomLogger
from pydantic import ValidationError

from actions.caller_limits import CustomerLimits, CustomerRefused
from actions.policy import ServingPolicy
from bot_litellm_hook.identity import CallerIndex, Match, counters, identity_of
from bot_litellm_hook.metrics import HookMetrics, shared
from bot_litellm_hook.shared_limits import SharedLimits, describe, proxy_redis
from bot_litellm_hook.signals import PATTERNS_KEY, Signals, refusal_patterns

# The key under ``litellm_settings`` naming the policy file. LiteLLM sets unknown
# ``litellm_settings`` keys as attributes of the ``litellm`` module, which lets
# the proxy's own config carry the path (no environment variable needed).
SETTING_KEY = "llm_incident_policy_file"
PROMPT_HEADER = "x-prompt-version"

log = logging.getLogger("bot_litellm_hook")


class RouteDisabled(Exception):
    """The route is disabled and nothing can take its traffic."""


@dataclass
class RouteDecision:
    """What the hook does to one request (also recorded in its metadata)."""

    route: str
    model: str
    reason: str = "as requested"
    max_output_tokens: int | None = None
    prompt_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _tighter(*caps: int | None) -> int | None:
    present = [c for c in caps if c is not None]
    return min(present) if present else None


def decide(policy: ServingPolicy, route: str, rng: random.Random) -> RouteDecision | None:
    """The policy's verdict for a request to ``route``; None if the policy does not list it."""
    if route not in policy.routes:
        return None
    rp = policy.routes[route]
    model, reason = route, "as requested"
    if not rp.enabled:
        fb = rp.fallback
        if fb is None or not policy.route(fb).enabled:
            why = "no fallback is set" if fb is None else f"its fallback '{fb}' is disabled too"
            raise RouteDisabled(
                f"route '{route}' is disabled by the serving policy and {why}"
                + (f" (changed by: {policy.updated_by})" if policy.updated_by else "")
            )
        model, reason = fb, "route disabled: fallback"
    elif rp.fallback is not None and policy.route(rp.fallback).enabled:
        # A policy fallback moves the route's traffic now, as in the sandbox: the
        # playbooks use it against bad outputs, not only errors. LiteLLM's own
        # router_settings.fallbacks (written by the driver) still covers errors.
        model, reason = rp.fallback, "fallback"
    elif rp.traffic:
        # Only enabled models take a share; the rest of the weight is spread over them.
        weights = {m: w for m, w in rp.traffic.items() if w > 0 and policy.route(m).enabled}
        if weights:
            model = _pick(weights, rng)
            reason = "traffic weights"
    target = policy.route(model)
    prompt_version = rp.prompt_version or target.prompt_version
    extra: dict[str, Any] = {}
    canary = rp.canary
    if canary is not None and reason == "as requested" and rng.random() < canary.weight:
        # A release's canary: this share of the route's own traffic gets the new
        # version (never on top of a fallback or a disable: those are mitigations).
        model = canary.model or model
        prompt_version = canary.prompt_version or prompt_version
        reason, extra = "canary", {"canary": canary.release or "canary"}
    return RouteDecision(
        route=route,
        model=model,
        reason=reason,
        # The tighter of the asked-for route's cap and the serving route's cap.
        max_output_tokens=_tighter(rp.max_output_tokens, target.max_output_tokens),
        prompt_version=prompt_version,
        extra=extra,
    )


def callers_of(index: CallerIndex, user_api_key_dict: Any, data: dict) -> list[Match]:
    """Every ``customers`` entry naming this request (by what the proxy authenticated)."""
    return index.matches(identity_of(user_api_key_dict, data)) if index else []


def _pick(weights: dict[str, float], rng: random.Random) -> str:
    total = sum(weights.values())
    point = rng.random() * total
    for model, weight in sorted(weights.items()):
        point -= weight
        if point < 0:
            return model
    return max(weights, key=lambda m: weights[m])


def clamp(body: dict[str, Any], cap: int) -> None:
    """``max_tokens`` / ``max_completion_tokens`` at most ``cap``, also when the caller
    asked for more or for nothing."""
    asked = [k for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
    for key in asked:
        try:
            body[key] = min(int(body[key]), cap)
        except (TypeError, ValueError):
            body[key] = cap  # a nonsense limit from the caller gets the cap
    if not asked:
        body["max_tokens"] = cap


def apply_decision(data: dict[str, Any], d: RouteDecision) -> dict[str, Any]:
    """Rewrite the request body in place according to ``d``; returns it."""
    data["model"] = d.model
    cap = d.max_output_tokens
    if cap is not None:
        clamp(data, cap)
    if d.prompt_version is not None:
        headers = data.get("extra_headers")
        data["extra_headers"] = {**(headers if isinstance(headers, dict) else {})}
        data["extra_headers"][PROMPT_HEADER] = d.prompt_version
        if data.get("prompt_id") is not None:
            data["prompt_version"] = d.prompt_version
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        metadata = data["metadata"] = {}
    if d.prompt_version is not None:
        metadata["prompt_version"] = d.prompt_version
    metadata["llm_incident"] = {
        "route": d.route,
        "model": d.model,
        "reason": d.reason,
        "max_output_tokens": cap,
        **d.extra,
    }
    return data


class PolicyHook(CustomLogger):
    """The pre-call hook; ``path`` overrides ``litellm_settings.llm_incident_policy_file``."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, seed: int | None = None,
                 redis: Any | None = None, metrics: HookMetrics | None = None):
        super().__init__()
        self._metrics = metrics  # the families are registered at first use (signals.py)
        self._signals: Signals | None = None
        self._path = Path(path) if path is not None else None
        self._policy = ServingPolicy()  # the last good policy; empty = enforce nothing
        self._stamp: tuple[int, int, int] | None = None
        self._loaded = False
        self._rng = random.Random(seed)
        self._index = CallerIndex(self._policy)
        self._callers = CustomerLimits(time.monotonic)
        # ``redis``: a LiteLLM RedisCache to count in (tests); else the proxy's, if any.
        self._redis = redis
        self._shared: SharedLimits | None = None
        self._said: str | None = None
        with contextlib.suppress(RuntimeError):  # outside the proxy's startup: no loop
            asyncio.get_running_loop().create_task(self._announce_when_started())

    async def _announce_when_started(self) -> None:
        # Imported while the proxy loads its config; its Redis is settled once the proxy
        # has its router (the config is loaded then). Else it is said at the first request.
        deadline = time.monotonic() + 600
        proxy = sys.modules.get("litellm.proxy.proxy_server")
        while proxy is not None and getattr(proxy, "llm_router", None) is None \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        self._limiter()

    def _limiter(self) -> SharedLimits | None:
        """Where requests are counted now; logged when that is first known or changes."""
        cache = self._redis if self._redis is not None else proxy_redis()
        if self._said is not None and (self._shared and self._shared.cache) is cache:
            return self._shared
        self._shared = SharedLimits(cache, self._callers) if cache is not None else None
        self._said = describe(cache)
        (log.info if cache is not None else log.warning)("%s", self._said)
        return self._shared

    def policy_path(self) -> Path | None:
        if self._path is not None:
            return self._path
        configured = getattr(litellm, SETTING_KEY, None)
        return Path(configured) if configured else None

    def current(self) -> ServingPolicy:
        """The policy in force, re-read only when the file changed."""
        path = self.policy_path()
        if path is None:
            if self._stamp != (0, 0, 0):
                log.warning(
                    "no serving policy file configured (litellm_settings.%s); "
                    "requests pass unchanged",
                    SETTING_KEY,
                )
                self._stamp = (0, 0, 0)
            return self._policy
        try:
            st = path.stat()
        except OSError as exc:
            return self._keep(("stat", exc.errno or 0, 0), f"{path}: {exc.strerror or exc}")
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return self._policy
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"a serving policy must be a mapping, got {type(data).__name__}")
            policy = ServingPolicy.model_validate(data)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, ValidationError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return self._keep(stamp, f"{path}: {first}")
        self._policy, self._stamp, self._loaded = policy, stamp, True
        self._index = CallerIndex(policy)
        log.info("serving policy loaded from %s (%d routes)", path, len(policy.routes))
        return policy

    def _keep(self, stamp: tuple[Any, ...], problem: str) -> ServingPolicy:
        if stamp != self._stamp:  # log once per broken version, not on every request
            kept = "the last good policy stays in force" if self._loaded else "no policy enforced"
            log.error("cannot use the serving policy file: %s; %s", problem, kept)
            self._stamp = stamp
        return self._policy

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any
    ) -> dict | None:
        route = data.get("model")
        if not isinstance(route, str):
            return data
        policy = self.current()
        _drop_forged_decision(data)
        found = callers_of(self._index, user_api_key_dict, data)
        try:
            await self._admit(found)
        except CustomerRefused as exc:
            raise _refusal(exc, route) from None
        try:
            decision = decide(policy, route, self._rng)
        except RouteDisabled as exc:
            # A 503 tells callers and their retries that this is deliberate and temporary.
            raise litellm.ServiceUnavailableError(
                message=str(exc), llm_provider="llm-incident", model=route
            ) from None
        if found:
            mine = _tighter(*(m.limits.max_output_tokens for m in found))
            decision = decision or RouteDecision(route=route, model=route)
            decision.max_output_tokens = _tighter(decision.max_output_tokens, mine)
            decision.extra["customer"] = found[0].label
            decision.extra["customers"] = sorted({m.label for m in found})
        if decision is None:
            return data
        return apply_decision(data, decision)

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any],
                                             call_type: Any) -> dict[str, Any] | None:
        """Before each deployment call (fallbacks, retries, load balancing included)."""
        meta = kwargs.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        group = meta.get("model_group")
        decided = meta.get("llm_incident")
        ours: dict[str, Any] = decided if isinstance(decided, dict) else {}
        policy = self.current()
        if not isinstance(group, str) or (group not in policy.routes and not ours):
            return None  # not a route the policy speaks of, nor a request it decided
        served = policy.routes.get(group)
        if served is not None and not served.enabled:
            # A router fallback into a route the policy disabled: refuse, as a request
            # to it would be (its own fallback was already applied by the pre-call hook).
            raise litellm.ServiceUnavailableError(
                message=f"route '{group}' is disabled by the serving policy (reached as a "
                        f"fallback of '{ours.get('route', group)}')",
                llm_provider="llm-incident", model=group)
        cap = _tighter(ours.get("max_output_tokens"),
                       served.max_output_tokens if served is not None else None)
        if cap is None:
            return None
        clamp(kwargs, cap)
        return kwargs

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any,
                                           response: Any) -> Any:
        """Count the answer's tokens against its callers' tokens per minute."""
        usage = getattr(response, "usage", None)
        tokens = int(getattr(usage, "total_tokens", 0) or 0) if usage is not None else 0
        # Who it was is worked out again from the authenticated key, never read back
        # from the request's metadata (a caller could have written that).
        mine = [c for c in counters(callers_of(self._index, user_api_key_dict, data))
                if c.tpm is not None]
        if mine and tokens > 0:
            shared = self._limiter()
            if shared is not None:
                await shared.record(mine, tokens)
            else:
                self._callers.record_counters(mine, tokens)
        return response

    def signals(self) -> Signals:
        if self._signals is None:
            patterns = refusal_patterns(getattr(litellm, PATTERNS_KEY, None))
            self._signals = Signals(self._metrics or shared(), patterns)
        return self._signals

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        """Measure the answer a caller got (once per request, streams assembled)."""
        self.signals().success(self.current(), kwargs, response_obj, start_time, end_time)

    async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                           user_api_key_dict: Any, traceback_str: Any = None) -> Any:
        """Count a request that failed after the policy admitted it (overflows apart)."""
        self.signals().failure(self.current(), request_data, original_exception)
        return None

    async def _admit(self, found: list[Match]) -> None:
        blocked = next((m for m in found if m.limits.blocked), None)
        if blocked is not None:
            policy = self._policy
            raise CustomerRefused(403, f"customer '{blocked.label}' is blocked by the serving "
                                  "policy" + (f" ({policy.updated_by})" if policy.updated_by
                                              else ""), "customer_blocked")
        mine = counters(found)
        shared = self._limiter()
        if not mine:
            return
        if shared is not None:
            await shared.admit(mine)
        else:
            self._callers.admit_counters(mine)


def _drop_forged_decision(data: dict[str, Any]) -> None:
    """The hook's own metadata key, if the caller sent one, goes: only the hook writes it."""
    for field_name in ("metadata", "litellm_metadata"):
        meta = data.get(field_name)
        if isinstance(meta, dict):
            meta.pop("llm_incident", None)


def _refusal(exc: CustomerRefused, route: str) -> Exception:
    request = httpx.Request("POST", "http://llm-incident/v1/chat/completions")
    if exc.status == 403:
        return litellm.PermissionDeniedError(
            message=exc.message, llm_provider="llm-incident", model=route,
            response=httpx.Response(403, request=request))
    return litellm.RateLimitError(message=exc.message, llm_provider="llm-incident", model=route)
