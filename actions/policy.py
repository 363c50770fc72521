"""The serving policy: the common language between the bot and a gateway.

Drivers write it; the sandbox gateway and the LiteLLM pre-call hook read it on
every request. The file format is fixed by DESIGN.md ("Serving policy file").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Caller ids (the ``customers`` keys): their grammar and how they are compared.
from actions.caller_ids import CALLER_ID_HELP, CallerId, parse_customer_id
from actions.caller_ids import CUSTOMER_ID as CUSTOMER_ID  # re-exported for callers

# The route settings an action may change, in the order diffs show them.
ROUTE_FIELDS: tuple[str, ...] = (
    "enabled",
    "max_output_tokens",
    "max_concurrency",
    "fallback",
    "prompt_version",
    "traffic",
    "canary",
)


# The per-caller limits an action may change (the policy's ``customers`` section).
CUSTOMER_FIELDS: tuple[str, ...] = (
    "blocked",
    "max_output_tokens",
    "max_requests_per_minute",
    "max_tokens_per_minute",
)
# In plans, guards and driver updates a customer is the subject "customer/ID", beside
# route names, so cooldowns, run limits, locks and blast radius count customers the
# way they count routes. No route may start with it (ServingPolicy refuses one).
CUSTOMER_PREFIX = "customer/"


def customer_subject(customer: str) -> str:
    return CUSTOMER_PREFIX + customer


def split_subject(subject: str) -> tuple[Literal["routes", "customers"], str]:
    """``"chat"`` -> ("routes", "chat"); ``"customer/acme"`` -> ("customers", "acme")."""
    if subject.startswith(CUSTOMER_PREFIX):
        return "customers", subject[len(CUSTOMER_PREFIX):]
    return "routes", subject


class CustomerPolicy(BaseModel):
    """Limits for one caller, on top of the route's (DESIGN.md "Serving policy file").

    A caller the section does not list has no limits of its own; neither does an
    entry whose values are all null/false (what a revert leaves behind)."""

    model_config = ConfigDict(extra="forbid")

    blocked: bool = False
    max_output_tokens: int | None = Field(default=None, gt=0)
    max_requests_per_minute: int | None = Field(default=None, gt=0)
    max_tokens_per_minute: int | None = Field(default=None, gt=0)


class CanaryPolicy(BaseModel):
    """A release in progress on a route: this share of its requests is served with the
    new prompt version and/or model, the rest as before, so both are measured on the
    same live traffic (every metric carries the version a request was served with)."""

    model_config = ConfigDict(extra="forbid")

    prompt_version: str | None = None
    model: str | None = None
    weight: float = Field(ge=0, le=1)
    release: str | None = None

    @model_validator(mode="after")
    def _something_changes(self) -> CanaryPolicy:
        if self.model is None and self.prompt_version is None:
            raise ValueError("a canary changes the prompt_version, the model, or both")
        return self


class RoutePolicy(BaseModel):
    """What a gateway must enforce for one route (a LiteLLM ``model_name``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_output_tokens: int | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, gt=0)
    fallback: str | None = None
    prompt_version: str | None = None
    # Weights per model behind the route; empty means "the route's own default".
    traffic: dict[str, float] = Field(default_factory=dict)
    # Routes sharing a group serve the same callers; the blast-radius guard never
    # leaves a group without an enabled route (or an enabled fallback).
    group: str | None = None
    # A release's canary (the release guard); None = every request as above.
    canary: CanaryPolicy | None = None

    @field_validator("traffic")
    @classmethod
    def _weights_sum_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            return v
        if any(w < 0 for w in v.values()):
            raise ValueError("traffic weights must be >= 0")
        total = sum(v.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"traffic weights must sum to 1.0, got {total:g}")
        return v


class ChangeMark(BaseModel):
    """The last change the bot wrote, with its fencing token (``actions/fencing.py``):
    a write carrying a lower token is refused, so a deposed leader cannot act."""

    model_config = ConfigDict(extra="forbid")

    run: str
    token: int = Field(ge=0)
    op: Literal["apply", "revert", "fence"]


class ServingPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    routes: dict[str, RoutePolicy] = Field(default_factory=dict)
    customers: dict[str, CustomerPolicy] = Field(default_factory=dict)
    updated_at: datetime | None = None
    updated_by: str | None = None
    change: ChangeMark | None = None

    @field_validator("routes")
    @classmethod
    def _route_names(cls, v: dict[str, RoutePolicy]) -> dict[str, RoutePolicy]:
        for name in v:
            if name.startswith(CUSTOMER_PREFIX):
                raise ValueError(f"route {name!r}: a route name cannot start with "
                                 f"{CUSTOMER_PREFIX!r} (that names a customer)")
        return v

    @field_validator("customers")
    @classmethod
    def _customer_ids(cls, v: dict[str, CustomerPolicy]) -> dict[str, CustomerPolicy]:
        seen: dict[CallerId, str] = {}
        for name in v:
            parsed = parse_customer_id(name)
            if parsed is None:
                raise ValueError(f"customer {name[:60]!r}: {CALLER_ID_HELP}")
            if parsed in seen:
                # Ids compare without case: two entries would be two limits for one caller.
                raise ValueError(f"customers {seen[parsed]!r} and {name!r} name the same caller "
                                 "(ids are compared without case); keep one")
            seen[parsed] = name
        return v

    def customer(self, name: str) -> CustomerPolicy:
        """The caller's limits; one the section does not list has none."""
        return self.customers.get(name, CustomerPolicy())

    def route(self, name: str) -> RoutePolicy:
        """The route's policy; a route the file does not list has the defaults.

        Only for reading what a gateway enforces. Deciding whether a route *exists*
        (before planning a change on it) is ``serves``: an unknown route is never
        taken as an enabled one.
        """
        return self.routes.get(name, RoutePolicy())

    def serves(self, name: str) -> bool:
        """Whether a change may name this subject: a listed route, or any well-formed
        customer (a caller need not be listed before its first limit)."""
        section, key = split_subject(name)
        if section == "customers":
            return parse_customer_id(key) is not None
        return name in self.routes

    def get(self, subject: str, field: str) -> Any:
        """A field's value as plain data (a canary is its mapping), as plans store it.
        ``subject`` is a route, or ``customer/ID``."""
        section, key = split_subject(subject)
        owner = self.customer(key) if section == "customers" else self.route(key)
        value = getattr(owner, field)
        return value.model_dump() if isinstance(value, BaseModel) else value

    def with_values(
        self, updates: dict[str, dict[str, Any]], *, create: bool = False
    ) -> ServingPolicy:
        """A copy with ``{route: {field: value}}`` set, validated as a whole.

        Only routes the policy already lists can be changed: a mitigation never adds
        an entry (a revert could not take it away again), so an unknown route raises
        ``UnknownRoute`` naming it. ``create`` is for a companion file whose routes
        live elsewhere (the LiteLLM driver's policy file: the route is in the proxy's
        config, the file only carries what the hook enforces).
        """
        data = self.model_dump(mode="json")
        for subject, fields in updates.items():
            section, key = split_subject(subject)
            if section == "customers":
                # A caller's entry is created by its first limit: no entry means no limits,
                # and the revert's all-null entry means the same.
                data["customers"].setdefault(key, {}).update(fields)
                continue
            if key not in data["routes"] and not create:
                raise UnknownRoute(key, sorted(self.routes))
            data["routes"].setdefault(key, {}).update(fields)
        return ServingPolicy.model_validate(data)


class UnknownRoute(ValueError):
    """A change names a route the policy does not list."""

    def __init__(self, route: str, known: list[str]) -> None:
        self.route, self.known = route, known
        shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "") or "none"
        super().__init__(f"route {route!r} is not served by this target (routes: {shown})")
