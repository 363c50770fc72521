"""Per-customer mitigations: limit one caller instead of every caller of a route.

One customer's runaway loop should not cap everyone. These actions write the serving
policy's ``customers`` section (DESIGN.md), which the sandbox gateway and the LiteLLM
pre-call hook enforce per caller identity. Like the route actions they only tighten:
a plan that would loosen a customer's limit is refused (the revert loosens it).

In plans a customer is the subject ``customer/ID``, so cooldowns, run limits, locks
and the blast-radius guard count customers the way they count routes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from actions.base import Action
from actions.caller_ids import CALLER_ID_HELP, is_customer_id
from actions.policy import ServingPolicy, customer_subject
from bot.base.errors import InputError


class _CustomerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # One caller or several: a team id or key hash, team:ID, key:HASH, user:ID, or an end
    # user of one of those as P/END_USER (actions/caller_ids.py; the README's LiteLLM section).
    customer: str | list[str]

    @field_validator("customer")
    @classmethod
    def _ids(cls, v: str | list[str]) -> str | list[str]:
        names = [v] if isinstance(v, str) else v
        if not names:
            raise ValueError("customer must name at least one customer")
        for n in names:
            if not is_customer_id(n):
                raise ValueError(f"customer {n[:60]!r} is not a caller id ({CALLER_ID_HELP})")
        return v

    @property
    def customers(self) -> list[str]:
        return [self.customer] if isinstance(self.customer, str) else list(self.customer)

    @property
    def routes(self) -> list[str]:
        """The subjects the guards judge: ``customer/ID`` each."""
        return [customer_subject(c) for c in self.customers]


class CapCustomerParams(_CustomerParams):
    max_output_tokens: int = Field(gt=0)


class ThrottleCustomerParams(_CustomerParams):
    max_requests_per_minute: int | None = Field(default=None, gt=0)
    max_tokens_per_minute: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _some_limit(self) -> ThrottleCustomerParams:
        if self.max_requests_per_minute is None and self.max_tokens_per_minute is None:
            raise ValueError("give max_requests_per_minute, max_tokens_per_minute, or both")
        return self


class BlockCustomerParams(_CustomerParams):
    pass


def _tighten(action: str, customer: str, field: str, now: int | None, new: int) -> None:
    if now is not None and now < new:
        raise InputError(
            f"{action}: customer '{customer}' already has {field} {now}; {new} would raise it",
            hint="a mitigation only tightens; revert the earlier limit to loosen it",
        )


class CapCustomer(Action):
    name = "cap_customer"
    title = "Cap one customer's output length"
    Params = CapCustomerParams
    subject_arg: ClassVar[str] = "customer"

    def changes(self, p: CapCustomerParams, current: ServingPolicy):
        for c in p.customers:
            _tighten(self.name, c, "max_output_tokens", current.customer(c).max_output_tokens,
                     p.max_output_tokens)
        return ({customer_subject(c): {"max_output_tokens": p.max_output_tokens}
                 for c in p.customers},
                f"cap output at {p.max_output_tokens} tokens for {', '.join(p.customers)}")


class ThrottleCustomer(Action):
    name = "throttle_customer"
    title = "Throttle one customer (requests or tokens per minute)"
    Params = ThrottleCustomerParams
    subject_arg: ClassVar[str] = "customer"

    def changes(self, p: ThrottleCustomerParams, current: ServingPolicy):
        wanted: dict[str, Any] = {}
        if p.max_requests_per_minute is not None:
            wanted["max_requests_per_minute"] = p.max_requests_per_minute
        if p.max_tokens_per_minute is not None:
            wanted["max_tokens_per_minute"] = p.max_tokens_per_minute
        for c in p.customers:
            for field, value in wanted.items():
                _tighten(self.name, c, field, getattr(current.customer(c), field), value)
        limits = ", ".join(f"{v} {k.removeprefix('max_').replace('_per_minute', '')}/min"
                           for k, v in wanted.items())
        return ({customer_subject(c): dict(wanted) for c in p.customers},
                f"throttle {', '.join(p.customers)} to {limits}")


class BlockCustomer(Action):
    name = "block_customer"
    title = "Block one customer"
    Params = BlockCustomerParams
    subject_arg: ClassVar[str] = "customer"
    # Turning a paying caller away is the heaviest per-customer step: two people.
    default_approval: ClassVar[Literal["none", "oncall", "two_person"]] = "two_person"

    def changes(self, p: BlockCustomerParams, current: ServingPolicy):
        return ({customer_subject(c): {"blocked": True} for c in p.customers},
                f"block {', '.join(p.customers)} (callers get 403)")


CUSTOMER_ACTIONS: tuple[Action, ...] = (CapCustomer(), ThrottleCustomer(), BlockCustomer())
