"""Per-caller limits a gateway enforces (the serving policy's ``customers`` section).

Shared by the sandbox gateway and the LiteLLM pre-call hook. A blocked caller is
refused (403); one over its requests or tokens per minute is refused (429); a
caller's output cap is applied with the route's by the gateway, the tighter winning.
Windows are the last 60 seconds of the gateway's clock. A request counts when it is
admitted, its tokens (input plus output) when it is answered, so a runaway caller's
long answers fill its token budget. Only callers the policy lists are tracked.
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
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}

    def _recent(self, customer: str) -> tuple[deque[float], deque[tuple[float, int]]]:
        cutoff = self._clock() - WINDOW_S
        asked = self._requests.setdefault(customer, deque())
        used = self._tokens.setdefault(customer, deque())
        while asked and asked[0] <= cutoff:
            asked.popleft()
        while used and used[0][0] <= cutoff:
            used.popleft()
        return asked, used

    def admit(self, customer: str | None, policy: ServingPolicy) -> CustomerPolicy | None:
        """The caller's limits (None for an unknown caller); raise if it may not go on."""
        if customer is None or customer not in policy.customers:
            return None
        limits = policy.customer(customer)
        if limits.blocked:
            raise CustomerRefused(403, f"customer '{customer}' is blocked by the serving "
                                  "policy" + (f" ({policy.updated_by})" if policy.updated_by
                                              else ""), "customer_blocked")
        asked, used = self._recent(customer)
        rpm, tpm = limits.max_requests_per_minute, limits.max_tokens_per_minute
        if rpm is not None and len(asked) >= rpm:
            raise CustomerRefused(429, f"customer '{customer}' is over its limit of {rpm} "
                                  "requests per minute; retry later", "customer_rate_limited")
        if tpm is not None and sum(t for _, t in used) >= tpm:
            raise CustomerRefused(429, f"customer '{customer}' is over its limit of {tpm} "
                                  "tokens per minute; retry later", "customer_rate_limited")
        asked.append(self._clock())
        return limits

    def record_tokens(self, customer: str | None, tokens: int) -> None:
        """An answered request's tokens, for a caller ``admit`` returned limits for."""
        if customer is not None and customer in self._tokens:
            self._recent(customer)[1].append((self._clock(), tokens))
