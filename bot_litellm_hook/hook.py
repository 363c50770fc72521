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

Per caller (the policy's ``customers`` section), keyed by the identity LiteLLM
knows, tried in this order: the key's team id, the key's hash, the end user (the
body's ``user``, or the key's end user). A blocked caller gets 403, one over its
requests or tokens per minute 429 (counted in this proxy process), and its output
cap is applied with the route's, the tightest winning. A listed caller's limits hold
on a route the policy does not list too; a caller it does not list has none.

Every path into a route: LiteLLM's own fallbacks (``router_settings.fallbacks``),
retries and load-balanced deployments call the deployment without the pre-call hook
(LiteLLM issue #17200). ``async_pre_call_deployment_hook`` runs before every
deployment call, those included: it clamps the output again to the tightest of the
request's cap (route and caller, as decided above) and the cap of the route the
deployment serves, and refuses a deployment of a route the policy disabled.

``max_concurrency`` is not enforced here: the LiteLLM driver writes it as the
deployments' ``max_parallel_requests``, which the router enforces with a 429.

The file is re-read only when it changes (inode, size, mtime). A file that
cannot be read or parsed keeps the last good policy in force and is logged:
a broken policy file must never block all traffic.
"""

from __future__ import annotations

import logging
import os
import random
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


def caller_of(policy: ServingPolicy, user_api_key_dict: Any, data: dict) -> str | None:
    """The first of the caller's identities the policy lists (team, key hash, end user)."""
    for candidate in (getattr(user_api_key_dict, "team_id", None),
                      getattr(user_api_key_dict, "token", None),
                      data.get("user"),
                      getattr(user_api_key_dict, "end_user_id", None)):
        if isinstance(candidate, str) and candidate in policy.customers:
            return candidate
    return None


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

    def __init__(self, path: str | os.PathLike[str] | None = None, *, seed: int | None = None):
        super().__init__()
        self._path = Path(path) if path is not None else None
        self._policy = ServingPolicy()  # the last good policy; empty = enforce nothing
        self._stamp: tuple[int, int, int] | None = None
        self._loaded = False
        self._rng = random.Random(seed)
        self._callers = CustomerLimits(time.monotonic)

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
        caller = caller_of(policy, user_api_key_dict, data)
        try:
            self._callers.admit(caller, policy)
        except CustomerRefused as exc:
            raise _refusal(exc, route) from None
        try:
            decision = decide(policy, route, self._rng)
        except RouteDisabled as exc:
            # A 503 tells callers and their retries that this is deliberate and temporary.
            raise litellm.ServiceUnavailableError(
                message=str(exc), llm_provider="llm-incident", model=route
            ) from None
        if caller is not None:
            mine = policy.customer(caller).max_output_tokens
            decision = decision or RouteDecision(route=route, model=route)
            decision.max_output_tokens = _tighter(decision.max_output_tokens, mine)
            decision.extra["customer"] = caller
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
        """Count the answer's tokens against its caller's tokens per minute."""
        meta = (data.get("metadata") or {}).get("llm_incident") or {}
        usage = getattr(response, "usage", None)
        if meta.get("customer") and usage is not None:
            self._callers.record_tokens(meta["customer"], int(getattr(
                usage, "total_tokens", 0) or 0))
        return response


def _refusal(exc: CustomerRefused, route: str) -> Exception:
    request = httpx.Request("POST", "http://llm-incident/v1/chat/completions")
    if exc.status == 403:
        return litellm.PermissionDeniedError(
            message=exc.message, llm_provider="llm-incident", model=route,
            response=httpx.Response(403, request=request))
    return litellm.RateLimitError(message=exc.message, llm_provider="llm-incident", model=route)
