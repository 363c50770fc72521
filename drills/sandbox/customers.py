"""Per-caller limits in the sandbox gateway (the serving policy's ``customers`` section).

The caller is the request body's ``user`` (OpenAI's end-user field, which LiteLLM
reports as ``end_user``). A blocked caller gets 403; one over its requests or tokens
per minute gets 429; a caller's output cap is applied with the route's, the tighter
winning. Windows are the last 60 seconds of the gateway's clock; tokens count when
a request is served (input plus output), so a runaway caller's long answers fill
its token budget.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from actions.policy import CustomerPolicy, ServingPolicy

WINDOW_S = 60.0


class CustomerRefused(Exception):
    """The caller's policy refuses this request: ``status`` 403 (blocked) or 429."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class CustomerLimits:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._seen: dict[str, deque[tuple[float, int]]] = {}  # (at, tokens) per caller

    def _window(self, customer: str) -> deque[tuple[float, int]]:
        seen = self._seen.setdefault(customer, deque())
        cutoff = self._clock() - WINDOW_S
        while seen and seen[0][0] <= cutoff:
            seen.popleft()
        return seen

    def admit(self, customer: str | None, policy: ServingPolicy) -> CustomerPolicy | None:
        """The caller's limits (None for an unknown caller); raise if it may not go on."""
        if customer is None or customer not in policy.customers:
            return None
        limits = policy.customer(customer)
        if limits.blocked:
            raise CustomerRefused(403, f"customer '{customer}' is blocked by the serving "
                                  "policy" + (f" ({policy.updated_by})" if policy.updated_by
                                              else ""), "customer_blocked")
        seen = self._window(customer)
        rpm, tpm = limits.max_requests_per_minute, limits.max_tokens_per_minute
        if rpm is not None and len(seen) >= rpm:
            raise CustomerRefused(429, f"customer '{customer}' is over its limit of {rpm} "
                                  "requests per minute; retry later", "customer_rate_limited")
        if tpm is not None and sum(t for _, t in seen) >= tpm:
            raise CustomerRefused(429, f"customer '{customer}' is over its limit of {tpm} "
                                  "tokens per minute; retry later", "customer_rate_limited")
        return limits

    def record(self, customer: str | None, tokens: int) -> None:
        if customer is not None:
            self._window(customer).append((self._clock(), tokens))
