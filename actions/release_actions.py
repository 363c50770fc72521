"""The release guard's changes: a route's canary started or moved, promoted, rolled back.

They are catalog actions like the mitigations, so each is planned as a diff,
guarded, approved where the release policy says, applied, verified and written to
the audit timeline. Each names its release, and refuses to touch another
release's canary: two releases never share a route.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from actions.base import Action
from actions.policy import CanaryPolicy, ServingPolicy
from bot.base.errors import InputError
from bot.base.names import check_name


class _ReleaseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: str = Field(min_length=1)
    release: str = Field(min_length=1)

    @field_validator("route", "release")
    @classmethod
    def _plain(cls, v: str) -> str:
        return check_name(v)

    @property
    def routes(self) -> list[str]:
        return [self.route]


class SetCanaryParams(_ReleaseParams):
    prompt_version: str | None = None
    model: str | None = None
    weight: float = Field(gt=0, le=1)

    @field_validator("prompt_version", "model")
    @classmethod
    def _plain_change(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v)

    @model_validator(mode="after")
    def _something_changes(self) -> SetCanaryParams:
        if self.prompt_version is None and self.model is None:
            raise ValueError("a canary changes the prompt_version, the model, or both")
        return self


def _current(p: _ReleaseParams, current: ServingPolicy, action: str,
             *, required: bool) -> dict[str, Any] | None:
    canary = current.get(p.route, "canary")
    if canary is not None and canary.get("release") != p.release:
        raise InputError(f"{action}: route '{p.route}' already has a canary of "
                         f"{canary.get('release') or 'another release'}",
                         hint="one release per route: finish or roll back that one first")
    if required and canary is None:
        raise InputError(f"{action}: route '{p.route}' has no canary of {p.release}",
                         hint="`release status` shows where the release stands")
    return canary


class SetCanary(Action):
    name = "set_canary"
    title = "Set a release's canary"
    Params = SetCanaryParams

    def named_routes(self, params: Any) -> list[str]:
        out = list(params.routes)
        if params.model is not None:
            out.append(params.model)  # a model canary's model is a route of the target too
        return out

    def changes(self, p: SetCanaryParams, current: ServingPolicy):
        _current(p, current, self.name, required=False)
        canary = CanaryPolicy(prompt_version=p.prompt_version, model=p.model, weight=p.weight,
                              release=p.release).model_dump()
        what = " ".join(x for x in (p.prompt_version and f"prompt {p.prompt_version}",
                                    p.model and f"model {p.model}") if x)
        return ({p.route: {"canary": canary}},
                f"{p.release}: {what} on {p.weight:.0%} of {p.route}")


class PromoteCanary(Action):
    name = "promote_canary"
    title = "Promote a release's canary to all traffic"
    Params = _ReleaseParams

    def changes(self, p: _ReleaseParams, current: ServingPolicy):
        canary = _current(p, current, self.name, required=True)
        assert canary is not None
        fields: dict[str, Any] = {"canary": None}
        if canary.get("prompt_version"):
            fields["prompt_version"] = canary["prompt_version"]
        if canary.get("model"):
            fields["traffic"] = {canary["model"]: 1.0}
        return {p.route: fields}, f"{p.release}: promote the canary to all of {p.route}"


class RollbackCanary(Action):
    name = "rollback_canary"
    title = "Roll a release's canary back"
    Params = _ReleaseParams

    def changes(self, p: _ReleaseParams, current: ServingPolicy):
        _current(p, current, self.name, required=True)
        return ({p.route: {"canary": None}},
                f"{p.release}: roll back the canary, all of {p.route} on the baseline")


RELEASE_ACTIONS: tuple[Action, ...] = (SetCanary(), PromoteCanary(), RollbackCanary())
