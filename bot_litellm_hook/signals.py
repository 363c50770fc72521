"""Count each response and each failure in the hook's families (metrics.py).

Two LiteLLM callbacks feed it, each once per caller request:

- ``async_log_success_event(kwargs, response, start, end)``: the successful
  deployment call (after the router's fallbacks and retries; a stream arrives
  assembled). Its ``kwargs`` carry the request's metadata (the hook's decision under
  ``llm_incident``), the optional params (``response_format``, ``tools``), the
  served ``model_group``, the stream's ``completion_start_time`` and guardrail records.
- ``async_post_call_failure_hook(request_data, exc, ...)``: a request the caller got
  an error for. ``async_log_failure_event`` is not used: it fires per failed
  deployment attempt, so a fallback that then succeeded would count as an error.

Requests the hook itself refused (blocked, over a limit, a disabled route) are no
version's failures and are not counted, as the sandbox counts only requests past
admission.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from actions.policy import ServingPolicy
from bot_litellm_hook import measure
from bot_litellm_hook.metrics import HookMetrics, Labels

log = logging.getLogger("bot_litellm_hook")
HOOK_PROVIDER = "llm-incident"  # the llm_provider of the errors the hook raises
PATTERNS_KEY = "llm_incident_refusal_patterns"  # under litellm_settings: a list of regexes


def refusal_patterns(configured: object) -> tuple[str, ...]:
    """The configured refusal patterns, or the defaults (logged) when they are unusable."""
    if configured is None:
        return measure.DEFAULT_REFUSAL_PATTERNS
    try:
        if not isinstance(configured, list | tuple) or not all(
                isinstance(p, str) for p in configured):
            raise ValueError(f"expected a list of regular expressions, got {configured!r}")
        patterns = tuple(configured)
        measure.compile_patterns(patterns)
        return patterns
    except (ValueError, re.error) as exc:
        log.error("litellm_settings.%s: %s; the default refusal patterns are used",
                  PATTERNS_KEY, exc)
        return measure.DEFAULT_REFUSAL_PATTERNS


def _seconds(t: Any) -> float | None:
    if isinstance(t, datetime):
        return t.timestamp()
    return float(t) if isinstance(t, int | float) else None


def _router_fallbacks(group: str) -> list[str]:
    """The proxy router's configured fallbacks of ``group`` (none outside a proxy)."""
    proxy = sys.modules.get("litellm.proxy.proxy_server")
    router = getattr(proxy, "llm_router", None)
    out: list[str] = []
    for kind in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
        for entry in getattr(router, kind, None) or []:
            if isinstance(entry, Mapping) and isinstance(entry.get(group), list):
                out.extend(str(m) for m in entry[group])
    return out


class Signals:
    def __init__(self, metrics: HookMetrics,
                 refusal_patterns: tuple[str, ...] = measure.DEFAULT_REFUSAL_PATTERNS) -> None:
        self.metrics = metrics
        self.labels = Labels()
        self.refusal_patterns = refusal_patterns
        self._complained = False

    def _version(self, meta: Mapping[str, Any], served: object) -> tuple[tuple[str, ...], str,
                                                                          str, dict[str, Any]]:
        raw = meta.get("llm_incident")
        ours: dict[str, Any] = raw if isinstance(raw, dict) else {}
        lb = self.labels
        route = lb.route(ours.get("route") or served)
        chosen = ours.get("model") or ours.get("route") or served
        model = lb.model(served if served is not None else chosen, route)
        role = "canary" if ours.get("reason") == "canary" else "baseline"
        pv = lb.prompt_version(meta.get("prompt_version"), route)
        return (route, model, pv, role), lb.customer(ours.get("customer")), str(chosen), ours

    def success(self, policy: ServingPolicy, kwargs: Mapping[str, Any], response: Any,
                start: Any, end: Any) -> None:
        try:
            self._success(policy, kwargs, response, start, end)
        except Exception:  # measuring must never fail a served request
            self._complain()

    def failure(self, policy: ServingPolicy, request_data: Mapping[str, Any],
                exc: BaseException) -> None:
        try:
            self._failure(policy, request_data, exc)
        except Exception:
            self._complain()

    def _complain(self) -> None:
        if not self._complained:
            self._complained = True
            log.exception("could not measure a response (logged once; serving goes on)")

    def _success(self, policy: ServingPolicy, kwargs: Mapping[str, Any], response: Any,
                 start: Any, end: Any) -> None:
        self.labels.update(policy)
        lp = kwargs.get("litellm_params") or {}
        meta = lp.get("metadata") or kwargs.get("metadata") or {}
        slo = kwargs.get("standard_logging_object") or {}
        served = slo.get("model_group") or meta.get("model_group")
        if served is None and "llm_incident" not in meta:
            return  # not a caller's request (a health check, a background call)
        version, customer, chosen, _ = self._version(meta, served)
        m, counted = self.metrics, (*version, customer)
        m.requests.labels(*version).inc()
        m.responses.labels(*counted).inc()
        params = kwargs.get("optional_params") or slo.get("model_parameters") or {}
        refused = measure.refused(response, self.refusal_patterns)
        flagged = measure.safety_flagged(response, slo.get("guardrail_information"))
        if refused:
            m.refusals.labels(*counted).inc()
        if flagged:
            m.safety_flags.labels(*counted).inc()
        # A refusal is no JSON either; counted once, as what it is (one fault, one page).
        if not (refused or flagged) and measure.validity(params, response) is False:
            m.invalid.labels(*counted).inc()
        if isinstance(served, str) and served != chosen:
            depth = lp.get("fallback_depth") or kwargs.get("fallback_depth") or 0
            if depth or served in _router_fallbacks(chosen):
                m.fallbacks.labels(*version).inc()
            else:
                m.misrouted.labels(*version).inc()
        tokens = measure.output_tokens(response)
        if tokens is not None:
            m.output_tokens.labels(*version).observe(tokens)
        began, ended = _seconds(start), _seconds(end)
        if began is not None and ended is not None:
            m.latency.labels(*version).observe(max(0.0, ended - began))
            first = _seconds(kwargs.get("completion_start_time"))
            if kwargs.get("stream") and first is not None:
                m.ttft.labels(*version).observe(max(0.0, first - began))

    def _failure(self, policy: ServingPolicy, request_data: Mapping[str, Any],
                 exc: BaseException) -> None:
        if getattr(exc, "llm_provider", None) == HOOK_PROVIDER:
            return  # refused by the policy before any version took it
        meta = request_data.get("metadata") or request_data.get("litellm_metadata") or {}
        meta = meta if isinstance(meta, Mapping) else {}
        self.labels.update(policy)
        # Decided by the hook: the model it chose took the request; else the one asked.
        asked = None if "llm_incident" in meta else request_data.get("model")
        version, customer, _, _ = self._version(meta, asked)
        counted = (*version, customer)
        m = self.metrics
        m.requests.labels(*version).inc()
        m.errors.labels(*version).inc()
        if measure.failure_kind(exc) == "context_overflow":
            m.context_overflow.labels(*counted).inc()
