"""The playbook schema: the single source for validation and the exported JSON Schema.

``playbooks/playbook.schema.json`` is generated from ``Playbook`` by
``llm-incident schema`` (a test fails when the file is stale), and every shipped
playbook points editors at it with a ``yaml-language-server`` comment.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from bot.base.durations import Duration, format_duration, parse_duration

__all__ = ["Duration", "format_duration", "parse_duration"]  # kept importable from here

INCIDENT_CLASSES = (
    "runaway_cost",
    "latency_spike",
    "malformed_output",
    "context_overflow",
    "safety_regression",
    "provider_errors",
    "bad_routing",
    "quality_degradation",
)
IncidentClass = Literal[
    "runaway_cost",
    "latency_spike",
    "malformed_output",
    "context_overflow",
    "safety_regression",
    "provider_errors",
    "bad_routing",
    "quality_degradation",
]
Severity = Literal["critical", "high", "warning", "info"]

class _Strict(BaseModel):
    # Unknown keys are errors: a typo such as `aproval` must not be silently ignored.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- match -------------------------------------------------------------------------


class Condition(_Strict):
    """One test on an alert. Exactly one of the forms below.

    ``{alertname: X}``, ``{label: k, equals: v}``, ``{label: k, regex: r}`` (full
    match), ``{label: k, in: [a, b]}``, ``{label: k, absent: true}``.
    """

    alertname: str | None = None
    label: str | None = None
    equals: str | None = None
    regex: str | None = None
    in_: list[str] | None = Field(default=None, alias="in")
    absent: bool | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Condition:
        tests = [n for n in ("equals", "regex", "in_", "absent") if getattr(self, n) is not None]
        if self.alertname is not None:
            if self.label is not None or tests:
                raise ValueError("alertname stands alone; use a separate condition for labels")
            return self
        if self.label is None:
            raise ValueError("a condition needs `alertname` or `label`")
        if len(tests) != 1:
            raise ValueError("a label condition needs exactly one of equals, regex, in, absent")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"bad regex {self.regex!r}: {exc}") from None
        return self

    def describe(self) -> str:
        if self.alertname is not None:
            return f"alertname = {self.alertname}"
        if self.equals is not None:
            return f"{self.label} = {self.equals}"
        if self.regex is not None:
            return f"{self.label} =~ /{self.regex}/"
        if self.in_ is not None:
            return f"{self.label} in [{', '.join(self.in_)}]"
        return f"{self.label} is absent"


class Match(_Strict):
    """The playbook applies when every ``all`` condition holds and, if ``any`` is
    given, at least one ``any`` condition holds."""

    any: list[Condition] = Field(default_factory=list)
    all: list[Condition] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> Match:
        if not self.any and not self.all:
            raise ValueError("match needs at least one condition in `any` or `all`")
        return self


# --- guards ------------------------------------------------------------------------


class MaxRuns(_Strict):
    count: int = Field(ge=1)
    window: Duration


class BlastRadius(_Strict):
    max_routes: int = Field(default=1, ge=1, description="most routes one run may change")
    keep_serving: bool = Field(
        default=True,
        description="refuse a change that leaves a route group with no enabled route "
        "and no enabled fallback",
    )


_EXPECT = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(-?\d+(\.\d+)?([eE]-?\d+)?)\s*$")


class Verify(_Strict):
    query: str = Field(min_length=1, description="PromQL instant query; a template")
    expect: str = Field(description="comparison every returned sample must pass, e.g. '< 0.05'")
    within: Duration = Field(description="how long the metric has to recover")
    on_fail: Literal["revert", "escalate"] = "revert"

    @field_validator("expect")
    @classmethod
    def _expect_form(cls, v: str) -> str:
        if not _EXPECT.match(v):
            raise ValueError(f"expect must look like '< 0.05' or '>= 1', got {v!r}")
        return v

    def expectation(self) -> tuple[str, float]:
        m = _EXPECT.match(self.expect)
        assert m  # validated above
        return m.group(1), float(m.group(2))


class AllowGroup(_Strict):
    """Any route whose serving-policy ``group`` is this one (read at plan time)."""

    group: str = Field(min_length=1)


# What an argument may be when it comes from alert content: listed names, or a group.
Allowed = list[Annotated[str, Field(min_length=1)]] | AllowGroup

# Arguments that name where a change lands or where traffic goes. Alert text may
# fill them, but an automatic step must say which values it accepts (``allow``).
TARGET_ARGS = ("route", "to", "customer")


class Guard(_Strict):
    approval: Literal["none", "oncall", "two_person"] = "oncall"
    self_approval: bool = Field(
        default=True,
        description="oncall approval: may the requester approve alone? false needs a second "
        "person (LLM_INCIDENT_SELF_APPROVAL=false forbids it everywhere)",
    )
    allow: dict[str, Allowed] = Field(
        default_factory=dict,
        description="allowed values per argument (e.g. to: [chat-small]); required for an "
        "automatic step's arguments that name a route and come from the alert",
    )
    auto: bool = Field(default=False, description="may run without a human once guards pass")
    dry_run: bool = Field(default=False, description="plan and record only, never apply")
    cooldown: Duration | None = None
    max_runs: MaxRuns | None = None
    ttl: Duration | None = Field(default=None, description="revert automatically after this")
    blast_radius: BlastRadius = Field(default_factory=BlastRadius)
    verify: Verify | None = None

    @model_validator(mode="after")
    def _auto_needs_no_human(self) -> Guard:
        if self.auto and self.approval != "none":
            raise ValueError("auto: true needs approval: none (an approval needs a human)")
        return self


# --- playbook ----------------------------------------------------------------------


class When(_Strict):
    """When a step is for this alert at all (e.g. a per-customer cap needs a customer)."""

    label: str = Field(min_length=1, description="the alert carries this label, not empty")


class Step(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    title: str
    action: str = Field(description="an action from the catalog, e.g. cap_output_length")
    when: When | None = Field(default=None, description="offer the step only for alerts "
                              "that have this label; the first step that applies is the "
                              "suggested one")
    with_: dict[str, Any] = Field(
        default_factory=dict, alias="with", description="action arguments; strings are templates"
    )
    target: str = Field(default="default", description="which configured serving target")
    guard: Guard = Field(default_factory=Guard)


class NumberParam(_Strict):
    """A number the alert may give, within the range the playbook allows.

    ``hourly_budget_usd: {value: "{{ annotations.hourly_budget_usd | default(20) }}",
    min: 0.01, max: 1000}``. The alert is untrusted text: a value outside
    ``[min, max]`` (``1e300``, ``-1``, ``nan``) refuses the plan naming the param,
    the value and the range, so an annotation can never scale a verification until
    it passes. ``lint`` refuses an alert-derived number in a query without one.
    """

    value: str | int | float = Field(description="a template (or a constant) giving the number")
    min: float = Field(description="the smallest value the playbook accepts")
    max: float = Field(description="the largest value the playbook accepts")

    @model_validator(mode="after")
    def _range(self) -> NumberParam:
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError("min and max must be finite numbers")
        if self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        if isinstance(self.value, int | float) and not isinstance(self.value, bool) and \
                not self.min <= self.value <= self.max:
            raise ValueError(f"value {self.value:g} is outside {self.describe_range()}")
        return self

    def describe_range(self) -> str:
        return f"the range {self.min:g}..{self.max:g}"


def _one_param(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # One clear problem per bad param, instead of one per member of the union.
    if isinstance(value, dict):
        try:
            return NumberParam.model_validate(value)
        except ValidationError as exc:
            what = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'range'}: {_said(e)}"
                             for e in exc.errors())
            raise ValueError(f"a param given as a mapping is a number with a range "
                             f"{{value, min, max}}: {what}") from None
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(f"a param is a template or a constant (text, number, true/false, "
                         f"list), or {{value, min, max}}; got {type(value).__name__}") from None


def _said(error: Any) -> str:
    kinds = {"missing": "missing", "extra_forbidden": "unknown key"}
    return kinds.get(error["type"]) or str(error["msg"]).removeprefix("Value error, ")


# A param is a template (or a constant), or a number with its range.
Param = Annotated[NumberParam | str | int | float | bool | list[Any] | None,
                  WrapValidator(_one_param)]


class DiagnoseQuery(_Strict):
    title: str
    query: str = Field(description="PromQL shown to humans; a template")


class Playbook(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    title: str
    class_: IncidentClass = Field(alias="class")
    severity: Severity
    summary: str = ""
    match: Match
    params: dict[str, Param] = Field(
        default_factory=dict, description="named values rendered from the alert; templates, "
        "or {value, min, max} for a number the alert may set within a range"
    )
    diagnose: list[DiagnoseQuery] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)

    @field_validator("steps")
    @classmethod
    def _unique_step_ids(cls, steps: list[Step]) -> list[Step]:
        seen: set[str] = set()
        for s in steps:
            if s.id in seen:
                raise ValueError(f"duplicate step id '{s.id}'")
            seen.add(s.id)
        return steps

    def step(self, step_id: str) -> Step | None:
        return next((s for s in self.steps if s.id == step_id), None)

    def first_step_for(self, labels: dict[str, str]) -> Step:
        """The step to suggest first: the first one whose ``when`` this alert meets."""
        return next((s for s in self.steps if not_for(s, labels) is None), self.steps[0])


def not_for(step: Step, labels: dict[str, str]) -> str | None:
    """Why ``step`` is not for an alert with ``labels`` (None: it is)."""
    if step.when is not None and not labels.get(step.when.label):
        return f"the alert has no {step.when.label} label"
    return None


def json_schema() -> dict[str, Any]:
    schema = Playbook.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llm-incident playbook"
    return schema
