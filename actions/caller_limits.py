"""Per-caller limits a gateway enforces (the serving policy's ``customers`` section).

Shared by the sandbox gateway and the LiteLLM pre-call hook. A blocked caller is
refused (403); one over its requests or tokens per minute is refused (429); a
caller's output cap is applied with the route's by the gateway, the tighter winning.
Windows are the last 60 seconds of the gateway's clock. A request counts when it is
admitted, its tokens (input plus output) when it is answered, so a runaway caller's
long answers fill its token budget. Only callers the policy lists are tracked.

The sandbox asks by caller id (``admit``). The LiteLLM hook asks by ``Counter``: what
one request is counted under (its key, its team, one end user of them), each with the
tightest limits of the policy entries that name it (``admit_counters``); this in-process
version is what it uses when the proxy has no shared Redis.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from actions.policy import CustomerPolicy, ServingPolicy

WINDOW_S = 60.0


class CustomerRefused(Exception):
    """The caller's policy refuses this request: ``status`` 403 (blocked) or 429."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass(frozen=True)
class Counter:
    """What a request is counted under (``key``), the caller it is named as in messages
    (``label``: the policy key), and the limits that hold for it."""

    key: str
    label: str
    rpm: int | None = None
    tpm: int | None = None


def over_limit(counter: Counter, what: str) -> CustomerRefused:
    limit = counter.rpm if what == "requests" else counter.tpm
    return CustomerRefused(429, f"customer '{counter.label}' is over its limit of {limit} "
                           f"{what} per minute; retry later", "customer_rate_limited")


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
        self.admit_counters([Counter(customer, customer, limits.max_requests_per_minute,
                                     limits.max_tokens_per_minute)])
        return limits

    def admit_counters(self, counters: Sequence[Counter]) -> None:
        """Count one request under every counter, or under none if one is over its limit."""
        recent = [(c, *self._recent(c.key)) for c in counters]
        for c, asked, used in recent:
            if c.rpm is not None and len(asked) >= c.rpm:
                raise over_limit(c, "requests")
            if c.tpm is not None and sum(t for _, t in used) >= c.tpm:
                raise over_limit(c, "tokens")
        now = self._clock()
        for _, asked, _ in recent:
            asked.append(now)

    def record_tokens(self, customer: str | None, tokens: int) -> None:
        """An answered request's tokens, for a caller ``admit`` returned limits for."""
        if customer is not None and customer in self._tokens:
            self._recent(customer)[1].append((self._clock(), tokens))

    def record_counters(self, counters: Sequence[Counter], tokens: int) -> None:
        for c in counters:
            self.record_tokens(c.key, tokens)
