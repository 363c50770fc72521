"""The action lifecycle (DESIGN.md "Action lifecycle") and the driver interface.

An action is pure planning: ``plan(params, current)`` looks at the serving
policy and returns a ``Plan`` of field changes, with no side effects. Apply,
verify and revert are the same for every action, because a plan is a list of
absolute values: writing ``after`` twice is the same as once (idempotent), and
revert writes ``before`` back only where nobody changed the field since.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actions.policy import CUSTOMER_FIELDS, ROUTE_FIELDS, ServingPolicy, UnknownRoute, split_subject
from bot.base.errors import InputError


class FieldChange(BaseModel):
    model_config = ConfigDict(frozen=True)

    route: str  # the subject: a route, or "customer/ID" (actions.policy.split_subject)
    field: str
    before: Any = None
    after: Any = None

    @property
    def path(self) -> str:
        """Where the field is in the policy file: ``routes.chat.enabled``,
        ``customers.acme.blocked``."""
        section, key = split_subject(self.route)
        return f"{section}.{key}.{self.field}"


class Plan(BaseModel):
    """Everything needed to apply, verify and revert one change, persisted before apply."""

    action: str
    target: str
    params: dict[str, Any]
    changes: list[FieldChange] = Field(default_factory=list)
    summary: str = ""
    # The routes the step names (its subject), changed or not: guards (cooldown,
    # max_runs, locks) judge these, so a plan that changes nothing still counts them.
    named: list[str] = Field(default_factory=list)

    @property
    def routes(self) -> list[str]:
        return sorted(set(self.named) | {c.route for c in self.changes})

    @property
    def noop(self) -> bool:
        return not self.changes

    def updates(self, side: Literal["before", "after"]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for c in self.changes:
            out.setdefault(c.route, {})[c.field] = getattr(c, side)
        return out

    def diff(self) -> str:
        """A readable before/after diff, one ``-``/``+`` pair per changed field."""
        if self.noop:
            return "  (no change: the target already has these values)"
        order = {f: i for i, f in enumerate((*ROUTE_FIELDS, *CUSTOMER_FIELDS))}
        lines = [f"# {self.target}: {self.summary}" if self.summary else f"# {self.target}"]
        for c in sorted(self.changes, key=lambda c: (c.route, order.get(c.field, 99))):
            lines.append(f"- {c.path}: {_show(c.before)}")
            lines.append(f"+ {c.path}: {_show(c.after)}")
        return "\n".join(lines)


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@runtime_checkable
class ServingDriver(Protocol):
    """The one narrow interface to a serving stack (policy file, HTTP API, LiteLLM...).

    ``write`` sets absolute values (idempotent); ``action`` names the catalog
    action the values come from, for drivers that map actions to API calls. A driver that changes routes one
    at a time and fails part-way raises ``PartialApplyError`` naming the routes
    it already changed, so the runner can put them back.
    """

    name: str

    async def read(self) -> ServingPolicy: ...

    async def write(
        self, updates: dict[str, dict[str, Any]], *, reason: str, action: str
    ) -> None: ...


@runtime_checkable
class KeepsVersions(Protocol):
    """A target that keeps its exact content from before each change (a file's bytes,
    comments and layout included), so a revert can put back exactly what was there.

    ``change_id`` is the run id. ``restore_version`` puts the "before" bytes back
    only when the target is still exactly as that change left it, and says so;
    otherwise it changes nothing and the caller reverts values instead.
    """

    async def write_versioned(self, updates: dict[str, dict[str, Any]], *, reason: str,
                              action: str, change_id: str) -> None: ...

    async def restore_version(self, change_id: str, *, reason: str) -> bool: ...

    async def forget_version(self, change_id: str) -> None: ...


@runtime_checkable
class Fenceable(Protocol):
    """A target that keeps the highest fencing token it has seen (``actions/fencing.py``)
    and can raise it without changing anything else."""

    async def raise_fence(self) -> None: ...


class Sample(BaseModel):
    """One element of a PromQL instant-query result."""

    labels: dict[str, str] = Field(default_factory=dict)
    value: float


@runtime_checkable
class MetricsSource(Protocol):
    """Where verification queries go (Prometheus in production, a fake in tests)."""

    async def query(self, promql: str) -> list[Sample]: ...


class Action(ABC):
    """One mitigation from the catalog. Subclasses define ``Params`` and ``changes``."""

    name: ClassVar[str]
    title: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    # The argument `do ACTION SUBJECT` fills with its second word.
    subject_arg: ClassVar[str] = "route"
    # The approval a step of this action gets when its playbook (or `do`) names none.
    default_approval: ClassVar[Literal["none", "oncall", "two_person"]] = "oncall"

    def parse_params(self, raw: dict[str, Any]) -> BaseModel:
        try:
            return self.Params.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "<params>"
            raise InputError(
                f"action '{self.name}': {where}: {err['msg']}",
                hint=f"parameters of {self.name}: {', '.join(self.Params.model_fields)}",
            ) from None

    @abstractmethod
    def changes(self, params: Any, current: ServingPolicy) -> tuple[dict[str, dict[str, Any]], str]:
        """Return ``({route: {field: new_value}}, summary)``; raise InputError if unsafe."""

    def named_routes(self, params: Any) -> list[str]:
        """Every route the params name (changed or pointed at); each must exist."""
        return list(params.routes)

    def plan(self, raw_params: dict[str, Any], current: ServingPolicy, *, target: str) -> Plan:
        params = self.parse_params(raw_params)
        # Params may come from alert text: a route the target does not serve is an
        # error naming it, never a default-enabled route (nor a new policy entry).
        for route in self.named_routes(params):
            if not current.serves(route):
                known = sorted(current.routes)
                shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
                raise InputError(
                    f"{self.name}: route '{route}' is not served by target '{target}'",
                    hint=f"routes on {target}: {shown or 'none'}; check the alert's labels "
                    "and the playbook's params",
                )
        wanted, summary = self.changes(params, current)
        # Validate the resulting policy as a whole (e.g. traffic weights sum to 1).
        try:
            current.with_values(wanted)
        except UnknownRoute as exc:
            raise InputError(f"action '{self.name}': {exc}") from None
        except ValidationError as exc:
            raise InputError(f"action '{self.name}' would write an invalid policy: {exc}") from None
        changes = [
            FieldChange(route=route, field=f, before=current.get(route, f), after=value)
            for route, fields in wanted.items()
            for f, value in fields.items()
            if current.get(route, f) != value
        ]
        return Plan(
            action=self.name,
            target=target,
            params=params.model_dump(mode="json"),
            changes=changes,
            summary=summary,
            named=sorted(params.routes),  # type: ignore[attr-defined]  # every Params has routes
        )

    async def apply(self, plan: Plan, driver: ServingDriver, *, reason: str,
                    change_id: str | None = None) -> None:
        if plan.noop:
            return
        if change_id and isinstance(driver, KeepsVersions):
            await driver.write_versioned(plan.updates("after"), reason=reason, action=self.name,
                                         change_id=change_id)
        else:
            await driver.write(plan.updates("after"), reason=reason, action=self.name)

    async def verify(self, plan: Plan, driver: ServingDriver) -> list[str]:
        """Read back; return the fields that do not hold the planned value (empty = ok)."""
        now = await driver.read()
        return [
            f"{c.path} is {_show(now.get(c.route, c.field))}, "
            f"expected {_show(c.after)}"
            for c in plan.changes
            if now.get(c.route, c.field) != c.after
        ]

    async def revert(self, plan: Plan, driver: ServingDriver, *, reason: str,
                     change_id: str | None = None) -> list[str]:
        """Put back what was there before ``plan``.

        A target that kept its version from before this change, and has not changed
        since, gets those exact bytes back. Otherwise ``before`` goes back where a
        field still holds our ``after``, and the fields someone changed since are
        left alone and returned, so the runner records them for a human to decide.
        """
        versions = driver if change_id and isinstance(driver, KeepsVersions) else None
        if versions is not None and change_id and await versions.restore_version(
                change_id, reason=reason):
            return []
        drifted = await self._revert_values(plan, driver, reason=reason)
        if versions is not None and change_id:
            await versions.forget_version(change_id)
        return drifted

    async def _revert_values(self, plan: Plan, driver: ServingDriver, *,
                             reason: str) -> list[str]:
        now = await driver.read()
        restore: dict[str, dict[str, Any]] = {}
        drifted: list[str] = []
        for c in plan.changes:
            value = now.get(c.route, c.field)
            if value == c.after:
                restore.setdefault(c.route, {})[c.field] = c.before
            elif value != c.before:
                drifted.append(
                    f"{c.path} changed since apply "
                    f"(now {_show(value)}); left as is"
                )
        if restore:
            await driver.write(restore, reason=reason, action=self.name)
        return drifted
