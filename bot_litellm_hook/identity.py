"""Who a request is, from what the proxy authenticated, and which policy entries name it.

The proxy authenticates a key; ``UserAPIKeyAuth`` carries its hash (``token``), its
``team_id`` and its owner's ``user_id``. Those are the principals a request has. The
body's ``user`` (and LiteLLM's ``end_user_id``, taken from the same caller-set fields)
is a name the caller chose, so it only ever names an end user *of its key or team*
(``key:HASH/alice``, ``team:acme/alice``): a key cannot spend, or escape, another key's
limits by sending someone else's name. Grammar and normalisation: actions/caller_ids.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from actions.caller_ids import KINDS, Kind, normalise, parse_customer_id
from actions.caller_limits import Counter
from actions.policy import CustomerPolicy, ServingPolicy

# The counter an end-user id in another script is counted under (see ``CallerIndex``).
SUSPECT = "?"


@dataclass(frozen=True)
class Identity:
    principals: tuple[tuple[Kind, str], ...]  # ("team", id), ("key", hash), ("user", id)
    end_users: tuple[tuple[str, bool], ...]  # (normalised, exact) as ``normalise`` says


def identity_of(user_api_key_dict: Any, data: dict[str, Any]) -> Identity:
    principals = []
    for kind, attr in zip(KINDS, ("team_id", "token", "user_id"), strict=True):
        value = getattr(user_api_key_dict, attr, None)
        done = normalise(value) if isinstance(value, str) else None
        if done is not None:
            principals.append((kind, done[0]))
    names = []
    for raw in (data.get("user"), getattr(user_api_key_dict, "end_user_id", None)):
        done = normalise(raw) if isinstance(raw, str) else None
        if done is not None and done not in names:
            names.append(done)
    return Identity(tuple(principals), tuple(names))


@dataclass(frozen=True)
class Match:
    label: str  # the policy key, as written
    limits: CustomerPolicy
    counter: str  # what its requests are counted under


def _low(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _strictest(entries: Iterable[tuple[str, CustomerPolicy]]) -> CustomerPolicy:
    limits = [lim for _, lim in entries]
    return CustomerPolicy(
        blocked=any(lim.blocked for lim in limits),
        max_output_tokens=_low(lim.max_output_tokens for lim in limits),
        max_requests_per_minute=_low(lim.max_requests_per_minute for lim in limits),
        max_tokens_per_minute=_low(lim.max_tokens_per_minute for lim in limits))


class CallerIndex:
    """The policy's ``customers`` by principal, built once per policy version."""

    def __init__(self, policy: ServingPolicy) -> None:
        self._own: dict[tuple[str, str], list[tuple[str, CustomerPolicy]]] = defaultdict(list)
        self._users: dict[tuple[str, str], dict[str, list[tuple[str, CustomerPolicy]]]] = \
            defaultdict(lambda: defaultdict(list))
        for name, limits in policy.customers.items():
            parsed = parse_customer_id(name)
            if parsed is None or limits == CustomerPolicy():
                continue  # the validator refused bad ids; an all-null entry limits nothing
            # A plain id is a team id or a key hash, never an end user.
            for kind in ("team", "key") if parsed.kind == "any" else (parsed.kind,):
                if parsed.end_user is None:
                    self._own[(kind, parsed.principal)].append((name, limits))
                else:
                    self._users[(kind, parsed.principal)][parsed.end_user].append(
                        (name, limits))

    def __bool__(self) -> bool:
        return bool(self._own or self._users)

    def matches(self, who: Identity) -> list[Match]:
        """Every entry naming this request; all of them hold (the tightest wins)."""
        out = []
        for kind, principal in who.principals:
            space = f"{kind}:{principal}"
            out += [Match(name, lim, space) for name, lim in self._own.get((kind, principal), ())]
            users = self._users.get((kind, principal))
            if not users:
                continue
            for name_of_user, exact in who.end_users:
                if exact:
                    out += [Match(name, lim, f"{space}/{name_of_user}")
                            for name, lim in users.get(name_of_user, ())]
                else:
                    # Not ASCII even after folding lookalikes: it might imitate any end
                    # user listed here, so it is held to the strictest of them all.
                    every = [e for entries in users.values() for e in entries]
                    out.append(Match(f"{space}/{SUSPECT} (an end-user id the policy cannot "
                                     f"name; held to the strictest of {space}'s end users)",
                                     _strictest(every), f"{space}/{SUSPECT}"))
        return out


def counters(found: list[Match]) -> list[Counter]:
    """One counter per thing counted, with the tightest limits naming it."""
    by_key: dict[str, list[Match]] = {}
    for m in found:
        if m.limits.max_requests_per_minute or m.limits.max_tokens_per_minute:
            by_key.setdefault(m.counter, []).append(m)
    return [Counter(key, ms[0].label,
                    _low(m.limits.max_requests_per_minute for m in ms),
                    _low(m.limits.max_tokens_per_minute for m in ms))
            for key, ms in by_key.items()]
