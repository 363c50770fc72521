"""The action catalog: the first mitigations the course recommends.

Each action only *plans*: it reads the current policy and returns the values to
set. Every action refuses a plan that would make things riskier than they are
(raising a cap, raising concurrency, falling back to a disabled route), because
a mitigation that misfires during an incident is worse than none.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from actions.base import Action
from actions.customer_actions import CUSTOMER_ACTIONS
from actions.policy import ServingPolicy
from actions.release_actions import RELEASE_ACTIONS
from bot.base.errors import InputError
from bot.base.names import check_name


class _RouteParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # One route or several; a multi-route change is planned (and reverted) as one.
    route: str | list[str]

    @field_validator("route")
    @classmethod
    def _not_empty(cls, v: str | list[str]) -> str | list[str]:
        names = [v] if isinstance(v, str) else v
        if not names or any(not n.strip() for n in names):
            raise ValueError("route must name at least one route")
        for n in names:
            check_name(n)  # rendered from alert text: no newline reaches the policy file
        return v

    @property
    def routes(self) -> list[str]:
        return [self.route] if isinstance(self.route, str) else list(self.route)


class CapOutputParams(_RouteParams):
    max_output_tokens: int = Field(gt=0)


class LowerConcurrencyParams(_RouteParams):
    max_concurrency: int | None = Field(default=None, gt=0)
    factor: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_of(self) -> LowerConcurrencyParams:
        if (self.max_concurrency is None) == (self.factor is None):
            raise ValueError("give exactly one of max_concurrency or factor")
        return self


class RouteOnlyParams(_RouteParams):
    pass


class FallbackParams(_RouteParams):
    to: str = Field(min_length=1)

    @field_validator("to")
    @classmethod
    def _plain_to(cls, v: str) -> str:
        return check_name(v)


class RollbackPromptParams(_RouteParams):
    # Often rendered from an alert's last_good_prompt_version annotation: it goes into
    # the policy file and the gateway's upstream header as it is.
    prompt_version: str = Field(min_length=1)

    @field_validator("prompt_version")
    @classmethod
    def _plain_version(cls, v: str) -> str:
        return check_name(v)


class ShiftTrafficParams(_RouteParams):
    weights: dict[str, float]

    @field_validator("weights")
    @classmethod
    def _plain_models(cls, v: dict[str, float]) -> dict[str, float]:
        for model in v:
            check_name(model)
        return v


class CapOutputLength(Action):
    name = "cap_output_length"
    title = "Cap output length"
    Params = CapOutputParams

    def changes(self, p: CapOutputParams, current: ServingPolicy):
        for r in p.routes:
            now = current.get(r, "max_output_tokens")
            if now is not None and now < p.max_output_tokens:
                raise InputError(
                    f"cap_output_length: route '{r}' is already capped at {now} tokens; "
                    f"{p.max_output_tokens} would raise the cap",
                    hint="a mitigation only tightens; revert the earlier cap to loosen it",
                )
        return (
            {r: {"max_output_tokens": p.max_output_tokens} for r in p.routes},
            f"cap output at {p.max_output_tokens} tokens on {', '.join(p.routes)}",
        )


class LowerConcurrency(Action):
    name = "lower_concurrency"
    title = "Lower concurrency"
    Params = LowerConcurrencyParams

    def changes(self, p: LowerConcurrencyParams, current: ServingPolicy):
        out: dict[str, dict[str, Any]] = {}
        for r in p.routes:
            now = current.get(r, "max_concurrency")
            if p.factor is not None:
                if now is None:
                    raise InputError(
                        f"lower_concurrency: route '{r}' has no concurrency limit to scale",
                        hint="give max_concurrency instead of factor",
                    )
                new = max(1, int(now * p.factor))
            else:
                assert p.max_concurrency is not None  # the params model requires one of them
                new = p.max_concurrency
            if now is not None and new > now:
                raise InputError(
                    f"lower_concurrency: route '{r}' allows {now}; {new} would raise it",
                    hint="revert the earlier change to raise concurrency again",
                )
            out[r] = {"max_concurrency": new}
        limits = ", ".join(f"{r}={v['max_concurrency']}" for r, v in out.items())
        return out, f"lower concurrency to {limits}"


class DisableRoute(Action):
    name = "disable_route"
    title = "Disable route"
    Params = RouteOnlyParams

    def changes(self, p: RouteOnlyParams, current: ServingPolicy):
        return {r: {"enabled": False} for r in p.routes}, f"disable {', '.join(p.routes)}"


class EnableRoute(Action):
    name = "enable_route"
    title = "Enable route"
    Params = RouteOnlyParams

    def changes(self, p: RouteOnlyParams, current: ServingPolicy):
        return {r: {"enabled": True} for r in p.routes}, f"enable {', '.join(p.routes)}"


class Fallback(Action):
    name = "fallback"
    title = "Fall back to another model"
    Params = FallbackParams

    def named_routes(self, params: FallbackParams) -> list[str]:
        return [*params.routes, params.to]

    def changes(self, p: FallbackParams, current: ServingPolicy):
        if p.to in p.routes:
            raise InputError(f"fallback: route '{p.to}' cannot fall back to itself")
        if not current.route(p.to).enabled:
            raise InputError(
                f"fallback: target route '{p.to}' is disabled",
                hint="enable it first or pick another fallback",
            )
        return (
            {r: {"fallback": p.to} for r in p.routes},
            f"send {', '.join(p.routes)} to fallback {p.to}",
        )


class RollbackPrompt(Action):
    name = "rollback_prompt"
    title = "Roll back prompt"
    Params = RollbackPromptParams

    def changes(self, p: RollbackPromptParams, current: ServingPolicy):
        return (
            {r: {"prompt_version": p.prompt_version} for r in p.routes},
            f"pin prompt {p.prompt_version} on {', '.join(p.routes)}",
        )


class ShiftTraffic(Action):
    name = "shift_traffic"
    title = "Shift traffic"
    Params = ShiftTrafficParams

    def changes(self, p: ShiftTrafficParams, current: ServingPolicy):
        shares = ", ".join(f"{m} {w:.0%}" for m, w in sorted(p.weights.items()))
        return {r: {"traffic": dict(p.weights)} for r in p.routes}, f"shift traffic to {shares}"


CATALOG: dict[str, Action] = {
    a.name: a
    for a in (
        CapOutputLength(),
        LowerConcurrency(),
        DisableRoute(),
        EnableRoute(),
        Fallback(),
        RollbackPrompt(),
        ShiftTraffic(),
        *CUSTOMER_ACTIONS,
        *RELEASE_ACTIONS,
    )
}


def get_action(name: str) -> Action:
    try:
        return CATALOG[name]
    except KeyError:
        raise InputError(
            f"unknown action '{name}'", hint=f"known actions: {', '.join(sorted(CATALOG))}"
        ) from None
